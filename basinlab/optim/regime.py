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
import math
from collections.abc import Callable, Mapping
from numbers import Real
from typing import Any

import torch

from basinlab.errors import ConfigError
from basinlab.optim.factory import (
    all_param_group_keys,
    apply_group_settings,
    check_settings,
    create_optimizer,
    optimizer_name_of,
    optimizer_spec,
)
from basinlab.optim.schedules import LR_PARAMS, Schedule, make_schedule
from basinlab.optim.weight_decay import WD_FILTERS, translate_regularizer

__all__ = [
    "Regime",
    "fixed_regime",
    "one_phase_regime",
    "regime_from_model_config",
    "pop_regime_config",
    "batch_size_rule",
    "REGIME_CONFIG_KEYS",
    "DEFAULT_OPTIMIZER",
]

DEFAULT_OPTIMIZER = "SGD"
_POSITION_KEYS = ("epoch", "step")
_CONTROL_KEYS = ("epoch", "step", "optimizer", "schedule", "wd_filter")
# Keys of the reference regimes that we replace with named schedules.
_REFERENCE_KEYS = {
    "step_lambda": "string lambdas are not evaluated; use 'schedule', e.g. {'name': 'linear_warmup', 'epochs': 5}",
    "epoch_lambda": "string lambdas are not evaluated; use 'schedule', e.g. {'name': 'exponential', 'gamma': 0.97}",
    "execute": "code in a regime is not executed; use 'schedule' or a Python callable regime",
    "lr_decay_rate": "use 'schedule': {'name': 'exponential', 'gamma': ...} (per epoch)",
    "lr_decay_steps": "use 'schedule': {'name': 'step', 'step_size': ..., 'gamma': ...}",
    "lr_scheduler": "use a named 'schedule' (multistep, step, cosine, cosine_restarts, one_cycle, linear, "
                    "linear_warmup, exponential, constant), e.g. {'name': 'cosine', 'epochs': 90}",
}
REGIME_CONFIG_KEYS = ("regime", "regime_lr", "regime_momentum", "regime_dampening", "regime_wd")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_fmt(x) for x in v) + ")"
    return str(v)


def _plain(v):
    """Plain data for YAML: tuples become lists, recursively."""
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def _is_num(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


class _Phase:
    """One regime entry with everything accumulated up to it."""

    __slots__ = ("index", "kind", "start", "entry", "optimizer", "acc", "settings", "schedule",
                 "sched_index", "base_lr")

    def label(self) -> str:
        return f"{self.kind} {_fmt(self.start)}"


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
        self._phases: list[_Phase] = []
        self._checked: set = set()
        self._has_steps = False
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
        self._build(self._normalize(phases))

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _normalize(phases) -> list[dict]:
        if isinstance(phases, Mapping):
            entries = []
            for key, value in phases.items():
                epoch = key
                if isinstance(key, str):
                    try:
                        epoch = float(key) if "." in key else int(key)
                    except ValueError:
                        raise ConfigError(
                            f"regime (dict format): keys are epochs, got {key!r}"
                        ) from None
                if not _is_num(epoch):
                    raise ConfigError(f"regime (dict format): keys are epochs, got {key!r}")
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"regime (dict format): epoch {key!r} maps to {value!r}; expected a dict of settings"
                    )
                for pk in _POSITION_KEYS:
                    if pk in value:
                        raise ConfigError(
                            f"regime (dict format): the entry for epoch {key!r} names {pk!r}; "
                            "in the dict format the key is the epoch"
                        )
                entries.append((epoch, {"epoch": epoch, **value}))
            entries.sort(key=lambda kv: kv[0])
            out = [e for _, e in entries]
        elif isinstance(phases, (list, tuple)):
            out = []
            for i, e in enumerate(phases):
                if not isinstance(e, Mapping):
                    raise ConfigError(f"regime phase {i}: expected a dict of settings, got {e!r}")
                out.append(dict(e))
        elif phases is None:
            raise ConfigError("regime: none given; expected a list of phases, a dict keyed by epoch or a callable")
        else:
            raise ConfigError(
                f"regime: expected a list of phases, a dict keyed by epoch or a callable, got {type(phases).__name__}"
            )
        if not out:
            raise ConfigError("regime: no phases; give at least one, e.g. [{'epoch': 0, 'lr': 0.1}]")
        return out

    def _declared_scope(self, entries: list[dict]) -> list[dict]:
        """convNet's 'regularizer' as weight_decay plus its scope; the scope (wd_filter) of the regime."""
        out, scopes = [], set()
        for i, raw in enumerate(entries):
            phase, scope = translate_regularizer(raw, f"regime phase {i}")
            if scope is not None:
                if phase.get("wd_filter", scope) != scope:
                    raise ConfigError(f"regime phase {i}: its regularizer's filter {scope!r} contradicts its "
                                      f"wd_filter {phase['wd_filter']!r}")
                phase["wd_filter"] = scope
            if "wd_filter" in phase:
                if phase["wd_filter"] not in WD_FILTERS:
                    raise ConfigError(f"regime phase {i}: wd_filter must be one of {', '.join(WD_FILTERS)}, got "
                                      f"{phase['wd_filter']!r}")
                scopes.add(phase["wd_filter"])
            out.append(phase)
        if len(scopes) > 1:
            raise ConfigError(f"regime: phases declare different weight decay scopes ({', '.join(sorted(scopes))}); "
                              f"the scope holds for the whole run")
        self.wd_filter = scopes.pop() if scopes else None
        return out

    def _build(self, entries: list[dict]) -> None:
        entries = self._declared_scope(entries)
        group_keys = all_param_group_keys()
        allowed_text = None
        acc: dict[str, Any] = {}
        opt_name = DEFAULT_OPTIMIZER
        schedule: Schedule | None = None
        sched_index = -1
        last_start = {"epoch": None, "step": None}
        normalized: list[dict] = []
        for i, raw in enumerate(entries):
            where = f"regime phase {i}"
            # --- keys
            for key in raw:
                if not isinstance(key, str):
                    raise ConfigError(f"{where}: keys must be strings, got {key!r}")
                if key in _CONTROL_KEYS or key in group_keys:
                    continue
                if key in _REFERENCE_KEYS:
                    raise ConfigError(f"{where}: {key!r} is not supported: {_REFERENCE_KEYS[key]}")
                if allowed_text is None:
                    allowed_text = ", ".join(list(_CONTROL_KEYS) + sorted(group_keys))
                raise ConfigError(f"{where}: unknown key {key!r}; allowed: {allowed_text}")
            # --- position
            has = [k for k in _POSITION_KEYS if k in raw]
            if len(has) == 2:
                raise ConfigError(f"{where}: names both 'epoch' and 'step'; a phase starts at one of them")
            if not has:
                if i > 0:
                    raise ConfigError(f"{where}: names neither 'epoch' nor 'step'; only the first phase may omit "
                                      f"its start")
                kind, start = "epoch", 0
            else:
                kind, start = has[0], raw[has[0]]
            if kind == "epoch":
                if not _is_num(start) or start < 0:
                    raise ConfigError(f"{where}: 'epoch' must be a number >= 0, got {start!r}")
                if isinstance(start, float) and start.is_integer():
                    start = int(start)
            else:
                if isinstance(start, float) and start.is_integer():
                    start = int(start)
                if not isinstance(start, int) or isinstance(start, bool) or start < 0:
                    raise ConfigError(f"{where}: 'step' must be an integer >= 0, got {start!r}")
                self._has_steps = True
            if i == 0 and start != 0:
                raise ConfigError(
                    f"{where}: the first phase must start at epoch 0 (or step 0), got {kind} {_fmt(start)}"
                )
            prev = last_start[kind]
            if prev is not None and start < prev:
                raise ConfigError(
                    f"{where}: starts at {kind} {_fmt(start)}, before an earlier phase at {kind} {_fmt(prev)}; "
                    "list phases in order"
                )
            last_start[kind] = start
            where = f"regime phase {i} ({kind} {_fmt(start)})"
            # --- optimizer
            entry = {kind: start}
            if "optimizer" in raw:
                try:
                    spec = optimizer_spec(raw["optimizer"])
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                opt_name = spec.name
                entry["optimizer"] = spec.name
            if "wd_filter" in raw:
                entry["wd_filter"] = raw["wd_filter"]
            spec = optimizer_spec(opt_name)
            named = {k: v for k, v in raw.items() if k not in _CONTROL_KEYS}
            check_settings(spec, named, where + ": ")
            for k, v in named.items():
                if k == "lr" and (not _is_num(v) or v < 0):
                    raise ConfigError(f"{where}: 'lr' must be a number >= 0, got {v!r}")
                entry[k] = v
                acc[k] = v
            # --- schedule
            if "schedule" in raw:
                schedule = make_schedule(raw["schedule"], where + " schedule")
                sched_index = i
                entry["schedule"] = None if schedule is None else schedule.to_config()
                if schedule is not None and schedule.target_lr() is not None:
                    target = schedule.target_lr()
                    if "lr" in named and float(named["lr"]) != target:
                        raise ConfigError(
                            f"{where}: 'lr' {_fmt(named['lr'])} conflicts with the warm-up's to_lr "
                            f"{_fmt(target)}; give one of them"
                        )
                    acc["lr"] = target
            elif "lr" in named:
                schedule, sched_index = None, -1
            if i == 0 and "lr" not in acc:
                default_lr = spec.defaults.get("lr")
                if not _is_num(default_lr):
                    raise ConfigError(f"{where}: names no 'lr' and optimizer {spec.name} has no default lr")
                acc["lr"] = default_lr
                entry["lr"] = default_lr
            normalized.append(entry)
            # --- phase
            ph = _Phase()
            ph.index, ph.kind, ph.start, ph.entry = i, kind, start, entry
            ph.optimizer = opt_name
            ph.acc = dict(acc)
            ph.settings = self._settings_for(spec, acc)
            ph.schedule, ph.sched_index = schedule, sched_index
            ph.base_lr = acc.get("lr")
            self._dry_run(spec, ph.settings, where)
            if schedule is not None and sched_index == i:
                self._check_schedule_values(spec, ph, where)
            self._phases.append(ph)
        self._entries = normalized

    @staticmethod
    def _settings_for(spec, acc) -> dict:
        out = {k: v for k, v in acc.items() if k in spec.keys and k not in spec.fixed}
        out.update(spec.fixed)
        return out

    @staticmethod
    def _dry_run(spec, settings, where) -> None:
        """Let torch check the values (negative lr, nesterov without momentum, betas...)."""
        if not spec.builtin:
            return
        kwargs = {k: (tuple(v) if isinstance(v, list) and isinstance(spec.defaults.get(k), tuple) else v)
                  for k, v in settings.items()}
        try:
            spec.factory([torch.zeros(2, 2, requires_grad=True)], **kwargs)
        except (ValueError, TypeError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{where}: {spec.name} rejects these settings: {msg}") from None

    @staticmethod
    def _check_schedule_values(spec, ph, where) -> None:
        lr = ph.schedule.lr(ph.base_lr, 0.0)
        if not _is_num(lr) or lr < 0:
            raise ConfigError(f"{where}: the schedule starts at lr {lr!r}; expected a number >= 0")

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

    def _active(self, t: float, gs) -> _Phase:
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
        if not _is_num(factor) or factor <= 0:
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
            if not _is_num(lr) or lr <= 0:
                raise ConfigError(f"lr override must be a number > 0, got {lr!r}")
            first = self.first_lr
            if first <= 0:
                raise ConfigError(f"lr override {_fmt(float(lr))}: the regime's first lr is {_fmt(first)}, so it "
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
                f"lr {_fmt(float(lr))} given: the regime's whole lr schedule is scaled by {factor:.6g} "
                f"(first lr {_fmt(float(first))} -> {_fmt(float(lr))}; later phases and schedules keep their ratios)"
            )
        for key, value in (("momentum", momentum), ("weight_decay", weight_decay)):
            if value is None:
                continue
            if not _is_num(value) or value < 0:
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
                    f"{key} {_fmt(float(value))} given: replaces {key} wherever the regime function's optimizer has it")
        entries = copy.deepcopy(self._entries)
        changes = []
        for ph, e in zip(self._phases, entries):
            accepts = key in optimizer_spec(ph.optimizer).keys
            if key in e or (accepts and (ph.index == 0 or "optimizer" in e)):
                if not accepts:
                    continue
                old = ph.acc.get(key, optimizer_spec(ph.optimizer).defaults.get(key))
                e[key] = value
                changes.append(f"{ph.label()}: {_fmt(old)} -> {_fmt(float(value))}")
        if not changes:
            names = sorted({ph.optimizer for ph in self._phases})
            raise ConfigError(f"{key} override: no optimizer of this regime ({', '.join(names)}) has {key!r}")
        return (Regime(entries, steps_per_epoch=self.steps_per_epoch),
                f"{key} {_fmt(float(value))} given: replaces {key} in every phase ({'; '.join(changes)})")

    # ------------------------------------------------------------------ reporting
    def describe(self) -> list[str]:
        """One line per phase, for the log."""
        if self._fn is not None:
            name = getattr(self._fn, "__qualname__", None) or type(self._fn).__name__
            return [f"regime from Python function {name}: at epoch 0 " +
                    " ".join(f"{k}={_fmt(v)}" for k, v in self._call(0.0).items())]
        lines = []
        for ph in self._phases:
            parts = []
            if ph.index == 0 or "optimizer" in ph.entry:
                parts.append(ph.optimizer)
            for k, v in ph.entry.items():
                if k in _CONTROL_KEYS:
                    continue
                parts.append(f"{k}={_fmt(v)}")
            if "schedule" in ph.entry:
                parts.append("no schedule" if ph.schedule is None else f"schedule: {ph.schedule.describe(ph.base_lr)}")
            lines.append(f"{ph.label()}: " + (" ".join(parts) if parts else "(no change)"))
        return lines

    def to_config(self):
        """Plain data (list of phase dicts) for config.yaml; None for a callable regime."""
        if self._fn is not None:
            return None
        return _plain(copy.deepcopy(self._entries))

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


# ---------------------------------------------------------------------- builders
def fixed_regime(lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 optimizer: str = "SGD") -> Regime:
    """One phase from epoch 0 (delay_stability's ``'regime': 'fixed'``)."""
    return Regime([{"epoch": 0, "optimizer": optimizer, "lr": lr, "momentum": momentum,
                    "dampening": dampening, "weight_decay": weight_decay}])


def one_phase_regime(optimizer: str = "SGD", lr: float = 0.1, momentum: float | None = 0.9,
                     weight_decay: float = 0.0, milestones=None, multiplier: float = 0.1) -> Regime:
    """The regime of the Online Normalization scripts (--optimizer --lr --momentum --wd
    --lr-milestones --lr-multiplier): one optimizer, lr times ``multiplier`` at each milestone.

    Milestones become phases (``{'epoch': m, 'lr': lr * multiplier**k}``) so the log shows them.
    ``momentum`` is left out for an optimizer without one (Adam...) and for None.
    """
    spec = optimizer_spec(optimizer)
    first: dict[str, Any] = {"epoch": 0, "optimizer": spec.name, "lr": lr}
    if momentum is not None and "momentum" in spec.keys:
        first["momentum"] = momentum
    if weight_decay is not None:
        first["weight_decay"] = weight_decay
    phases = [first]
    if milestones:
        ms = list(milestones)
        for m in ms:
            if not _is_num(m) or m <= 0:
                raise ConfigError(f"lr milestones must be epochs > 0, got {m!r}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ConfigError(f"lr milestones must increase, got {ms}")
        if not _is_num(multiplier) or multiplier <= 0:
            raise ConfigError(f"lr multiplier must be a number > 0, got {multiplier!r}")
        for k, m in enumerate(ms, start=1):
            phases.append({"epoch": m, "lr": lr * multiplier ** k})
    return Regime(phases)


def pop_regime_config(cfg: dict) -> dict:
    """Remove the regime keys (REGIME_CONFIG_KEYS) from a model config and return them."""
    return {k: cfg.pop(k) for k in REGIME_CONFIG_KEYS if k in cfg}


def regime_from_model_config(cfg: dict, default=None) -> Regime | None:
    """The regime a ``--model-config`` dict asks for; POPS the regime keys from ``cfg``.

    - ``'regime': 'fixed'``: :func:`fixed_regime` with ``regime_lr`` (0.1), ``regime_momentum``
      (0), ``regime_dampening`` (0), ``regime_wd`` (0);
    - ``'regime'``: a list or dict (or a callable/Regime from code): that regime, with any
      ``regime_lr`` / ``regime_momentum`` / ``regime_wd`` applied as overrides (lr rescales);
    - ``'regime': 'normal'`` / ``'default'`` or no ``'regime'``: ``default`` (the model's own
      regime: a Regime or anything Regime accepts), with the ``regime_*`` keys as overrides
      (ConfigError when there is no default to apply them to).
    ``regime_dampening`` replaces dampening in the first phase and wherever a phase names it.
    Returns None when ``cfg`` has no regime keys (and ``default`` is None).
    """
    if default is not None and not isinstance(default, Regime):
        default = Regime(default)
    rc = pop_regime_config(cfg)
    if not rc:
        return default
    extra = {k: rc[k] for k in REGIME_CONFIG_KEYS[1:] if k in rc}
    for k, v in extra.items():
        if not _is_num(v) or v < 0:
            raise ConfigError(f"model config: {k!r} must be a number >= 0, got {v!r}")
    spec = rc.get("regime")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "fixed":
            return fixed_regime(lr=extra.get("regime_lr", 0.1), momentum=extra.get("regime_momentum", 0.0),
                                dampening=extra.get("regime_dampening", 0.0),
                                weight_decay=extra.get("regime_wd", 0.0))
        if key in ("normal", "default"):
            spec = None
        else:
            raise ConfigError(
                f"model config: unknown regime {spec!r}; allowed: 'fixed', 'normal' (the model's own), "
                "a list of phases or a dict keyed by epoch"
            )
    if spec is None:
        base = default
        if base is None:
            if extra:
                raise ConfigError(
                    f"model config: {', '.join(sorted(extra))} given, but there is no regime to apply them to; "
                    "add 'regime': 'fixed' or a list of phases"
                )
            return None
    else:
        base = spec if isinstance(spec, Regime) else Regime(spec)
    if not extra:
        return base
    if "regime_dampening" in extra:
        entries = base.to_config()
        if entries is None:
            raise ConfigError("model config: 'regime_dampening' cannot be applied to a regime function")
        entries[0]["dampening"] = extra["regime_dampening"]
        for e in entries[1:]:
            if "dampening" in e:
                e["dampening"] = extra["regime_dampening"]
        base = Regime(entries, steps_per_epoch=base.steps_per_epoch)
    new, _ = base.overridden(lr=extra.get("regime_lr"), momentum=extra.get("regime_momentum"),
                             weight_decay=extra.get("regime_wd"))
    return new


def batch_size_rule(lr: float, momentum: float, batch: int, base_batch: int) -> tuple[float, float]:
    """Online Normalization's batch-size rule: m' = m^(B/B0), lr' = lr (B/B0) (1-m')/(1-m).

    At m = 0 this is linear lr scaling; at m = 1 the limit (1-m^k)/(1-m) -> k is used.
    """
    for name, v in (("batch", batch), ("base_batch", base_batch)):
        if not _is_num(v) or v <= 0:
            raise ConfigError(f"batch-size rule: {name} must be > 0, got {v!r}")
    if not _is_num(lr) or lr < 0:
        raise ConfigError(f"batch-size rule: lr must be >= 0, got {lr!r}")
    if not _is_num(momentum) or not 0 <= momentum <= 1:
        raise ConfigError(f"batch-size rule: momentum must be in [0, 1], got {momentum!r}")
    k = batch / base_batch
    m2 = momentum ** k
    ratio = k if momentum == 1 else (1 - m2) / (1 - momentum)
    return lr * k * ratio, m2


