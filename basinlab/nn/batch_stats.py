"""Per-channel batch statistics of the layers that normalise with them: over this process's batch, or under
`--sync-bn` over the global batch of every process, as PyTorch's SyncBatchNorm does for BatchNorm.

The synchronised statistics are two all-reduces that autograd differentiates (torch.distributed.nn): the sums, then
the squared deviations from the global mean (two passes, so no cancellation of E[x^2] - E[x]^2). Each process's
gradient with respect to its inputs is then that of the summed loss of every process, as in a single process
holding the whole batch; DDP averages the parameters' gradients as usual.
"""
from __future__ import annotations

import torch


def channel_dims(x: torch.Tensor) -> tuple[int, ...]:
    return (0, 2, 3) if x.dim() == 4 else (0,)


def batch_var_mean(x: torch.Tensor, group=None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(biased variance, mean, count) per channel of (N, C[, H, W]) `x`, over the batch of every process in `group`
    (None: this process only). Every process of the group must call it at the same point of its forward pass."""
    dims = channel_dims(x)
    if group is None:
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        return var, mean, float(x.numel() // x.shape[1])
    from torch.distributed.nn.functional import all_reduce
    local = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
    sums = all_reduce(torch.cat([x.sum(dim=dims), local]), group=group)
    count = sums[-1]
    mean = sums[:-1] / count
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var = all_reduce((x - mean.view(shape)).square().sum(dim=dims), group=group) / count
    return var, mean, float(count)
