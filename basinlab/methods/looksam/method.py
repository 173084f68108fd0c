"""`configure(cfg, world_size, workflow)` for --looksam (LookSAM, Liu et al. 2022): the step is in looksam.py.

    --looksam RHO [--looksam-k K (5)] [--looksam-alpha A (0.7)] [--ghost-batch M]

Under data parallelism the ascent follows --sam-perturbation (local by default, as SAM's); g_v is built from
all-reduced gradients in both rules, so every process holds the same one (see looksam.py). In the LR range test
each sweep step is a LookSAM step, as in training: its stored direction is at most K - 1 updates old there too.
"""
from __future__ import annotations

from basinlab.methods.looksam.looksam import LookSAMStep, orthogonal_component
from basinlab.utils.checks import check_number

METHOD_NAME = "--looksam (LookSAM)"

__all__ = ["configure", "LookSAMStep", "orthogonal_component"]


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(LookSAMStep, []) for --looksam, else (None, []). The option statements checked the types and ranges
    (K an integer >= 1, alpha >= 0); what they cannot say is checked here: the numbers are finite and rho > 0."""
    if cfg.looksam is None:
        return None, []
    rho = check_number(cfg.looksam, "--looksam")
    alpha = check_number(cfg.looksam_alpha, "--looksam-alpha", allow_zero=True)
    return LookSAMStep(rho, cfg.looksam_k, alpha, ghost_batch=cfg.ghost_batch,
                       perturbation=cfg.sam_perturbation), []
