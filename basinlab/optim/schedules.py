"""Named, validated learning-rate schedules for regime entries.

The reference codebases put string lambdas into regimes and ``eval``-ed them; here a regime entry
names a schedule and its parameters instead::

    {'epoch': 0, 'lr': 0.1, 'schedule': {'name': 'cosine', 'end_lr': 0.0, 'epochs': 200}}

Time ``t`` is measured in (fractional) epochs from the start of the entry that set the schedule,
``t = epochs since that entry + step_in_epoch / steps_per_epoch``, so ramps move every step.
``base_lr`` is the lr the regime has accumulated at that entry.

=================  ========================================  ===============================================
name               parameters                                lr(t)
=================  ========================================  ===============================================
``constant``       none                                      base
``cosine``         ``epochs`` (>0), ``end_lr`` = 0           end + (base-end)(1+cos(pi min(t/epochs,1)))/2
``linear``         ``epochs`` (>0), ``end_lr`` = 0           base + (end-base) min(t/epochs, 1)
``linear_warmup``  ``epochs`` (>0), ``from_lr`` = 0,         from + (to-from) min(t/epochs, 1); to_lr then
                   ``to_lr`` = base                          becomes the regime's lr for later entries
``exponential``    ``gamma`` (>0), ``continuous`` = False    base gamma^floor(t) (gamma^t when continuous)
``multistep``      ``milestones`` (increasing, >= 0),        base gamma^(number of milestones <= t);
                   ``gamma`` = 0.1                           milestones count from the entry's start
``step``           ``step_size`` (>0), ``gamma`` = 0.1       base gamma^floor(t / step_size)
=================  ========================================  ===============================================

More schedules can be added with :func:`register_schedule`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from basinlab.errors import ConfigError
from basinlab.utils.schema import finite_float, shown

__all__ = ["Schedule", "make_schedule", "register_schedule", "schedule_names", "LR_PARAMS"]

# Schedule parameters that are learning rates: --lr / scaled_lr multiply them too.
LR_PARAMS = ("end_lr", "from_lr", "to_lr")


def _num(name: str, value, where: str, *, positive=False, nonneg=False) -> float:
    number = finite_float(value)
    if number is None:
        raise ConfigError(f"{where}: {name!r} must be a finite number, got {shown(value)}")
    value = number
    if positive and value <= 0:
        raise ConfigError(f"{where}: {name!r} must be > 0, got {value:g}")
    if nonneg and value < 0:
        raise ConfigError(f"{where}: {name!r} must be >= 0, got {value:g}")
    return value


def _fmt(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


class Schedule:
    """Base class: subclasses set ``name``, ``required``, ``optional`` (name -> default) and ``_lr``."""

    name = ""
    required: tuple = ()
    optional: Mapping[str, Any] = {}

    def __init__(self, spec: Mapping[str, Any], where: str = "schedule"):
        self.where = where
        allowed = set(self.required) | set(self.optional)
        for key in spec:
            if key != "name" and key not in allowed:
                raise ConfigError(
                    f"{where}: unknown parameter {key!r} for schedule {self.name!r}; "
                    f"allowed: {', '.join(sorted(allowed)) or 'none'}"
                )
        for key in self.required:
            if key not in spec:
                raise ConfigError(f"{where}: schedule {self.name!r} needs {key!r}")
        self.params = {k: spec[k] for k in spec if k != "name"}
        self.validate()

    def get(self, key):
        return self.params.get(key, self.optional.get(key))

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def lr(self, base_lr: float | None, t: float) -> float:
        """The lr ``t`` epochs after the schedule started."""
        return float(self._lr(base_lr, max(0.0, float(t))))

    def _lr(self, base, t):  # pragma: no cover - overridden
        return base

    def target_lr(self) -> float | None:
        """An lr the schedule fixes for later entries (linear_warmup's to_lr), else None."""
        return None

    def scaled(self, factor: float) -> Schedule:
        spec = self.to_config()
        for key in LR_PARAMS:
            if key in spec:
                spec[key] = spec[key] * factor
        return type(self)(spec, self.where)

    def to_config(self) -> dict:
        return {"name": self.name, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in self.params.items()}}

    def describe(self, base_lr) -> str:
        return self.name


class Constant(Schedule):
    name = "constant"

    def validate(self):
        pass

    def _lr(self, base, t):
        return base

    def describe(self, base_lr):
        return "constant lr"


def _cos_anneal(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1.0 + math.cos(math.pi * fraction)) / 2.0


def _lin_anneal(start: float, end: float, fraction: float) -> float:
    return start + (end - start) * fraction


class _ToEndLr(Schedule):
    """From the phase's lr to end_lr over 'epochs', then end_lr; the curve between is the subclass's ``anneal``."""

    required = ("epochs",)
    optional = {"end_lr": 0.0}
    anneal = staticmethod(_lin_anneal)

    def validate(self):
        _num("epochs", self.get("epochs"), self.where, positive=True)
        _num("end_lr", self.get("end_lr"), self.where, nonneg=True)

    def _lr(self, base, t):
        return self.anneal(base, self.get("end_lr"), min(t / self.get("epochs"), 1.0))

    def describe(self, base_lr):
        return f"{self.name} {_fmt(base_lr)} -> {_fmt(self.get('end_lr'))} over {_fmt(self.get('epochs'))} epochs"


class Cosine(_ToEndLr):
    name = "cosine"
    anneal = staticmethod(_cos_anneal)


class Linear(_ToEndLr):
    name = "linear"
    anneal = staticmethod(_lin_anneal)


class LinearWarmup(Schedule):
    name = "linear_warmup"
    required = ("epochs",)
    optional = {"from_lr": 0.0, "to_lr": None}

    def validate(self):
        _num("epochs", self.get("epochs"), self.where, positive=True)
        _num("from_lr", self.get("from_lr"), self.where, nonneg=True)
        if self.params.get("to_lr") is not None:
            _num("to_lr", self.get("to_lr"), self.where, nonneg=True)

    def target_lr(self):
        to = self.params.get("to_lr")
        return None if to is None else float(to)

    def _lr(self, base, t):
        to = self.target_lr()
        to = base if to is None else to
        start = self.get("from_lr")
        return start + (to - start) * min(t / self.get("epochs"), 1.0)

    def describe(self, base_lr):
        to = self.target_lr()
        to = base_lr if to is None else to
        return f"linear warm-up {_fmt(self.get('from_lr'))} -> {_fmt(to)} over {_fmt(self.get('epochs'))} epochs"


class Exponential(Schedule):
    name = "exponential"
    required = ("gamma",)
    optional = {"continuous": False}

    def validate(self):
        _num("gamma", self.get("gamma"), self.where, positive=True)
        if not isinstance(self.get("continuous"), bool):
            raise ConfigError(f"{self.where}: 'continuous' must be true or false, got {self.get('continuous')!r}")

    def _lr(self, base, t):
        e = t if self.get("continuous") else math.floor(t)
        return base * self.get("gamma") ** e

    def describe(self, base_lr):
        how = "continuously" if self.get("continuous") else "each epoch"
        return f"lr {_fmt(base_lr)} x {_fmt(self.get('gamma'))} {how}"


class MultiStep(Schedule):
    name = "multistep"
    required = ("milestones",)
    optional = {"gamma": 0.1}

    def validate(self):
        ms = self.get("milestones")
        if not isinstance(ms, (list, tuple)) or not ms:
            raise ConfigError(f"{self.where}: 'milestones' must be a non-empty list of epochs, got {ms!r}")
        vals = [_num("milestones", m, self.where, nonneg=True) for m in ms]
        if any(b <= a for a, b in zip(vals, vals[1:])):
            raise ConfigError(f"{self.where}: 'milestones' must increase, got {list(ms)}")
        _num("gamma", self.get("gamma"), self.where, positive=True)

    def _lr(self, base, t):
        n = sum(1 for m in self.get("milestones") if t >= m)
        return base * self.get("gamma") ** n

    def describe(self, base_lr):
        ms = ", ".join(_fmt(m) for m in self.get("milestones"))
        return f"lr {_fmt(base_lr)} x {_fmt(self.get('gamma'))} at epochs +{ms} (from this phase's start)"


class StepDecay(Schedule):
    name = "step"
    required = ("step_size",)
    optional = {"gamma": 0.1}

    def validate(self):
        _num("step_size", self.get("step_size"), self.where, positive=True)
        _num("gamma", self.get("gamma"), self.where, positive=True)

    def _lr(self, base, t):
        return base * self.get("gamma") ** math.floor(t / self.get("step_size") + 1e-12)

    def describe(self, base_lr):
        return f"lr {_fmt(base_lr)} x {_fmt(self.get('gamma'))} every {_fmt(self.get('step_size'))} epochs"


# ---------------------------------------------------------------------------------------------- cyclic
# Two lr schedules the autoHyper seed's configs name (torch schedulers there), as regime schedules.
#
# A regime entry may say::
#
#     {'epoch': 0, 'lr': 0.1, 'schedule': {'name': 'cosine_restarts', 't_0': 25, 't_mult': 1}}
#     {'epoch': 0, 'lr': 0.1, 'schedule': {'name': 'one_cycle', 'epochs': 100}}
#
# Time ``t`` is in fractional epochs (the regime advances it every step), as the seed did for
# CosineAnnealingWarmRestarts (``scheduler.step(epoch + batch / len(loader))``).
#
# ``cosine_restarts`` (torch ``CosineAnnealingWarmRestarts``; ``t_0`` = T_0 in epochs, ``t_mult`` =
# T_mult, ``end_lr`` = eta_min): period i lasts ``t_0 * t_mult**i`` epochs; inside it
# ``lr = end + (base - end) (1 + cos(pi t_cur / T_i)) / 2``.
#
# ``one_cycle`` (torch ``OneCycleLR`` with ``max_lr`` = the regime's lr, the seed's choice):
# ``initial = base / div_factor``, ``final = initial / final_div_factor``; cosine (or linear)
# annealing ``initial -> base`` over ``pct_start * epochs``, then ``base -> final`` until ``epochs``
# (three-phase: ``initial -> base -> initial`` over two ``pct_start`` spans, then ``-> final``).
# Deliberate differences from torch: time is continuous in epochs (torch counts steps and ends its
# first phase one step earlier), and momentum is not cycled (a regime schedule drives the lr only;
# torch cycles momentum between 0.85 and 0.95 by default).


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
            raise ConfigError(f"{self.where}: 'pct_start' must lie in (0, 1) (in (0, 0.5) with three_phase), got "
                              f"{pct:g}")
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


_SCHEDULES: dict[str, type[Schedule]] = {}


def register_schedule(cls: type[Schedule]) -> type[Schedule]:
    """Add a Schedule subclass (usable as a decorator)."""
    if not cls.name:
        raise ValueError("a schedule needs a name")
    _SCHEDULES[cls.name] = cls
    return cls


for _cls in (Constant, Cosine, Linear, LinearWarmup, Exponential, MultiStep, StepDecay, CosineRestarts, OneCycle):
    register_schedule(_cls)


def schedule_names() -> list[str]:
    return sorted(_SCHEDULES)


def make_schedule(spec, where: str = "schedule") -> Schedule | None:
    """A validated Schedule from ``{'name': ..., params}``; None for ``None``."""
    if spec is None:
        return None
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, Mapping) or "name" not in spec:
        raise ConfigError(
            f"{where}: a schedule is a mapping like {{'name': 'cosine', 'epochs': 200}}, got {spec!r}"
        )
    name = spec["name"]
    cls = _SCHEDULES.get(str(name).lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"{where}: unknown schedule {name!r}; allowed: {', '.join(schedule_names())}")
    return cls(dict(spec), where)
