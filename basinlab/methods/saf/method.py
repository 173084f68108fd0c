"""`configure(cfg, world_size, workflow)` for --saf/--mesa (SAF/MESA, Du et al. 2022): the steps are in trajectory.py.

    --saf  [--saf-lambda L (0.3)] [--saf-tau T] [--saf-start-epoch E] [--saf-horizon E] [--ghost-batch M]
    --mesa [--saf-lambda L (0.8)] [--saf-tau T] [--saf-start-epoch E] [--mesa-decay B]  [--ghost-batch M]

The LR range test is refused: the trajectory term starts after the authors' start epoch and refers to the run's
history (SAF's outputs E epochs ago, MESA's average of the weights so far), neither of which a sweep of a few
hundred steps at changing lrs has; there both would be plain steps under another name.
"""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.saf.trajectory import MESAStep, SAFStep, trajectory_loss
from basinlab.utils.checks import check_number

METHOD_NAME = "--saf/--mesa (SAF/MESA)"
DEFAULT_LAMBDA = {"--saf": 0.3, "--mesa": 0.8}  # the authors' SAF_train.py and MESA_train.py

__all__ = ["configure", "SAFStep", "MESAStep", "trajectory_loss"]


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    """(SAFStep or MESAStep, []) for --saf or --mesa, else (None, []). The option statements checked the types,
    ranges and that only one is given; what they cannot say is checked here (finite numbers, tau > 0)."""
    if not cfg.saf and not cfg.mesa:
        return None, []
    flag = "--saf" if cfg.saf else "--mesa"
    if workflow == "lr-range":
        history = "outputs --saf-horizon epochs ago" if cfg.saf else "the moving average of the weights so far"
        raise ConfigError(f"{flag}'s trajectory term starts in epoch {cfg.saf_start_epoch + 2} and "
                          f"refers to the run's history ({history}), which the LR range test's sweep does not have: "
                          f"drop {flag} for the sweep and give it to the training run")
    weight = DEFAULT_LAMBDA[flag] if cfg.saf_lambda is None else check_number(cfg.saf_lambda, "--saf-lambda",
                                                                               allow_zero=True)
    tau = check_number(cfg.saf_tau, "--saf-tau")
    after = cfg.saf_start_epoch
    if cfg.saf:
        return SAFStep(weight, tau, cfg.saf_horizon, ghost_batch=cfg.ghost_batch, after_epoch=after), []
    decay = check_number(cfg.mesa_decay, "--mesa-decay", allow_zero=True)
    return MESAStep(weight, tau, decay, ghost_batch=cfg.ghost_batch, after_epoch=after), []
