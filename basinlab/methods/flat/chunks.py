"""The lr rule for ghost batches (--lr-scale-batch), shared by the SmoothOut and SAM steps.

The accumulation over ghost batches itself is the engine's (basinlab.engine.steps.accumulate_gradient):
a batch of B samples is cut into chunks of M, each forwarded on its own (ghost batch norm).
"""
from __future__ import annotations

LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0}


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
