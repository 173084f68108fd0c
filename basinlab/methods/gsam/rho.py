"""GSAM's radius, scheduled with the lr (the authors' gsam/scheduler.py ProportionScheduler):

    rho_t = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)

lr_t is the regime's lr at the step (read from the optimizer: a param group's lr over its 'lr_scale', so
per-layer factors such as AdaS's do not count). lr_max and lr_min are the largest and smallest lr the run's
regime gives over the run: the regime is evaluated at every step of its epochs, at the position the trainer
applies it (epoch, step in the epoch, global step = epoch x steps per epoch + step), so every shape a regime
can take (warm-up, cosine, step decay, step-keyed phases, a Python function) is covered exactly. A regime
whose lr never changes has rho_t = rho_max throughout.

The authors pass lr_min and lr_max by hand (their paper: the peak lr and the final lr, with the warm-up below
lr_min extrapolated, rho below rho_min there). Here the bounds are the run's own, so rho_t stays within
[rho_min, rho_max]; for a regime that only decays (no warm-up) the two are the same.
"""
from __future__ import annotations


def regime_lr(optimizer) -> float:
    """The regime's lr at this step: the first param group's lr over its 'lr_scale' (1 when it has none); a
    group scaled to 0 (frozen) says nothing of the regime, so the next one is asked."""
    for group in optimizer.param_groups:
        scale = float(group.get("lr_scale", 1.0))
        if scale:
            return float(group["lr"]) / scale
    return float(optimizer.param_groups[0]["lr"])


def run_lr_bounds(run) -> tuple[float, float]:
    """(smallest, largest) lr of the run's regime over its epochs, at every step (see the module's docstring)."""
    lrs = [settings["lr"] for _, _, settings in run.regime_settings()]
    return float(min(lrs)), float(max(lrs))


class RhoSchedule:
    """rho_t from the lr of the step, between rho_min at the run's smallest lr and rho_max at its largest."""

    def __init__(self, rho_max: float, rho_min: float | None = None):
        self.rho_max = float(rho_max)
        self.rho_min = 0.0 if rho_min is None else float(rho_min)
        self.min_given = rho_min is not None
        self.bounds: tuple[float, float] | None = None  # (lr_min, lr_max); None: rho does not follow the lr

    @property
    def constant(self) -> bool:
        """rho_t = rho_max at every step: equal radii, or an lr that never changes."""
        return self.rho_min == self.rho_max or self.bounds is None or self.bounds[0] == self.bounds[1]

    def fit(self, lr_min: float, lr_max: float) -> None:
        self.bounds = (float(lr_min), float(lr_max))

    def at(self, lr: float) -> float:
        if self.constant:
            return self.rho_max
        lr_min, lr_max = self.bounds
        lr = min(max(lr, lr_min), lr_max)  # only where a step's lr strays (see run_lr_bounds); the bounds are
        # the lrs the run takes, so the authors' unclamped rule gives the same everywhere else
        return self.rho_min + (self.rho_max - self.rho_min) * (lr - lr_min) / (lr_max - lr_min)

    def describe(self) -> str:
        if self.rho_min == self.rho_max:
            return f"rho {self.rho_max:g} at every step"
        if self.constant:
            return f"rho {self.rho_max:g} at every step (the regime's lr is constant)"
        lr_min, lr_max = self.bounds
        return (f"rho from {self.rho_max:g} at the regime's largest lr {lr_max:g} to {self.rho_min:g} at its "
                f"smallest {lr_min:g}, linear in the lr")
