"""What one training step needs, apart from the run that owns it: a strategy's whole toolbox.

    loss, logits = ctx.forward(x, y)       # autocast (ctx.precision), channels_last, the criterion
    ctx.check_loss(loss)                   # the NaN policy: raise (stop), or False to skip the batch
    ctx.backward(loss)                     # loss scaling under fp16
    ctx.optimizer_step()                   # unscale, clip, the before-step seam, step around the scaler, zero grads

A StepContext holds no run folder, loader or regime: `StepContext.from_config(cfg, model, device)` builds the
same one in any process (a worker of a real asynchronous trainer, a benchmark), and the trainer builds its own
the same way. The trainer sets `optimizer` (the regime may replace it), wraps `train_model` for data
parallelism and supplies the before-step seam and the words that place a non-finite loss in the run.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from basinlab.engine.precision import Precision
from basinlab.errors import NonFiniteLossError


class _OneProcess:
    """The data-parallel answers of a single process (no collective to call)."""

    active, rank, world_size = False, 0, 1

    def all_true(self, flag: bool) -> bool:
        return flag

    def average_gradients(self, params) -> None:
        pass


class StepContext:
    """Model, criterion, precision, memory format, clipping, the NaN policy and the optimizer of a step."""

    def __init__(self, model: nn.Module, criterion: nn.Module, precision: Precision, *, channels_last: bool = False,
                 grad_clip: float | None = None, nan_policy: str = "stop", dist=None,
                 before_step: Callable[[torch.optim.Optimizer], None] | None = None,
                 where: Callable[[], str] = lambda: ""):
        self.model = model              # the module whose parameters the optimizer updates
        self.train_model = model        # what forward runs (DDP-wrapped in data-parallel runs)
        self.criterion, self.precision = criterion, precision
        self.channels_last, self.grad_clip, self.nan_policy = channels_last, grad_clip, nan_policy
        self.dist = dist if dist is not None else _OneProcess()
        self.before_step = before_step or (lambda optimizer: None)
        self.where = where              # "at epoch E, step S of N; <what is kept>" for a non-finite loss
        self.optimizer: torch.optim.Optimizer | None = None
        self.updates = 0                # optimizer steps taken (a strategy may step less than once per batch)
        self.skipped = 0                # batches skipped for a non-finite loss (--nan-policy skip)

    @classmethod
    def from_config(cls, cfg, model: nn.Module, device: torch.device, *, dist=None, **seams) -> StepContext:
        """The context `cfg` describes for `model` on `device` (the trainer's, or another process's)."""
        from basinlab.engine.setup import make_criterion, prefers_channels_last
        precision = Precision.for_run(cfg.amp, cfg.eval_amp, device)
        channels_last = cfg.channels_last == "on" or (
            cfg.channels_last == "auto" and prefers_channels_last(model, device))
        if channels_last:
            model.to(memory_format=torch.channels_last)
        return cls(model, make_criterion(model, cfg).to(device), precision,
                   channels_last=channels_last, grad_clip=cfg.grad_clip, nan_policy=cfg.nan_policy, dist=dist, **seams)

    # ------------------------------------------------------------------------------------ the step's parts
    def autocast(self, dtype: torch.dtype | None = None):
        return self.precision.autocast(dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def forward(self, x, y, model: nn.Module | None = None):
        """Loss (float32) and logits of a batch in train mode, under autocast."""
        with self.autocast():
            logits = (model or self.train_model)(self.prepare(x))
            loss = self.criterion(logits, y)
        return loss.float(), logits

    def check_loss(self, loss: torch.Tensor) -> bool:
        """True when the loss is finite. Otherwise stop (NonFiniteLossError) or, with skip, count it."""
        finite = bool(torch.isfinite(loss))
        if self.nan_policy == "skip":
            finite = self.dist.all_true(finite)  # every rank skips the batch, or none does
        if finite:
            return True
        if self.nan_policy == "skip":
            self.skipped += 1
            return False
        raise NonFiniteLossError(f"non-finite loss ({loss.item()}) {self.where()}")

    def backward(self, loss: torch.Tensor) -> None:
        self.precision.backward(loss)

    def optimizer_step(self, step: Callable[[], None] | None = None) -> None:
        """One update from the gradients in .grad: unscale (fp16), clip, the before-step seam, the step (skipped
        when fp16 gradients overflowed; the scaler then updates), zero grads.

        `step` replaces `optimizer.step()` for a strategy with its own update rule (msgd's shifted momentum);
        everything around it stays here.
        """
        self.precision.unscale_(self.optimizer)  # clipping and the seam see true gradients
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.before_step(self.optimizer)
        self.precision.step(self.optimizer, step)
        self.optimizer.zero_grad(set_to_none=True)
        self.updates += 1
