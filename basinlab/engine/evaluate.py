"""Loss and top-1/top-5 accuracy of a model on a loader; exact under data-parallel sharding."""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[torch.Tensor]:
    """Number of samples whose target is among the k largest logits, for each k (as 0-d tensors)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [hits[:, :min(k, maxk)].any(dim=1).sum() for k in ks]


class Meter:
    """Sums of loss, correct counts and examples, kept on the device (no sync per step)."""

    def __init__(self, device="cpu"):
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss*n, correct1, correct5, n

    def update(self, loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        n = target.shape[0]
        c1, c5 = topk_correct(logits, target)
        self.sums += torch.stack([loss.detach().double() * n, c1.double(), c5.double(),
                                  torch.tensor(float(n), dtype=torch.float64, device=self.sums.device)])

    def reduce(self) -> None:
        """Sum over data-parallel ranks (each rank holds its shard's sums)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.sums)

    def result(self) -> dict:
        loss, c1, c5, n = self.sums.tolist()
        if n == 0:
            return {"loss": float("nan"), "acc1": float("nan"), "acc5": float("nan"), "count": 0}
        return {"loss": loss / n, "acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "count": int(n)}

    def state_dict(self) -> dict:
        return {"sums": self.sums.cpu()}

    def load_state_dict(self, state: dict) -> None:
        self.sums.copy_(state["sums"])


def evaluation_forward(model):
    """What validation calls: the model's own `evaluation_forward(x)` where it has one (airbench94's test-time
    augmentation), else the model. Measurements of the loss surface call the model itself."""
    own = getattr(model, "evaluation_forward", None)
    return own if callable(own) else model


@torch.no_grad()  # (not inference_mode: a lazy module materialised here would hold inference tensors)
def evaluate(model, loader, criterion, *, epoch: int = 0, autocast=contextlib.nullcontext,
             prepare=lambda x: x, progress=None, forward=None) -> dict:
    """Mean loss and top-1/top-5 accuracy (percent) over every example of `loader` (eval mode).

    `progress`: a records.progress.Progress told of each batch (this process's examples so far). `forward`: what
    maps a batch to logits (default: the model; validation passes `evaluation_forward(model)`).
    """
    forward = forward or model
    was_training = model.training
    model.eval()
    meter = Meter(next(model.parameters()).device)
    try:
        for x, y in loader.epoch(epoch):
            with autocast():
                logits = forward(prepare(x))
                loss = criterion(logits, y)
            meter.update(loss.float(), logits.float(), y)
            if progress is not None:
                progress.step(y.shape[0], lambda: _running(meter.result()))
    finally:
        model.train(was_training)
    meter.reduce()
    return meter.result()


def _running(so_far: dict) -> str:
    return f"loss {so_far['loss']:.4f} top1 {so_far['acc1']:.2f}%"
