"""The lr rule for ghost batches (--lr-scale-batch), shared by the SmoothOut and SAM steps.

The accumulation over ghost batches itself is the engine's (basinlab.engine.steps.accumulate_gradient):
a batch of B samples is cut into chunks of M, each forwarded on its own (ghost batch norm).
"""
from __future__ import annotations

LR_SCALINGS = {"sqrt": 0.5, "linear": 1.0}


def lr_scale_factor(rule: str, batch: int, ghost_batch: int) -> float:
    """(batch / ghost batch) ** (1/2 or 1): the seed's --lr_bb_fix (sqrt) or the linear rule."""
    return (batch / ghost_batch) ** LR_SCALINGS[rule]


def regime_lr_factor(run, rule: str | None, ghost_batch: int | None) -> float:
    """A strategy's lr_factor for --lr-scale-batch (the trainer scales the regime by it once), said in the log."""
    if not rule:
        return 1.0
    factor = lr_scale_factor(rule, run.batch_size, ghost_batch)
    run.log(f"--lr-scale-batch {rule}: regime lr x {factor:g} (batch {run.batch_size} / ghost batch {ghost_batch})")
    return factor
