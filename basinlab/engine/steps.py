"""Step strategies: how one batch becomes one optimizer update.

The trainer owns the loop; a strategy owns the update. Plain SGD (with optional gradient accumulation
over micro-batches) is below; SmoothOut, SAM and the asynchronous parameter server are other
strategies built from the same step context (engine/step_context.py), which any process can build:

    loss, logits = ctx.forward(x, y)       # autocast, criterion
    ctx.check_loss(loss)                   # NaN/inf policy: raise, or False to skip the batch
    ctx.backward(loss)                     # grad scaling under fp16
    ctx.optimizer_step()                   # unscale, clip, callbacks' on_before_optimizer_step, step

`accumulate_gradient` runs the first three over the chunks of a batch. A strategy sees the run through a
read-only RunInfo (`run`: position, model, log) and changes it only by what it returns: its step results,
its epoch columns, and `lr_factor` (the trainer scales the regime once, by that factor).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from basinlab.errors import ConfigError


@dataclass
class StepResult:
    loss: torch.Tensor            # detached mean loss of the batch
    logits: torch.Tensor | None   # detached outputs for accuracy (None: not counted)
    skipped: bool = False         # non-finite loss under --nan-policy skip
    target: torch.Tensor | None = None  # the labels of `logits` when they are not the loop's batch (real workers)


class StepStrategy:
    """Base class: override `train_step`; keep any state that must survive a resume in state_dict."""

    name = "base"

    def setup(self, ctx, run) -> None:
        """Called once the model, optimizer and loaders exist (also on resume, before load_state_dict): `ctx` is
        the StepContext, `run` the RunInfo. Raise ConfigError here to refuse the run before its folder exists."""

    def lr_factor(self, run) -> float:
        """The factor every lr of the regime is multiplied by for this strategy (asked once, after setup)."""
        return 1.0

    def batches(self, loader, epoch: int, start_batch: int):
        """The loop's (x, y) batches of `epoch` from `start_batch`, one per train_step. A strategy whose batches
        are computed elsewhere (a real parameter server's worker processes) yields (None, None) for each
        gradient it will receive, and its results carry their labels (StepResult.target)."""
        return loader.epoch(epoch, start_batch=start_batch)

    def train_step(self, ctx, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        raise NotImplementedError

    def sync(self, ctx) -> None:
        """Land any work in flight (other processes' gradients, queued updates): called before every
        checkpoint and validation, so both see the weights as they are."""

    def close(self) -> None:
        """End what the strategy started (processes, threads): called when the run ends, failure included."""

    def epoch_metrics(self, run) -> dict:
        """Extra columns for results.csv at the end of an epoch."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class PlainStep(StepStrategy):
    """Forward, backward, step: ordinary (mini-batch) SGD with whatever optimizer the regime names.

    With `ghost_batch` M the batch gradient is accumulated over chunks of M samples (gradient
    accumulation; each chunk is normalised on its own: ghost batch norm) before the one step.
    """

    name = "plain"
    around_chunk = None  # subclasses: a context manager factory entered around each chunk (SmoothOut)

    def __init__(self, ghost_batch: int | None = None):
        self.ghost_batch = ghost_batch
        if ghost_batch is not None:
            self.name = "ghost-batch"

    def setup(self, ctx, run) -> None:
        if self.ghost_batch is not None:
            check_ghost_batch(self.ghost_batch, run.batch_size)
            run.log(f"step {self.name}: {describe_chunks(self.ghost_batch, run.batch_size)}")

    def train_step(self, ctx, x, y):
        loss, logits = accumulate_gradient(ctx, x, y, self.ghost_batch, self.around_chunk)
        if logits is None:
            return StepResult(loss, None, skipped=True)
        ctx.optimizer_step()
        return StepResult(loss, logits)


STRATEGIES: dict[str, type[StepStrategy]] = {"plain": PlainStep}


# ---------------------------------------------------------------------------------------------- accumulation
def _gradient_sync(ctx, last: bool):
    # Under DistributedDataParallel only the last chunk's backward all-reduces.
    no_sync = getattr(ctx.train_model, "no_sync", None)
    return no_sync() if no_sync is not None and not last else contextlib.nullcontext()


def accumulate_gradient(ctx, x, y, chunk: int | None, around_chunk=None, sync: bool = True, extra_loss=None):
    """Forward/backward of `x` in chunks of `chunk` samples (the last may be shorter) into .grad.

    Each chunk's loss is weighted by its share of the batch, so the accumulated gradient is the
    batch mean. `around_chunk()` (optional) gives a context manager entered around each chunk's
    forward and backward (SmoothOut adds and removes its noise there). `extra_loss(index, logits)`
    (optional) gives a term added to chunk `index`'s loss before its check and backward (SAF's
    trajectory term); the loss returned is still the criterion's, as the run records it. `sync=False`:
    no chunk all-reduces, each process keeps the gradient of its own shard (SAM's per-process
    perturbation). Returns (mean loss, logits) of the batch, or (the non-finite loss, None) after
    zeroing the gradients when the batch is skipped.
    """
    size = chunk or x.shape[0]
    pieces = list(zip(x.split(size), y.split(size)))
    losses, outputs = [], []
    for index, (xc, yc) in enumerate(pieces):
        weight = xc.shape[0] / x.shape[0]
        with _gradient_sync(ctx, last=sync and index == len(pieces) - 1), \
                (around_chunk() if around_chunk else contextlib.nullcontext()):
            loss, logits = ctx.forward(xc, yc)
            total = loss if extra_loss is None else loss + extra_loss(index, logits)
            finite = ctx.check_loss(total)
            if finite:
                ctx.backward(total * weight if weight != 1.0 else total)
        if not finite:
            ctx.optimizer.zero_grad(set_to_none=True)
            return total.detach(), None
        if len(pieces) == 1:  # the common case: no copies
            return loss.detach(), logits.detach()
        losses.append(loss.detach() * weight)
        outputs.append(logits.detach())
    return torch.stack(losses).sum(), torch.cat(outputs)


def check_ghost_batch(ghost_batch: int | None, batch: int) -> None:
    if ghost_batch is not None and ghost_batch > batch:
        raise ConfigError(f"--ghost-batch {ghost_batch} is larger than the batch size {batch}; allowed: 1 to {batch}")


def describe_chunks(ghost_batch: int | None, batch: int) -> str:
    chunk = ghost_batch or batch
    return f"gradient over chunks of {chunk} samples ({-(-batch // chunk)} per batch of {batch})"
