"""A regime's phases: the accepted formats read into entries, each entry validated and its settings accumulated.

The rules (what a phase may name, how settings and schedules carry over) are in :class:`Regime`'s docstring;
:mod:`basinlab.optim.regime` answers questions about the phases built here.
"""
from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

import torch

from basinlab.errors import ConfigError
from basinlab.optim.factory import all_param_group_keys, check_settings, optimizer_spec
from basinlab.optim.schedules import Schedule, make_schedule
from basinlab.optim.weight_decay import WD_FILTERS, translate_regularizer
from basinlab.utils.schema import finite_float, shown

DEFAULT_OPTIMIZER = "SGD"
_POSITION_KEYS = ("epoch", "step")
MAX_STEP = 2**63 - 1  # optimizer steps are counted in int64
CONTROL_KEYS = ("epoch", "step", "optimizer", "schedule", "wd_filter")
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


def fmt(v) -> str:
    """A setting for the log: floats in %g, tuples and lists in parentheses."""
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(fmt(x) for x in v) + ")"
    return str(v)


def plain(v):
    """Plain data for YAML: tuples become lists, recursively."""
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def is_number(v) -> bool:
    """A finite real number (bools excluded; integers beyond the float range too)."""
    return finite_float(v) is not None


class Phase:
    """One regime entry with everything accumulated up to it."""

    __slots__ = ("index", "kind", "start", "entry", "optimizer", "acc", "settings", "schedule",
                 "sched_index", "base_lr")

    def label(self) -> str:
        return f"{self.kind} {fmt(self.start)}"


def normalize_phases(phases) -> list[dict]:
    """The phases as a list of dicts: the dict format (keyed by epoch) sorted into list entries."""
    if isinstance(phases, Mapping):
        entries = []
        for key, value in phases.items():
            epoch = key
            if isinstance(key, str):
                try:
                    epoch = float(key) if "." in key else int(key)
                except ValueError:
                    raise ConfigError(
                        f"regime (dict format): keys are epochs, got {shown(key)}"
                    ) from None
            if not is_number(epoch):
                raise ConfigError(f"regime (dict format): keys are epochs, got {shown(key)}")
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"regime (dict format): epoch {shown(key)} maps to {shown(value)}; expected a dict of settings"
                )
            for pk in _POSITION_KEYS:
                if pk in value:
                    raise ConfigError(
                        f"regime (dict format): the entry for epoch {shown(key)} names {pk!r}; "
                        "in the dict format the key is the epoch"
                    )
            entries.append((epoch, {"epoch": epoch, **value}))
        entries.sort(key=lambda kv: kv[0])
        out = [e for _, e in entries]
    elif isinstance(phases, (list, tuple)):
        out = []
        for i, e in enumerate(phases):
            if not isinstance(e, Mapping):
                raise ConfigError(f"regime phase {i}: expected a dict of settings, got {shown(e)}")
            out.append(dict(e))
    elif phases is None:
        raise ConfigError("regime: none given; expected a list of phases, a dict keyed by epoch or a callable")
    else:
        raise ConfigError(
            f"regime: expected a list of phases, a dict keyed by epoch or a callable, got {type(phases).__name__}"
        )
    if not out:
        raise ConfigError("regime: no phases; give at least one, e.g. [{'epoch': 0, 'lr': 0.1}]")
    for i, entry in enumerate(out):
        _check_numbers(entry, f"regime phase {i}")
    return out


_MAX_NESTING = 4  # lists and dicts nest 3 deep at most in a phase: 'regularizer': [{'value': 1e-4}]


def _check_numbers(entry: Mapping, where: str) -> None:
    """Every number in an entry's settings, schedule and regularizer has a finite float value: torch and the
    schedules compute in floats, so NaN, infinities and integers beyond the float range (10**400) would
    fail in the middle of a run. 'epoch' and 'step' have their own checks (_start_of)."""
    pending = [(shown(k), v, 1) for k, v in entry.items() if k not in _POSITION_KEYS]
    while pending:
        path, value, depth = pending.pop()
        if isinstance(value, (Mapping, list, tuple)):
            if depth >= _MAX_NESTING:
                raise ConfigError(f"{where}: {path} nests deeper than any setting does")
            items = value.items() if isinstance(value, Mapping) else enumerate(value)
            pending.extend((f"{path}[{shown(k)}]", v, depth + 1) for k, v in items)
        elif isinstance(value, Real) and not isinstance(value, bool) and not is_number(value):
            raise ConfigError(f"{where}: {path} must be a finite number, got {shown(value)}")


def declared_scope(entries: list[dict]) -> tuple[list[dict], str | None]:
    """convNet's 'regularizer' as weight_decay plus its scope; returns (entries, the scope (wd_filter) of the
    regime, None when no phase declares one)."""
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
    return out, (scopes.pop() if scopes else None)

def build_phases(entries: list[dict]) -> list[Phase]:
    """Validate the entries in order and accumulate each one's settings (the rules: Regime's docstring)."""
    group_keys = all_param_group_keys()
    running = _Running()
    phases = []
    for i, raw in enumerate(entries):
        _check_keys(raw, f"regime phase {i}", group_keys)
        kind, start = _start_of(raw, i, running.last_start)
        phases.append(_accumulate(i, raw, kind, start, running))
    return phases


class _Running:
    """What the phases so far have set: settings, optimizer, the running schedule, the last start of each kind."""

    def __init__(self):
        self.acc: dict[str, Any] = {}
        self.optimizer = DEFAULT_OPTIMIZER
        self.schedule: Schedule | None = None
        self.sched_index = -1
        self.last_start: dict[str, Any] = {"epoch": None, "step": None}


def _check_keys(raw: Mapping, where: str, group_keys) -> None:
    for key in raw:
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings, got {shown(key)}")
        if key in CONTROL_KEYS or key in group_keys:
            continue
        if key in _REFERENCE_KEYS:
            raise ConfigError(f"{where}: {key!r} is not supported: {_REFERENCE_KEYS[key]}")
        raise ConfigError(f"{where}: unknown key {shown(key)}; allowed: "
                          f"{', '.join(list(CONTROL_KEYS) + sorted(group_keys))}")


def _start_of(raw: Mapping, i: int, last_start: dict) -> tuple[str, Any]:
    """('epoch' or 'step', where the phase starts), checked against the phases before it."""
    where = f"regime phase {i}"
    has = [k for k in _POSITION_KEYS if k in raw]
    if len(has) == 2:
        raise ConfigError(f"{where}: names both 'epoch' and 'step'; a phase starts at one of them")
    if not has:
        if i > 0:
            raise ConfigError(f"{where}: names neither 'epoch' nor 'step'; only the first phase may omit its start")
        kind, start = "epoch", 0
    else:
        kind, start = has[0], raw[has[0]]
    if isinstance(start, float) and start.is_integer():
        start = int(start)
    if kind == "epoch" and (not is_number(start) or start < 0):
        raise ConfigError(f"{where}: 'epoch' must be a number >= 0, got {shown(start)}")
    if kind == "step" and (not isinstance(start, int) or isinstance(start, bool) or not 0 <= start <= MAX_STEP):
        raise ConfigError(f"{where}: 'step' must be an integer in [0, 2**63 - 1], got {shown(start)}")
    if i == 0 and start != 0:
        raise ConfigError(f"{where}: the first phase must start at epoch 0 (or step 0), got {kind} {fmt(start)}")
    prev = last_start[kind]
    if prev is not None and start < prev:
        raise ConfigError(f"{where}: starts at {kind} {fmt(start)}, before an earlier phase at {kind} {fmt(prev)}; "
                          "list phases in order")
    last_start[kind] = start
    return kind, start


def _accumulate(i: int, raw: Mapping, kind: str, start, running: _Running) -> Phase:
    """The phase of entry i: its normalized entry, and the settings accumulated up to it."""
    where = f"regime phase {i} ({kind} {fmt(start)})"
    entry: dict[str, Any] = {kind: start}
    if "optimizer" in raw:
        try:
            running.optimizer = optimizer_spec(raw["optimizer"]).name
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        entry["optimizer"] = running.optimizer
    if "wd_filter" in raw:
        entry["wd_filter"] = raw["wd_filter"]
    spec = optimizer_spec(running.optimizer)
    named = {k: v for k, v in raw.items() if k not in CONTROL_KEYS}
    check_settings(spec, named, where + ": ")
    for k, v in named.items():
        if k == "lr" and (not is_number(v) or v < 0):
            raise ConfigError(f"{where}: 'lr' must be a number >= 0, got {shown(v)}")
        entry[k] = running.acc[k] = v
    _accumulate_schedule(i, raw, named, entry, running, where)
    if i == 0 and "lr" not in running.acc:
        default_lr = spec.defaults.get("lr")
        if not is_number(default_lr):
            raise ConfigError(f"{where}: names no 'lr' and optimizer {spec.name} has no default lr")
        entry["lr"] = running.acc["lr"] = default_lr
    ph = Phase()
    ph.index, ph.kind, ph.start, ph.entry = i, kind, start, entry
    ph.optimizer = running.optimizer
    ph.acc = dict(running.acc)
    ph.settings = _settings_for(spec, running.acc)
    ph.schedule, ph.sched_index = running.schedule, running.sched_index
    ph.base_lr = running.acc.get("lr")
    _dry_run(spec, ph.settings, where)
    if ph.schedule is not None and ph.sched_index == i:
        _check_schedule_values(ph, where)
    return ph


def _accumulate_schedule(i: int, raw: Mapping, named: dict, entry: dict, running: _Running, where: str) -> None:
    """A 'schedule' starts (or ends) here; a new 'lr' alone ends the running one."""
    if "schedule" in raw:
        schedule = running.schedule = make_schedule(raw["schedule"], where + " schedule")
        running.sched_index = i
        entry["schedule"] = None if schedule is None else schedule.to_config()
        target = None if schedule is None else schedule.target_lr()
        if target is not None:
            if "lr" in named and float(named["lr"]) != target:
                raise ConfigError(f"{where}: 'lr' {fmt(named['lr'])} conflicts with the warm-up's to_lr "
                                  f"{fmt(target)}; give one of them")
            running.acc["lr"] = target
    elif "lr" in named:
        running.schedule, running.sched_index = None, -1


def _settings_for(spec, acc) -> dict:
    out = {k: v for k, v in acc.items() if k in spec.keys and k not in spec.fixed}
    out.update(spec.fixed)
    return out

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

def _check_schedule_values(ph: Phase, where: str) -> None:
    lr = ph.schedule.lr(ph.base_lr, 0.0)
    if not is_number(lr) or lr < 0:
        raise ConfigError(f"{where}: the schedule starts at lr {shown(lr)}; expected a number >= 0")
