"""Two lr schedules the autoHyper seed's configs name (torch schedulers there), as regime schedules.

Registered in :mod:`basinlab.optim.schedules` when this module is imported (``basinlab.tuning.method``
imports it, and every ``basinlab train`` imports that), so a regime entry may say::

    {'epoch': 0, 'lr': 0.1, 'schedule': {'name': 'cosine_restarts', 't_0': 25, 't_mult': 1}}
    {'epoch': 0, 'lr': 0.1, 'schedule': {'name': 'one_cycle', 'epochs': 100}}

Time ``t`` is in fractional epochs (the regime advances it every step), as the seed did for
CosineAnnealingWarmRestarts (``scheduler.step(epoch + batch / len(loader))``).

``cosine_restarts`` (torch ``CosineAnnealingWarmRestarts``; ``t_0`` = T_0 in epochs, ``t_mult`` =
T_mult, ``end_lr`` = eta_min): period i lasts ``t_0 * t_mult**i`` epochs; inside it
``lr = end + (base - end) (1 + cos(pi t_cur / T_i)) / 2``.

``one_cycle`` (torch ``OneCycleLR`` with ``max_lr`` = the regime's lr, the seed's choice):
``initial = base / div_factor``, ``final = initial / final_div_factor``; cosine (or linear)
annealing ``initial -> base`` over ``pct_start * epochs``, then ``base -> final`` until ``epochs``
(three-phase: ``initial -> base -> initial`` over two ``pct_start`` spans, then ``-> final``).
Deliberate differences from torch: time is continuous in epochs (torch counts steps and ends its
first phase one step earlier), and momentum is not cycled (a regime schedule drives the lr only;
torch cycles momentum between 0.85 and 0.95 by default).
"""
from __future__ import annotations

import math

from basinlab.errors import ConfigError
from basinlab.optim.schedules import Schedule, _num, register_schedule, schedule_names


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def _lin_anneal(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * fraction


class CosineRestarts(Schedule):
    name = "cosine_restarts"
    required = ("t_0",)
    optional = {"t_mult": 1, "end_lr": 0.0}

    def validate(self):
        _num("t_0", self.get("t_0"), self.where, positive=True)
        _num("end_lr", self.get("end_lr"), self.where, nonneg=True)
        t_mult = self.get("t_mult")
        if isinstance(t_mult, bool) or not isinstance(t_mult, int) or t_mult < 1:
            raise ConfigError(f"{self.where}: 't_mult' must be an integer >= 1 (as torch's T_mult), got {t_mult!r}")

    def period(self, t: float) -> tuple[float, float]:
        """(time since the current period started, length of that period), in epochs."""
        t_0, t_mult = float(self.get("t_0")), self.get("t_mult")
        if t_mult == 1:
            return t % t_0, t_0
        n = int(math.floor(math.log(t / t_0 * (t_mult - 1) + 1.0, t_mult) + 1e-12))
        start = t_0 * (t_mult ** n - 1) / (t_mult - 1)
        if t < start:  # log rounding at a boundary
            n -= 1
            start = t_0 * (t_mult ** n - 1) / (t_mult - 1)
        return t - start, t_0 * t_mult ** n

    def _lr(self, base, t):
        t_cur, t_i = self.period(t)
        return _cos_anneal(base, self.get("end_lr"), t_cur / t_i)

    def describe(self, base_lr):
        return (f"cosine {base_lr:g} -> {self.get('end_lr'):g} with warm restarts every {self.get('t_0')} epochs "
                f"(x{self.get('t_mult')} each period)")


class OneCycle(Schedule):
    name = "one_cycle"
    required = ("epochs",)
    optional = {"pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4, "anneal": "cos",
                "three_phase": False}

    def validate(self):
        _num("epochs", self.get("epochs"), self.where, positive=True)
        pct = _num("pct_start", self.get("pct_start"), self.where, positive=True)
        if pct >= 1 or (self.get("three_phase") and pct >= 0.5):
            raise ConfigError(f"{self.where}: 'pct_start' must lie in (0, 1) (in (0, 0.5) with three_phase), got {pct:g}")
        _num("div_factor", self.get("div_factor"), self.where, positive=True)
        _num("final_div_factor", self.get("final_div_factor"), self.where, positive=True)
        if self.get("anneal") not in ("cos", "linear"):
            raise ConfigError(f"{self.where}: 'anneal' must be 'cos' or 'linear', got {self.get('anneal')!r}")
        if not isinstance(self.get("three_phase"), bool):
            raise ConfigError(f"{self.where}: 'three_phase' must be true or false, got {self.get('three_phase')!r}")

    def _lr(self, base, t):
        anneal = _cos_anneal if self.get("anneal") == "cos" else _lin_anneal
        total, pct = float(self.get("epochs")), float(self.get("pct_start"))
        initial = base / self.get("div_factor")
        final = initial / self.get("final_div_factor")
        rise = pct * total
        if t <= rise:
            return anneal(initial, base, t / rise)
        if self.get("three_phase"):
            if t <= 2 * rise:
                return anneal(base, initial, (t - rise) / rise)
            return anneal(initial, final, min((t - 2 * rise) / (total - 2 * rise), 1.0))
        return anneal(base, final, min((t - rise) / (total - rise), 1.0))

    def describe(self, base_lr):
        return (f"one cycle {base_lr / self.get('div_factor'):g} -> {base_lr:g} -> "
                f"{base_lr / self.get('div_factor') / self.get('final_div_factor'):g} over {self.get('epochs')} epochs")


for _cls in (CosineRestarts, OneCycle):
    if _cls.name not in schedule_names():
        register_schedule(_cls)
