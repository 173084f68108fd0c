"""`configure(cfg, world_size, workflow)` for --gsam (GSAM): the step strategy of step.py.

    --gsam RHO [--gsam-alpha A] [--gsam-rho-min RHO_MIN] [--ghost-batch M]

Under data parallelism the perturbation follows --sam-perturbation (local, the authors' rule, unless the
option is given). The LR range test sweeps the lr that GSAM's radius follows between the regime's bounds,
so it runs GSAM only with a constant radius (--gsam-rho-min equal to --gsam).
"""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.gsam.step import GSAMStep
from basinlab.utils.checks import check_number

METHOD_NAME = "--gsam (GSAM)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.gsam is None:
        return None, []
    rho = check_number(cfg.gsam, "--gsam")
    alpha = check_number(cfg.gsam_alpha, "--gsam-alpha", allow_zero=True)
    rho_min = None if cfg.gsam_rho_min is None else check_number(cfg.gsam_rho_min, "--gsam-rho-min", allow_zero=True)
    if rho_min is not None and rho_min > rho:
        raise ConfigError(f"--gsam-rho-min {rho_min:g} is larger than --gsam {rho:g}, the radius at the largest lr; "
                          f"allowed: 0 to {rho:g}")
    if workflow == "lr-range" and rho_min != rho:
        raise ConfigError(f"--gsam scales its radius with the regime's lr between its bounds over the run, and the "
                          f"LR range test replaces the regime by its sweep: give --gsam-rho-min {rho:g} (a constant "
                          f"radius) to sweep GSAM, or drop --gsam")
    return GSAMStep(rho, alpha, rho_min, ghost_batch=cfg.ghost_batch, perturbation=cfg.sam_perturbation), []
