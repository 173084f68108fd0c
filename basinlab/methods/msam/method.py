"""`configure(cfg, world_size, workflow)` for --msam (Momentum-SAM, Becker et al. 2024): the step is in step.py.

    --msam RHO [--ghost-batch M]      with --optimizer SGD and --momentum > 0 (the authors: rho 3, momentum 0.9)

Under data parallelism every process holds the same momentum, so the perturbation is global (see step.py);
--sam-perturbation does not apply. In the LR range test each sweep step is a Momentum-SAM step: its perturbation
depends only on rho and the optimizer's momentum buffer, which the sweep builds as training does (plain SGD's
sweep uses the same history), not on the lr, the epochs or the regime, so it means there what it means in training.
"""
from __future__ import annotations

from basinlab.methods.msam.step import MomentumSAMStep
from basinlab.utils.checks import check_number

METHOD_NAME = "--msam (Momentum-SAM)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(MomentumSAMStep, []) for --msam, else (None, []). The optimizer (SGD with momentum) is checked at setup,
    against the run's whole regime, before the run folder exists."""
    if cfg.msam is None:
        return None, []
    rho = check_number(cfg.msam, "--msam")
    return MomentumSAMStep(rho, ghost_batch=cfg.ghost_batch), []
