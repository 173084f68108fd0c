"""What a report page says about each run: the value of each option it used, beside the one it asked for, and
the run's context (subset, time, speed, version, commit, date, folder).

    OptionValue          one option of one run: the value used and the value configured
    run_options(run)     every option of a run: config.yaml's values, replaced by env.yaml's `effective` ones
    option_columns(runs) the options whose shown value is not the same in every run (the table's option columns)
    context_row(run)     the run's context, read from env.yaml and results.csv
    option_text(value)   an option value printed exactly (a float's repr: 0.9990234375, never 0.999)
    metric_text(value)   a measured number to 4 significant digits

Since env.yaml has an `effective:` mapping (what the trainer resolved its options to), a run shows the values it
really used: a default the config leaves unset (lr: null) shows the lr the run used, and a value a method changed
(--adjust-lr) shows as "0.0105 (configured 0.1)". An older run without `effective` shows its config, and the lr of
its first epoch in results.csv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from basinlab.records.environment import resumes_of

if TYPE_CHECKING:
    from basinlab.records.report_data import RunData

# Options that tell nothing about what a run computed: where it lives and how it talks.
NOT_COMPARED = ("save", "results-dir", "resume", "overwrite", "quiet", "print-freq", "report", "datasets-dir",
                "data-workers", "tensorboard", "config")
# env.yaml's effective names that resolve a config option of another name; the others are named as the option
# (dataset, epochs, optimizer, lr, momentum, amp, device) or have none (step, processes: shown under their own).
EFFECTIVE_OPTIONS = {"batch_size": "batch-size", "weight_decay": "weight-decay", "wd_filter": "wd-filter",
                     "channels_last": "channels-last"}
# effective values that describe the run rather than resolve an option: the context table shows them
CONTEXT_ONLY = ("model", "train_examples", "val_examples")
SWITCHES = {"on": True, "off": False, "true": True, "false": False}


def option_text(value) -> str:
    """An option value exactly as stored: floats by their repr (the shortest text that reads back the same)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(option_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {option_text(item)}" for key, item in value.items()) + "}"
    try:
        return str(value)
    except ValueError:  # an integer of over 4300 digits
        return f"<an integer of {value.bit_length()} bits>"


def metric_text(value) -> str:
    """A measured number to 4 significant digits (whole numbers from 10,000 on, never 1.234e+04)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def _same(configured, used) -> bool:
    """Whether the configured value asks for what the run used (sgd and SGD, on and True, 64 and 64.0 agree)."""
    if isinstance(configured, str) and isinstance(used, bool):
        return SWITCHES.get(configured.lower()) is used
    if isinstance(configured, str) and isinstance(used, str):
        return configured.lower() == used.lower()
    numbers = (int, float)
    if isinstance(configured, numbers) and isinstance(used, numbers) and not isinstance(configured, bool) \
            and not isinstance(used, bool):
        return float(configured) == float(used)
    return configured == used


@dataclass(frozen=True)
class OptionValue:
    """One option of one run: what config.yaml asks for and what the run used (equal where nothing resolved it)."""
    used: object
    configured: object

    @property
    def resolved(self) -> bool:
        """The config left it to the run (unset, or auto), and the run says what it chose."""
        return _unset(self.configured) and self.used is not None and not _same(self.configured, self.used)

    @property
    def overridden(self) -> bool:
        """The run used another value than the config asks for (a method's factor, a model's regime)."""
        return not _unset(self.configured) and self.used is not None and not _same(self.configured, self.used)

    def text(self) -> str:
        if self.overridden:
            return f"{option_text(self.used)} (configured {option_text(self.configured)})"
        return option_text(self.configured if self.used is None else self.used)

    def value(self):
        """The value itself where one value says it all, else the text with the configured value."""
        if self.overridden:
            return self.text()
        return self.configured if self.used is None else self.used


def _unset(value) -> bool:
    """A config value that leaves the choice to the run."""
    return value is None or (isinstance(value, str) and value == "auto")


def flatten(config: dict, prefix: str = "") -> dict:
    """{'model-config': {'depth': 8}} -> {'model-config.depth': 8}; lists stay values."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def effective_settings(run: RunData) -> dict:
    """env.yaml's effective mapping; for an older run without one, the lr of its first epoch (results.csv)."""
    if run.effective is not None:
        return run.effective
    history = run.history
    if "lr" in history and history["lr"].notna().any():
        return {"lr": float(history["lr"].dropna().iloc[0])}
    return {}


def run_options(run: RunData) -> dict[str, OptionValue]:
    """Every option of the run (flattened as model-config.depth): the configured value, and the used one where
    env.yaml's effective mapping (or, for an older run, its first epoch's lr) records it."""
    flat = flatten(run.config)
    options = {key: OptionValue(value, value) for key, value in flat.items()}
    for name, used in effective_settings(run).items():
        if name in CONTEXT_ONLY:
            continue
        key = EFFECTIVE_OPTIONS.get(name, name)
        options[key] = OptionValue(used, flat.get(key))
    return options


def option_columns(runs: list[RunData]) -> list[str]:
    """The options whose shown value is not the same in every run, in the order first seen.

    An option of the config that a run lacks differs (added by a later basinlab version or a method); an
    option only env.yaml records (step, processes) is compared between the runs that recorded it."""
    options = [run_options(run) for run in runs]
    configured = {key for run in runs for key in flatten(run.config)}
    missing = object()
    columns = []
    for key in dict.fromkeys(key for run_values in options for key in run_values):
        if key.split(".")[0] in NOT_COMPARED:
            continue
        shown = set()
        for run, run_values in zip(runs, options):
            if key in run_values:
                shown.add(run_values[key].text())
            elif key in configured or run.effective is not None:
                shown.add(missing)
        if len(shown) > 1:
            columns.append(key)
    return columns


def resumed_text(entry: dict) -> str:
    """'fedcba9 at step 12': a resume's commit (7 characters, '?' if not recorded) and the step it continued
    from."""
    commit = str(entry.get("git_commit", "?"))[:7]
    return f"{commit} at step {entry['global_step']}" if isinstance(entry.get("global_step"), int) else commit


def context_row(run: RunData) -> dict:
    """The run's subset, training time, speed, version, commit, start, the commit of each resume and folder (blank
    where not recorded)."""
    effective, history, env = run.effective or {}, run.history, run.env
    times = history["epoch_time_s"].dropna() if "epoch_time_s" in history else ()
    speeds = history["train_images_per_s"].dropna() if "train_images_per_s" in history else ()
    return {"run": run.name,
            "train examples": effective.get("train_examples"), "val examples": effective.get("val_examples"),
            "train-limit": _limit(run.config, "train-limit"), "val-limit": _limit(run.config, "val-limit"),
            "training time": float(times.sum()) if len(times) else None,
            "median train images/s": float(speeds.median()) if len(speeds) else None,
            "model": effective.get("model", run.config.get("model")),
            "basinlab": env.get("basinlab"), "git commit": env.get("git_commit"), "started": env.get("started"),
            "resumed at": ", ".join(resumed_text(entry) for entry in resumes_of(env)) or None,
            "folder": str(run.path)}


def _limit(config: dict, key: str):
    """A subset limit as configured: a number, or 'all' where the config sets none."""
    if key not in config:
        return None
    return "all" if config[key] is None else config[key]


def duration_text(seconds) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    if seconds < 60:
        return f"{seconds:.3g} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
