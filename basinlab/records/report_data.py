"""What a report page shows, read from run folders: each run's curves, its config and env.yaml, and the table of runs.

No plotting here (report.py draws): these are the tables the page is built from, tested on their own.

    RunData          one run folder: name, config (as stored), env.yaml, results.csv, steps.csv, low-rank means,
                     sharpness-steps.csv (--log-sharpness-every-steps)
    read_history(path)   a results.csv whose number columns hold numbers (else one line naming file and column)
    read_sharpness_steps(path)   a sharpness-steps.csv (None where there is none; damaged: one line)
    differing_options(configs)   the options whose configured values are not the same in every run (flattened)
    run_table(runs)  one row per run: its results first (final / best metrics; the last lambda_max / threshold
                     where a run measured it live), then the options that differ
                     (the values it used, report_values.py), as the page shows them
    seed_band(frames)    per epoch: the median, min and max over a setting's seeds, and how many have that epoch
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from basinlab.config import read_yaml_mapping
from basinlab.errors import ConfigError
from basinlab.records.progress import read_steps
from basinlab.records.report_values import NOT_COMPARED, flatten, option_columns, run_options
from basinlab.records.results import FIRST_COLUMNS, TIME_COLUMNS, read_results
from basinlab.utils.schema import shown

if TYPE_CHECKING:
    import pandas as pd

# Low-rank means plotted per epoch from lowrank.csv (--log-lowrank, autoHyper's trials)
LOWRANK_MEANS = {"S": ("S_in", "S_out"), "rank": ("rank_in", "rank_out")}
# --log-sharpness-every-steps writes this (basinlab/methods/edge_of_stability, a layer above: named, not imported)
SHARPNESS_CSV = "sharpness-steps.csv"
SHARPNESS_NEEDED = ("step", "epoch", "lambda_max", "threshold")
SHARPNESS_NUMBERS = (*SHARPNESS_NEEDED, "lr", "batch_sharpness", "preconditioned_sharpness",
                     "lambda_max_over_threshold", "preconditioned_over_threshold")


@dataclass
class RunData:
    name: str                                   # unique on the page (the folder name, made unique if needed)
    path: Path
    config: dict                                # config.yaml as stored (flag names, nested mappings)
    history: pd.DataFrame                       # results.csv
    steps: pd.DataFrame | None = None           # steps.csv (-p N), fractional epochs
    lowrank: pd.DataFrame | None = None         # per-epoch means of lowrank.csv
    env: dict = field(default_factory=dict)     # env.yaml: versions, commit, start, and what options resolved to
    sharpness: pd.DataFrame | None = None       # sharpness-steps.csv (--log-sharpness-every-steps)
    delays: pd.DataFrame | None = None          # delays.csv (--real): epoch, delay, fraction of its gradients

    @property
    def effective(self) -> dict | None:
        """env.yaml's `effective:` mapping (the values the run resolved its options to); None for older runs."""
        return self.env.get("effective")

    def method_columns(self) -> list[str]:
        """results.csv columns beyond the engine's own that hold numbers (delays, lambda_max, SmoothOut A...)."""
        own = set(FIRST_COLUMNS) | set(TIME_COLUMNS)
        return [c for c in self.history.columns if c not in own and _numeric(self.history[c])]


def _numeric(column) -> bool:
    import pandas as pd
    return pd.api.types.is_numeric_dtype(column) and bool(column.notna().any())


def read_history(path: str | Path) -> pd.DataFrame:
    """A run's results.csv (read_results) whose columns of numbers hold only numbers: the engine's own columns,
    and any other column where some cells are numbers. Text in one (a hand-edited or damaged file) is one line
    naming the file, the column and the epoch, rather than a table that cannot be drawn or summarised."""
    import pandas as pd
    frame = read_results(path)
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        given = values.notna()
        numbers = pd.to_numeric(values, errors="coerce").notna()
        if column in FIRST_COLUMNS or (numbers & given).any():
            bad = frame.index[given & ~numbers]
            if len(bad):
                raise ConfigError(f"{path}: column {column} holds text where numbers belong "
                                  f"({shown(values[bad[0]], 40)} at epoch {frame['epoch'][bad[0]]}); the file was "
                                  f"edited or damaged: repair that cell, or leave the run out (in a sweep folder, "
                                  f"delete that results.csv: the next basinlab sweep trains the run again)")
    return frame


def read_run_data(path: str | Path, name: str | None = None) -> RunData:
    """One run folder; a folder without config.yaml or results.csv is refused in one line."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a basinlab run folder (no config.yaml) nor a sweep folder (no .sweep/)")
    results = path / "results.csv"
    if not results.is_file() or results.stat().st_size == 0:
        raise ConfigError(f"{path} has no results yet (results.csv is missing or empty): nothing to report")
    config = read_yaml_mapping(path / "config.yaml", what="run config")  # safe_load, size and alias limits
    return RunData(name or path.name, path, config, read_history(results), read_steps(path / "steps.csv"),
                   lowrank_means(path / "lowrank.csv"), read_env(path / "env.yaml"),
                   read_sharpness_steps(path / SHARPNESS_CSV), delay_fractions(path / "delays.csv"))


def read_sharpness_steps(path: Path) -> pd.DataFrame | None:
    """A run's sharpness-steps.csv: None where the run has none or no measurement yet. The file is written
    atomically, so a damaged one (no table, a column missing, text where numbers belong) was edited: one line."""
    import pandas as pd
    if not path.is_file():
        return None
    damaged = ("; the file was edited or damaged: repair it, or delete it to report the run without its "
               "sharpness figure")
    try:
        frame = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{path} cannot be read as a table ({shown(str(exc), 80)}){damaged}") from None
    missing = [column for column in SHARPNESS_NEEDED if column not in frame.columns]
    if missing:
        raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)} that --log-sharpness-every-steps "
                          f"writes{damaged}")
    for column in (c for c in SHARPNESS_NUMBERS if c in frame.columns):
        numbers = pd.to_numeric(frame[column], errors="coerce")
        bad = frame.index[frame[column].notna() & numbers.isna()]
        if len(bad):
            raise ConfigError(f"{path}: column {column} holds text where numbers belong "
                              f"({shown(frame[column][bad[0]], 40)} in row {bad[0] + 1}){damaged}")
        frame[column] = numbers.astype(float)
    return frame if len(frame) else None


def last_edge_ratio(sharpness: pd.DataFrame | None) -> float | None:
    """The last measured lambda_max / threshold; for Adam or lr groups, whose edge bounds the preconditioned
    sharpness (their lambda_max / threshold is blank), the preconditioned one / threshold. None without measurements."""
    if sharpness is None:
        return None
    for column in ("lambda_max_over_threshold", "preconditioned_over_threshold"):
        if column in sharpness and sharpness[column].notna().any():
            return float(sharpness[column].dropna().iloc[-1])
    return None


def read_env(path: Path) -> dict:
    """env.yaml ({} where a run has none); its `effective` must be a mapping (the page shows its values)."""
    if not path.is_file():
        return {}
    env = read_yaml_mapping(path, what="run environment")
    effective = env.get("effective")
    if effective is not None and not isinstance(effective, dict):
        raise ConfigError(f"{path}: effective must map option names to the values the run used, got "
                          f"{type(effective).__name__}; the file was edited or damaged: repair or delete that entry")
    return env


def lowrank_means(path: Path) -> pd.DataFrame | None:
    """Per epoch: the mean over conv layers of each unfolding pair's S (knowledge gain) and rank."""
    import pandas as pd
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None
    needed = {"epoch", *(c for pair in LOWRANK_MEANS.values() for c in pair)}
    if not needed <= set(frame.columns) or frame.empty:
        return None
    if "kind" in frame.columns:
        frame = frame[frame["kind"] == "conv"]
    means = {name: (frame[a] + frame[b]) / 2 for name, (a, b) in LOWRANK_MEANS.items()}
    return pd.DataFrame({"epoch": frame["epoch"], **means}).groupby("epoch", as_index=False).mean()


def delay_fractions(path: Path) -> pd.DataFrame | None:
    """A real run's delays.csv as (epoch, delay, fraction of that epoch's applied gradients); None where there is
    none or it cannot be read (the figure is left out, the rest of the run reported)."""
    import pandas as pd
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, usecols=["epoch", "delay", "status"])
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return None
    frame = frame[frame["status"] != "dropped"]
    if frame.empty or not all(pd.api.types.is_numeric_dtype(frame[c]) for c in ("epoch", "delay")):
        return None
    counts = frame.groupby(["epoch", "delay"]).size().rename("count").reset_index()
    counts["fraction"] = counts["count"] / counts.groupby("epoch")["count"].transform("sum")
    return counts[["epoch", "delay", "fraction"]]


def unique_names(paths: list[Path]) -> list[str]:
    """Folder names, prefixed by as many parent folders as it takes to tell them apart."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > max(len(p.resolve().parts) for p in paths):
            return names
        depth += 1


def differing_options(configs: dict[str, dict]) -> list[str]:
    """The (flattened) options whose value is not the same in every run, in the order first seen.

    An option missing from some configs differs (it was added in a later basinlab version or by a method).
    With one run nothing differs."""
    flat = {name: flatten(config) for name, config in configs.items()}
    keys = list(dict.fromkeys(key for config in flat.values() for key in config))
    missing = object()
    return [key for key in keys if key.split(".")[0] not in NOT_COMPARED
            and len({repr(config.get(key, missing)) for config in flat.values()}) > 1]


def final_metrics(history: pd.DataFrame) -> dict:
    """Final and best validation top-1 and loss, the epoch of the best top-1, epochs run, final training loss."""
    if history.empty:
        return {"epochs run": 0}
    best = int(history["val_acc1"].idxmax()) if history["val_acc1"].notna().any() else None
    return {"final val top-1 %": float(history["val_acc1"].iloc[-1]),
            "best val top-1 %": math.nan if best is None else float(history["val_acc1"].loc[best]),
            "final val loss": float(history["val_loss"].iloc[-1]),
            "best val loss": float(history["val_loss"].min()),
            "best epoch": None if best is None else int(history["epoch"].loc[best]),
            "epochs run": int(history["epoch"].iloc[-1]),
            "final train loss": float(history["train_loss"].iloc[-1])}


RESULT_COLUMNS = ("final val top-1 %", "best val top-1 %", "final val loss", "best val loss", "best epoch",
                  "epochs run", "final train loss")
EDGE_COLUMN = "last lambda_max / threshold"  # where any run measured the edge of stability live


def result_columns(runs: list[RunData]) -> tuple[str, ...]:
    """The table's result columns: RESULT_COLUMNS, and EDGE_COLUMN where any run has sharpness-steps.csv."""
    return RESULT_COLUMNS + ((EDGE_COLUMN,) if any(run.sharpness is not None for run in runs) else ())


def run_results(run: RunData) -> dict:
    """final_metrics of the run's results.csv and, where it measured its sharpness live, the last ratio to
    the edge."""
    return {**final_metrics(run.history), EDGE_COLUMN: last_edge_ratio(run.sharpness)}


def run_table(runs: list[RunData]) -> pd.DataFrame:
    """One row per run: name, its results, then the options that differ between the runs, each the value the
    run used (with the configured one where that differs: "0.0105 (configured 0.1)"). Cells keep their Python
    values (an int stays an int, a float the float stored)."""
    import pandas as pd
    columns, results = option_columns(runs), result_columns(runs)
    rows = []
    for run in runs:
        options, measured = run_options(run), run_results(run)
        rows.append({"run": run.name, **{key: measured.get(key) for key in results},
                     **{key: options[key].value() if key in options else None for key in columns}})
    return pd.DataFrame(rows, dtype=object)


def seed_band(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Per x (epoch): the median, min and max of y over the frames (one per seed) that have a value there, and
    their number n. Frames hold columns x and y."""
    import pandas as pd
    points = pd.concat([frame[["x", "y"]].dropna() for frame in frames], ignore_index=True)
    grouped = points.groupby("x", sort=True)["y"]
    band = pd.DataFrame({"median": grouped.median(), "min": grouped.min(), "max": grouped.max(),
                         "n": grouped.count()})
    return band.reset_index()
