"""Gradients accumulated over ghost batches, shared by the SmoothOut and SAM steps.

A batch of B samples is cut into chunks of M (the last may be shorter); each chunk is forwarded on its
own (its own batch statistics: ghost batch norm) and backpropagated with its loss times n_chunk/B, so
the accumulated gradient is the batch mean. Under DistributedDataParallel only the last chunk's
backward all-reduces.
"""
from __future__ import annotations

import contextlib

import torch

from ..errors import ConfigError

LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0}


def _gradient_sync(trainer, last: bool):
    no_sync = getattr(trainer.train_model, "no_sync", None)
    return no_sync() if no_sync is not None and not last else contextlib.nullcontext()


def accumulate_gradient(trainer, x, y, chunk: int | None, around_chunk=None):
    """Forward/backward of `x` in chunks into the parameters' .grad.

    `around_chunk()` (optional) gives a context manager entered around each chunk's forward and backward
    (SmoothOut adds and removes its noise there). Returns (mean loss, logits) of the batch, or
    (the non-finite loss, None) after zeroing the gradients when the NaN policy skips the batch.
    """
    size = chunk or x.shape[0]
    pieces = list(zip(x.split(size), y.split(size)))
    losses, outputs = [], []
    for index, (xc, yc) in enumerate(pieces):
        weight = xc.shape[0] / x.shape[0]
        with _gradient_sync(trainer, last=index == len(pieces) - 1), \
                (around_chunk() if around_chunk else contextlib.nullcontext()):
            loss, logits = trainer.forward(xc, yc)
            finite = trainer.check_loss(loss)
            if finite:
                trainer.backward(loss * weight if weight != 1.0 else loss)
        if not finite:
            trainer.optimizer.zero_grad(set_to_none=True)
            return loss.detach(), None
        losses.append(loss.detach() * weight)
        outputs.append(logits.detach())
    return torch.stack(losses).sum(), torch.cat(outputs)


def check_ghost_batch(ghost_batch: int | None, batch: int) -> None:
    if ghost_batch is not None and ghost_batch > batch:
        raise ConfigError(f"--ghost-batch {ghost_batch} is larger than the batch size {batch}; allowed: 1 to {batch}")


def lr_scale_factor(rule: str, batch: int, ghost_batch: int) -> float:
    """(batch / ghost batch) ** (1/2 or 1): the seed's --lr_bb_fix (sqrt) or the linear rule."""
    return (batch / ghost_batch) ** LR_SCALINGS[rule]


def scale_regime_lr(trainer, rule: str | None, ghost_batch: int | None) -> None:
    """Multiply every lr of the trainer's regime by lr_scale_factor (at setup, so exactly once per run)."""
    if not rule:
        return
    batch = trainer.train_loader.batch_size
    factor = lr_scale_factor(rule, batch, ghost_batch)
    trainer.regime = trainer.regime.scaled_lr(factor)
    trainer.log.info(f"--lr-scale-batch {rule}: regime lr x {factor:g} (batch {batch} / ghost batch {ghost_batch})")


def describe_chunks(ghost_batch: int | None, batch: int) -> str:
    chunk = ghost_batch or batch
    return f"gradient over chunks of {chunk} samples ({-(-batch // chunk)} per batch of {batch})"
