"""Per-channel batch statistics of the layers that normalise with them: over this process's batch, or under
`--sync-bn` over the global batch of every process, as PyTorch's SyncBatchNorm does for BatchNorm.

A layer with `sync_batch_statistics` set takes them over every process of the default group while that group runs
with more than one process (else over its own batch, as SyncBatchNorm falls back). They are two all-reduces that
autograd differentiates: the sums (in float64), then the squared deviations from the global mean (two passes, so
no cancellation of E[x^2] - E[x]^2). Each process's gradient with respect to its inputs is then that of the summed
loss of every process, as in one process holding the whole batch; DDP averages the parameters' gradients as usual.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


class _SumOverProcesses(torch.autograd.Function):
    """all_reduce(SUM) with its gradient: the sum over processes of every process's gradient of the result."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def processes_to_sync(sync: bool) -> bool:
    """Whether statistics are taken over other processes: asked for, and a group of more than one is running."""
    return sync and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def batch_var_mean(x: torch.Tensor, sync: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """(biased variance, mean, count) per channel of (N, C[, H, W]) `x`, over this process's batch or, with `sync`
    (and a running group), over every process's. Every process must then call it at the same point of its forward
    pass. The count is a tensor when synchronised (no wait for the device)."""
    dims = (0, 2, 3) if x.dim() == 4 else (0,)
    if not processes_to_sync(sync):
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return var, mean, float(x.numel() // x.shape[1])
    local = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
    sums = _SumOverProcesses.apply(torch.cat([x.sum(dim=dims).double(), local]))
    count = sums[-1]
    mean = (sums[:-1] / count).to(x.dtype)
    shape = (1, -1) + (1,) * (x.dim() - 2)
    squares = _SumOverProcesses.apply((x - mean.view(shape)).square().sum(dim=dims).double())
    return (squares / count).to(x.dtype), mean, count
