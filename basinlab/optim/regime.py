"""Optimisation regimes: optimizer settings as a pure function of the training position.

A regime is the convNet.pytorch idea (a model carries its own schedule of optimizer settings),
re-done so that the settings depend only on *where* training is (epoch, step within the epoch,
global optimizer step), never on the history of calls. Resuming at epoch 100 therefore lands in
the right phase at once (the reference replayed earlier phases one entry per step on resume),
and the optimizer object is kept across phases so momentum buffers survive (the SmoothOut
reference re-created the optimizer every epoch). A new optimizer is made only when the
``optimizer`` name changes.

Formats accepted by :class:`Regime`::

    # list format (at-stabilitys-edge / convNet)
    [{'epoch': 0, 'optimizer': 'SGD', 'lr': 0.1, 'momentum': 0.9, 'weight_decay': 1e-4},
     {'epoch': 81, 'lr': 0.01},
     {'step': 50000, 'lr': 1e-3}]
    # dict format (smoothout), keyed by epoch
    {0: {'optimizer': 'SGD', 'lr': 0.1, 'momentum': 0.9}, 81: {'lr': 0.01}}
    # a Python callable (epoch: float) -> dict of settings (from code only)
    lambda t: {'optimizer': 'SGD', 'lr': 0.1 * 0.97 ** t, 'momentum': 0.9}
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping

import torch

from basinlab.errors import ConfigError
from basinlab.optim.factory import (
    apply_group_settings,
    check_settings,
    create_optimizer,
    optimizer_name_of,
    optimizer_spec,
)
from basinlab.optim.regime_phases import (
    CONTROL_KEYS,
    DEFAULT_OPTIMIZER,
    Phase,
    build_phases,
    declared_scope,
    fmt,
    is_number,
    normalize_phases,
    plain,
)
from basinlab.optim.schedules import LR_PARAMS

__all__ = ["Regime", "DEFAULT_OPTIMIZER"]


class Regime:
    """Optimizer settings as a pure function of (epoch, step in epoch, global step).

    Phases (entries) apply in list order (dict format: by epoch). An entry starts at its
    ``'epoch'`` (compared with the fractional epoch ``epoch + step_in_epoch/steps_per_epoch``)
    or at its ``'step'`` (global optimizer steps); it is active once that point is reached and
    every earlier entry is active, so the list reads as a sequence. The first entry starts at 0
    (an entry without 'epoch'/'step' is allowed only first).

    Settings ACCUMULATE: a later entry overrides only the keys it names. ``'optimizer'`` names
    the optimizer (case-insensitive, see :mod:`basinlab.optim.factory`; 'SGD' until one is
    named); any param-group key of an optimizer passes through (lr, momentum, dampening,
    nesterov, betas, eps, weight_decay, ...). An entry may only name keys the optimizer active
    after it accepts; keys accumulated under an earlier optimizer that the current one does not
    accept are left out of the settings (and come back if the optimizer changes back). If no
    entry names an lr, the optimizer's default lr is used (and written into the first entry).

    Schedules: an entry may carry ``'schedule': {'name': ..., ...}`` (see
    :mod:`basinlab.optim.schedules`), which drives the lr from that entry's start, in fractional
    epochs since that start (per step when ``steps_per_epoch`` is known). Its base lr is the
    accumulated ``'lr'``. A schedule lasts until a later entry names ``'lr'`` or ``'schedule'``
    (``'schedule': None`` just ends it); entries that name neither keep it running.
    ``linear_warmup`` with ``to_lr`` sets the accumulated lr to ``to_lr`` for later entries.

    Everything is validated at construction: unknown keys, keys the named optimizer does not
    accept (e.g. 'momentum' for Adam), unknown optimizers, bad schedules and values torch
    rejects all raise :class:`~basinlab.errors.ConfigError`.

    ``steps_per_epoch`` turns ``step_in_epoch`` into fractional epochs and, when no
    ``global_step`` is given, gives it as ``epoch * steps_per_epoch + step_in_epoch``. It is a
    plain attribute and can also be passed per call (data regimes change it).
    """

    def __init__(self, phases, *, steps_per_epoch: int | None = None):
        self.steps_per_epoch = steps_per_epoch
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch <= 0):
            raise ValueError(f"steps_per_epoch must be a positive int, got {steps_per_epoch!r}")
        self._fn: Callable[[float], Mapping] | None = None
        self._entries: list[dict] = []
        self.wd_filter: str | None = None   # the weight decay scope a phase declares (optim/weight_decay.py)
        self._phases: list[Phase] = []
        self._checked: set = set()
        if isinstance(phases, Regime):
            if phases._fn is not None:
                self._fn = phases._fn
            else:
                self._build(copy.deepcopy(phases._entries))
            return
        if callable(phases) and not isinstance(phases, (list, tuple, Mapping)):
            self._fn = phases
            self._call(0.0)  # validates the first settings
            return
        self._build(normalize_phases(phases))

    def _build(self, entries: list[dict]) -> None:
        entries, self.wd_filter = declared_scope(entries)
        self._phases = build_phases(entries)
        self._entries = [ph.entry for ph in self._phases]

    # ------------------------------------------------------------------ callables
    def _call(self, t: float) -> dict:
        raw = self._fn(t)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"regime function returned {type(raw).__name__}; expected a dict of settings")
        out = dict(raw)
        name = optimizer_spec(out.pop("optimizer", DEFAULT_OPTIMIZER)).name
        spec = optimizer_spec(name)
        sig = (name, frozenset(out))
        if sig not in self._checked:
            check_settings(spec, out, "regime function: ")
            self._checked.add(sig)
        if "lr" not in out:
            out["lr"] = spec.defaults.get("lr")
        out.update(spec.fixed)
        return {"optimizer": name, **out}

    # ------------------------------------------------------------------ position
    def _position(self, epoch, step_in_epoch, global_step, steps_per_epoch):
        if epoch < 0 or step_in_epoch < 0:
            raise ValueError(f"negative training position: epoch={epoch}, step_in_epoch={step_in_epoch}")
        spe = steps_per_epoch if steps_per_epoch is not None else self.steps_per_epoch
        t = float(epoch) + (step_in_epoch / spe if spe else 0.0)
        if global_step is None and spe:
            global_step = int(round(epoch * spe)) + int(step_in_epoch)
        return t, global_step, spe

    def _active(self, t: float, gs) -> Phase:
        current = self._phases[0]
        for ph in self._phases[1:]:
            if ph.kind == "epoch":
                reached = t >= ph.start
            else:
                if gs is None:
                    raise ValueError(
                        "this regime has step-keyed phases: pass global_step (or steps_per_epoch)"
                    )
                reached = gs >= ph.start
            if not reached:
                break
            current = ph
        return current

    def _at(self, t: float, gs, spe) -> dict:
        if self._fn is not None:
            return self._call(t)
        ph = self._active(t, gs)
        out = {"optimizer": ph.optimizer, **ph.settings}
        if ph.schedule is not None:
            sp = self._phases[ph.sched_index]
            if sp.kind == "epoch":
                elapsed = t - sp.start
            else:
                if not spe:
                    raise ValueError("a schedule in a step-keyed phase needs steps_per_epoch")
                elapsed = (gs - sp.start) / spe
            out["lr"] = ph.schedule.lr(ph.base_lr, elapsed)
        return out

    def settings_at(self, epoch: float, step_in_epoch: int = 0, global_step: int | None = None, *,
                    steps_per_epoch: int | None = None) -> dict:
        """``{'optimizer': name, 'lr': ..., ...}`` at this training position (a fresh dict)."""
        t, gs, spe = self._position(epoch, step_in_epoch, global_step, steps_per_epoch)
        return self._at(t, gs, spe)

    def phase_at(self, epoch: float, step_in_epoch: int = 0, global_step: int | None = None, *,
                 steps_per_epoch: int | None = None) -> int:
        """Index of the active phase (0 for a callable regime)."""
        if self._fn is not None:
            return 0
        t, gs, _ = self._position(epoch, step_in_epoch, global_step, steps_per_epoch)
        return self._active(t, gs).index

    def optimizer_name_at(self, epoch: float, step_in_epoch: int = 0, global_step: int | None = None, *,
                          steps_per_epoch: int | None = None) -> str:
        """Canonical name of the optimizer the regime uses at this position."""
        return self.settings_at(epoch, step_in_epoch, global_step, steps_per_epoch=steps_per_epoch)["optimizer"]

    def lr_at(self, epoch: float) -> float:
        """The lr at a fractional epoch (for plots); global step from steps_per_epoch when set."""
        spe = self.steps_per_epoch
        gs = int(round(epoch * spe)) if spe else None
        return self._at(float(epoch), gs, spe)["lr"]

    # ------------------------------------------------------------------ optimizer
    def apply(self, optimizer: torch.optim.Optimizer | None, params, epoch: float, step_in_epoch: int = 0,
              global_step: int | None = None, *, steps_per_epoch: int | None = None) -> torch.optim.Optimizer:
        """Bring ``optimizer`` to the settings at this position and return it.

        The same object comes back, with its param groups updated and its state (momentum
        buffers, Adam moments) untouched, unless the regime names a different optimizer here
        (or ``optimizer`` is None): then a new one is created over ``params`` (a list, or a callable
        returning one, called only then; or, when
        ``params`` is None, over the old optimizer's param groups, keeping their extra keys such
        as ``'lr_scale'``). A param group with ``'<key>_scale'`` gets the regime value times
        that factor (``'lr_scale'`` for per-layer lr).
        """
        settings = self.settings_at(epoch, step_in_epoch, global_step, steps_per_epoch=steps_per_epoch)
        name = settings.pop("optimizer")
        spec = optimizer_spec(name)
        if optimizer is not None and optimizer_name_of(optimizer) == name:
            apply_group_settings(optimizer, settings, spec.defaults)
            return optimizer
        if callable(params):  # built only when an optimizer is created (not on every step)
            params = params()
        if params is None:
            if optimizer is None:
                raise ValueError("Regime.apply: give params when there is no optimizer yet")
            old = optimizer_spec(optimizer_name_of(optimizer)).keys if _known(optimizer) else set(optimizer.defaults)
            params = [{k: v for k, v in g.items() if k == "params" or (k not in old and k not in spec.keys)}
                      for g in optimizer.param_groups]
        return create_optimizer(name, params, settings)

    # ------------------------------------------------------------------ derived regimes
    @property
    def first_lr(self) -> float:
        """The first phase's base lr (a warm-up's target lr): what ``--lr`` replaces."""
        if self._fn is not None:
            return float(self._call(0.0)["lr"])
        return float(self._phases[0].base_lr)

    def scaled_lr(self, factor: float) -> Regime:
        """A copy with every lr (phases and schedule lrs) multiplied by ``factor``."""
        if not is_number(factor) or factor <= 0:
            raise ConfigError(f"lr scale factor must be a number > 0, got {factor!r}")
        if self._fn is not None:
            fn = self._fn

            def scaled(t, _fn=fn, _f=float(factor)):
                d = dict(_fn(t))
                if "lr" in d:
                    d["lr"] = d["lr"] * _f
                else:
                    name = d.get("optimizer", DEFAULT_OPTIMIZER)
                    d["lr"] = optimizer_spec(name).defaults.get("lr") * _f
                return d

            return Regime(scaled, steps_per_epoch=self.steps_per_epoch)
        entries = copy.deepcopy(self._entries)
        for e in entries:
            if "lr" in e:
                e["lr"] = e["lr"] * factor
            sched = e.get("schedule")
            if sched is not None:
                for k in LR_PARAMS:
                    if sched.get(k) is not None:
                        sched[k] = sched[k] * factor
        return Regime(entries, steps_per_epoch=self.steps_per_epoch)

    def overridden(self, *, lr: float | None = None, momentum: float | None = None,
                   weight_decay: float | None = None) -> tuple[Regime, list[str]]:
        """Apply command-line overrides; returns (new regime, log lines saying what changed).

        ``lr`` rescales the WHOLE lr schedule so that it starts at ``lr`` (every phase lr and
        schedule lr times ``lr / first_lr``; ratios are kept). ``momentum`` and
        ``weight_decay`` replace those values in every phase that names them, and are added to
        the first phase and to each phase that switches optimizer, where that optimizer accepts
        them. ConfigError when no optimizer of the regime accepts the key.
        """
        lines: list[str] = []
        new: Regime = self
        if lr is not None:
            if not is_number(lr) or lr <= 0:
                raise ConfigError(f"lr override must be a number > 0, got {lr!r}")
            first = self.first_lr
            if first <= 0:
                raise ConfigError(f"lr override {fmt(float(lr))}: the regime's first lr is {fmt(first)}, so it "
                                  f"cannot be rescaled")
            factor = lr / first
            new = self.scaled_lr(factor)
            if new._fn is None:  # make the first lr exactly the given value
                e0 = new._entries[0]
                if e0.get("schedule") and e0["schedule"].get("to_lr") is not None:
                    e0["schedule"]["to_lr"] = lr
                    if "lr" in e0:
                        e0["lr"] = lr
                else:
                    e0["lr"] = lr
                new = Regime(new._entries, steps_per_epoch=self.steps_per_epoch)
            lines.append(
                f"lr {fmt(float(lr))} given: the regime's whole lr schedule is scaled by {factor:.6g} "
                f"(first lr {fmt(float(first))} -> {fmt(float(lr))}; later phases and schedules keep their ratios)"
            )
        for key, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            if value is None:
                continue
            if not is_number(value) or value < 0:
                raise ConfigError(f"{key} override must be a number >= 0, got {value!r}")
            new, line = new._replace_everywhere(key, value)
            lines.append(line)
        if new is self:
            new = Regime(self, steps_per_epoch=self.steps_per_epoch)
        return new, lines

    def _replace_everywhere(self, key: str, value) -> tuple[Regime, str]:
        if self._fn is not None:
            fn = self._fn
            name0 = self._call(0.0)["optimizer"]
            if key not in optimizer_spec(name0).keys:
                raise ConfigError(f"{key} override: optimizer {name0} of this regime has no {key!r}")

            def replaced(t, _fn=fn, _k=key, _v=value):
                d = dict(_fn(t))
                if _k in optimizer_spec(d.get("optimizer", DEFAULT_OPTIMIZER)).keys:
                    d[_k] = _v
                return d

            return (Regime(replaced, steps_per_epoch=self.steps_per_epoch),
                    f"{key} {fmt(float(value))} given: replaces {key} wherever the regime function's optimizer has it")
        entries = copy.deepcopy(self._entries)
        changes = []
        for ph, e in zip(self._phases, entries):
            accepts = key in optimizer_spec(ph.optimizer).keys
            if key in e or (accepts and (ph.index == 0 or "optimizer" in e)):
                if not accepts:
                    continue
                old = ph.acc.get(key, optimizer_spec(ph.optimizer).defaults.get(key))
                e[key] = value
                changes.append(f"{ph.label()}: {fmt(old)} -> {fmt(float(value))}")
        if not changes:
            names = sorted({ph.optimizer for ph in self._phases})
            raise ConfigError(f"{key} override: no optimizer of this regime ({', '.join(names)}) has {key!r}")
        return (Regime(entries, steps_per_epoch=self.steps_per_epoch),
                f"{key} {fmt(float(value))} given: replaces {key} in every phase ({'; '.join(changes)})")

    # ------------------------------------------------------------------ reporting
    def describe(self) -> list[str]:
        """One line per phase, for the log."""
        if self._fn is not None:
            name = getattr(self._fn, "__qualname__", None) or type(self._fn).__name__
            return [f"regime from Python function {name}: at epoch 0 " +
                    " ".join(f"{k}={fmt(v)}" for k, v in self._call(0.0).items())]
        lines = []
        for ph in self._phases:
            parts = []
            if ph.index == 0 or "optimizer" in ph.entry:
                parts.append(ph.optimizer)
            for k, v in ph.entry.items():
                if k in CONTROL_KEYS:
                    continue
                parts.append(f"{k}={fmt(v)}")
            if "schedule" in ph.entry:
                parts.append("no schedule" if ph.schedule is None else f"schedule: {ph.schedule.describe(ph.base_lr)}")
            lines.append(f"{ph.label()}: " + (" ".join(parts) if parts else "(no change)"))
        return lines

    def to_config(self):
        """Plain data (list of phase dicts) for config.yaml; None for a callable regime."""
        if self._fn is not None:
            return None
        return plain(copy.deepcopy(self._entries))

    @property
    def phases(self) -> list[dict]:
        """The normalized phase entries (copies)."""
        return copy.deepcopy(self._entries) if self._fn is None else []

    @property
    def is_callable(self) -> bool:
        return self._fn is not None

    def __len__(self) -> int:
        return len(self._phases) if self._fn is None else 1

    def __repr__(self) -> str:
        if self._fn is not None:
            return f"Regime({self._fn!r})"
        return f"Regime({self.to_config()!r})"

    def __eq__(self, other) -> bool:
        if not isinstance(other, Regime):
            return NotImplemented
        if self._fn is not None or other._fn is not None:
            return self._fn is other._fn
        return self.to_config() == other.to_config()

    __hash__ = None


def _known(optimizer) -> bool:
    try:
        optimizer_spec(optimizer_name_of(optimizer))
        return True
    except ConfigError:
        return False


