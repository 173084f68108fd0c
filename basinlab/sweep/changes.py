"""Whether a spec run on a sweep folder would reuse runs that the folder's stored spec made with other options.

A sweep finds its runs by name (`lr_0.1-s0`), and a name says nothing about the options outside the grid:
after `epochs: 20` becomes `epochs: 40` in `base`, every finished run would be skipped as done. So a spec is
"the same" for a folder when

- every run of it that the folder already holds (a state in DIR/.sweep/ or a run folder) has the options the
  stored spec (DIR/.sweep/spec.yaml) gave it, apart from NOT_COMPARED (where the data is read, how a run
  prints, how often it saves: nothing it computes), and
- every run of the stored spec that the folder holds is still in the spec.

Runs the folder does not hold yet (new seeds, grid values or variants) extend the sweep and are welcome; the
identical spec, run again to resume a killed sweep, is the same. Anything else is refused in one line unless
`--allow-changed-spec` is given: then the changed runs are trained again from scratch, their old folders moved
into DIR/.sweep/replaced/ (never deleted), and runs no longer in the spec are left as they are.
"""
from __future__ import annotations

import datetime as dt
import math
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from basinlab.config import RENAMED, normalise_key, read_yaml_mapping
from basinlab.errors import ConfigError, WriteError
from basinlab.records.run_safety import lock_holder
from basinlab.sweep.spec import SweepSpec, plan_runs, seeds_of
from basinlab.sweep.state import SPEC_FILE, STATE, forget_run, in_queue, run_state, state_path
from basinlab.utils.schema import shown

# Options that change nothing a run computes: a resumed sweep may move its data or print differently.
NOT_COMPARED = frozenset({"datasets_dir", "data_workers", "quiet", "print_freq", "report", "save_every_steps",
                          "save_all", "dist_timeout", "debug"})
SHOWN_OPTIONS = 3
REPLACED = "replaced"  # DIR/.sweep/replaced/<run>-<time>: the folders of runs trained again


class _Unset:
    def __repr__(self) -> str:
        return "unset"


UNSET = _Unset()


def _raw(mapping, where: str) -> dict:
    """Keys normalised, values as stored: the stored spec is compared, not checked against today's options."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{where} is not a mapping")
    names = (normalise_key(str(key)) for key in mapping)
    return {RENAMED.get(name, name): value for name, value in zip(names, mapping.values())}  # old spellings: as now


def stored_run_options(results_dir: Path) -> dict[str, dict] | None:
    """Each run's options under the folder's stored spec; None where the folder has none yet."""
    path = results_dir / STATE / SPEC_FILE
    if not os.path.lexists(path):
        return None
    data = read_yaml_mapping(path, what="stored sweep spec")
    try:
        variants = {name: _raw(options, f"variant {name}") for name, options in _raw(data.get("variants"),
                                                                                     "variants").items()}
        runs = plan_runs(_raw(data.get("base"), "base"), _raw(data.get("grid"), "grid"),
                         seeds_of(data.get("seeds")), variants or None)
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{path} is not a sweep spec ({type(exc).__name__})") from None
    return {run.name: run.options for run in runs}


def same_value(old, new) -> bool:
    """Equal as settings: 1 and 1.0 are one number, True is not 1, NaN equals NaN, mappings and lists deeply."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    if isinstance(old, (int, float)) and isinstance(new, (int, float)):
        return old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old)
                              and math.isnan(new))
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(same_value(old[k], new[k]) for k in old)
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return len(old) == len(new) and all(map(same_value, old, new))
    return type(old) is type(new) and old == new


def differing_options(old: dict, new: dict) -> list[str]:
    keys = [k for k in dict.fromkeys([*old, *new]) if k not in NOT_COMPARED]
    return [k for k in keys if not same_value(old.get(k, UNSET), new.get(k, UNSET))]


def begun(results_dir: Path, name: str) -> bool:
    """Whether the folder holds anything of the run: its state or its run folder."""
    return os.path.lexists(state_path(results_dir, name)) or os.path.lexists(results_dir / name)


@dataclass
class SpecChange:
    results_dir: Path
    changed: dict[str, list[str]] = field(default_factory=dict)           # run name -> options that differ
    values: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # option -> its (old, new) values
    dropped: list[str] = field(default_factory=list)                      # begun runs no longer in the spec
    unreadable: str = ""                                                  # why the stored spec cannot be read

    def __bool__(self) -> bool:
        return bool(self.changed or self.dropped)

    def summary(self) -> str:
        parts = []
        if self.unreadable:
            parts.append(f"{len(self.changed)} runs it holds cannot be checked ({self.unreadable[:160]})")
        if self.values:
            options = [f"{key.replace('_', '-')} {pairs[0][0]} -> {pairs[0][1]}" if len(pairs) == 1
                       else f"{key.replace('_', '-')} ({len(pairs)} different changes)"
                       for key, pairs in list(self.values.items())[:SHOWN_OPTIONS]]
            more = len(self.values) - SHOWN_OPTIONS
            parts.append(", ".join(options) + (f" and {more} more options" if more > 0 else "")
                         + f" in {len(self.changed)} runs it holds (e.g. {next(iter(self.changed))})")
        if self.dropped:
            parts.append(f"{len(self.dropped)} runs it holds are no longer in the spec (e.g. {self.dropped[0]})")
        return "; ".join(parts)

    def refusal(self) -> str:
        where = self.results_dir
        return (f"the spec differs from the one {where} was run with ({where / STATE / SPEC_FILE}): "
                f"{self.summary()}; the sweep would count their results as the new spec's. Run it in a new "
                f"--results-dir, restore the old spec, or add --allow-changed-spec to train the changed runs "
                f"again from scratch (their old folders move to {replaced_folder(where)}/; runs no longer in "
                f"the spec are left as they are)")


def spec_change(spec: SweepSpec, results_dir: Path) -> SpecChange:
    """What running `spec` on the folder would change in the runs it holds (false when nothing)."""
    change = SpecChange(results_dir)
    try:
        old = stored_run_options(results_dir)
    except ConfigError as exc:
        change.unreadable = str(exc)
        change.changed = {run.name: [] for run in spec.runs if begun(results_dir, run.name)}
        return change
    if old is None:
        return change
    for run in spec.runs:
        if run.name in old and begun(results_dir, run.name):
            keys = differing_options(old[run.name], run.options)
            if keys:
                change.changed[run.name] = keys
                for key in keys:
                    pair = (shown(old[run.name].get(key, UNSET), 30), shown(run.options.get(key, UNSET), 30))
                    pairs = change.values.setdefault(key, [])
                    if pair not in pairs:
                        pairs.append(pair)
    names = {run.name for run in spec.runs}
    change.dropped = [name for name in old if name not in names and begun(results_dir, name)]
    return change


def replaced_folder(results_dir: Path) -> Path:
    return results_dir / STATE / REPLACED


def retire_runs(names: list[str], results_dir: Path) -> list[Path]:
    """Make the runs pending again: their folders moved into DIR/.sweep/replaced/ (kept, never deleted), their
    states forgotten. Refused, before anything moves, while a process trains one of them or Slurm holds its job."""
    for name in names:
        holder = lock_holder(results_dir / name) if (results_dir / name).is_dir() else None
        job = str(run_state(results_dir, name).get("job_id") or "")
        if holder is not None or in_queue(job):
            by = f"process {holder[:32]}" if holder is not None else f"Slurm job {job}"
            raise ConfigError(f"run {results_dir / name} is being trained by {by}; wait for it, then run the "
                              f"sweep again")
    moved = []
    for name in names:
        folder = results_dir / name
        if os.path.lexists(folder):
            moved.append(_move_into_replaced(folder, results_dir))
        forget_run(results_dir, name)
    return moved


def _move_into_replaced(folder: Path, results_dir: Path) -> Path:
    """A rename within the results folder (one file system); the name says when, and never clashes."""
    target = replaced_folder(results_dir) / f"{folder.name}-{dt.datetime.now():%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    try:
        target.parent.mkdir(exist_ok=True)
        os.rename(folder, target)
    except OSError as exc:
        raise WriteError(f"cannot move {folder} into {target.parent}: {exc.strerror}") from None
    return target
