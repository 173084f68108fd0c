"""A sweep's tables, as the papers report them: per setting, the median (and mean, std, min, max) over seeds.

    DIR/summary.csv   one row per setting: its variant and grid values, n, and the statistics of the final and of
                      the best val_acc1 and val_loss of its finished runs
    DIR/summary.md    the same as a Markdown table (median, with min-max)
    DIR/summary.png   every seed's final val top-1 per setting, the median marked

Recomputed from the run folders at any time (`basinlab sweep --summarize DIR`); only finished runs count. A run
recorded as done whose results.csv is gone (`missing`) is left out and named in one warning line; a results.csv
with text in a column of numbers is one line naming the file and the column (exit 2).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from basinlab.errors import ConfigError
from basinlab.records.environment import run_commits
from basinlab.records.report_data import read_history
from basinlab.sweep.spec import SweepSpec
from basinlab.sweep.state import RESULTS, run_state
from basinlab.utils.figures import new_figure, save_png
from basinlab.utils.io import atomic_write_text

STATISTICS = ("median", "mean", "std", "min", "max")
MEASURES = {"final_val_acc1": ("val_acc1", "last"), "best_val_acc1": ("val_acc1", "max"),
            "final_val_loss": ("val_loss", "last"), "best_val_loss": ("val_loss", "min")}


def run_rows(spec: SweepSpec, results_dir: Path) -> pd.DataFrame:
    """One row per finished run: setting, seed, grid values and the measures of its results.csv."""
    rows = []
    for run in spec.runs:
        if run_state(results_dir, run.name)["status"] != "done":
            continue
        path = results_dir / run.name / RESULTS
        history = read_history(path)
        row = {"setting": run.setting, "seed": run.seed, "run": run.name,
               **{key.replace("_", "-"): value for key, value in run.values.items()}}
        for name, (column, how) in MEASURES.items():
            if column not in history or not history[column].notna().any():
                raise ConfigError(f"{path} has no {column} values; the tables need them from every finished run "
                                  f"(repair the file, or delete the run folder and run the sweep again)")
            values = history[column]
            row[name] = float(values.iloc[-1] if how == "last" else getattr(values, how)())
        rows.append(row)
    return pd.DataFrame(rows)


def run_cost(results_dir: Path, runs: pd.DataFrame) -> dict:
    """What `runs` (run_rows' rows) cost and where they ran: how many, their minutes of training and validation
    (results.csv's epoch_time_s and val_time_s), and the commits their env.yaml names (a branch's origin's,
    the start's and each resume's; 7 characters each) — the run time and provenance an experiment's README
    quotes."""
    from basinlab.config import read_yaml_mapping
    minutes, commits = 0.0, set()
    for run in runs["run"]:
        results = read_history(results_dir / run / RESULTS)
        minutes += float(results[["epoch_time_s", "val_time_s"]].to_numpy().sum()) / 60
        env = read_yaml_mapping(results_dir / run / "env.yaml", what="run environment")
        commits.update(commit[:7] for commit in run_commits(env))
    return {"runs": len(runs), "minutes": minutes, "commits": sorted(commits)}


def paired_difference(differences: pd.Series) -> dict:
    """One setting minus another on the same seeds (`differences`, one per seed): n, median, low, high, each seed's
    difference as text, and whether they all have one sign (the rule an experiment's README claims an effect by)."""
    return {"n": len(differences), "median": differences.median(), "low": differences.min(),
            "high": differences.max(), "per_seed": " ".join(f"{d:+.2f}" for d in differences),
            "one_sign": bool((differences > 0).all() or (differences < 0).all())}


def paired_rows(wide: pd.DataFrame, pairs, names: tuple[str, str]) -> list[dict]:
    """For each (first, second) of `pairs` that `wide` (one row per seed, one column of final top-1 per setting)
    has: first minus second on the seeds both finished, as `names[0]`: first, `names[1]`: second and
    paired_difference's cells; a pair with no such seed gives no row."""
    rows = []
    for first, second in pairs:
        if first in wide.columns and second in wide.columns:
            differences = (wide[first] - wide[second]).dropna()
            if len(differences):
                rows.append({names[0]: first, names[1]: second, **paired_difference(differences)})
    return rows


def paired_cells(row) -> str:
    """'+0.22 +0.42 | +0.42 (+0.22 to +0.56) | yes': a paired_difference row's cells in a Markdown table."""
    return (f"{row['per_seed']} | {row['median']:+.2f} ({row['low']:+.2f} to {row['high']:+.2f}) | "
            f"{'yes' if row['one_sign'] else 'no'}")


def analysis_arguments(description: str, here: Path):
    """An experiment's analyze.py arguments: the sweep folder (default HERE/runs) and --out (default HERE)."""
    import argparse
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("sweep", type=Path, nargs="?", default=here / "runs")
    parser.add_argument("--out", type=Path, default=here)
    return parser.parse_args()


def write_table(out: Path, name: str, table: pd.DataFrame, text: str) -> str:
    """OUT/NAME.csv and OUT/NAME.md (`text`, its Markdown); returns the Markdown to print."""
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(text)
    return text


def cost_line(results_dir: Path, runs: pd.DataFrame) -> str:
    spent = run_cost(results_dir, runs)
    return f"{spent['runs']} runs, {spent['minutes']:.0f} minutes of run time, at {', '.join(spent['commits'])}"


def missing_runs(spec: SweepSpec, results_dir: Path) -> list[str]:
    """The runs recorded as done whose results.csv is gone (deleted or emptied)."""
    return [run.name for run in spec.runs if run_state(results_dir, run.name)["status"] == "missing"]


def missing_note(names: list[str], total: int, results_dir: Path) -> str:
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"runs of {results_dir} recorded as done whose results.csv is gone ({len(names)} of {total}): {listed}; "
            f"left out here (basinlab sweep SPEC.yaml --results-dir {results_dir} trains them again)")


def summarize(spec: SweepSpec, results_dir: Path, warn=None) -> pd.DataFrame:
    """Write summary.csv, summary.md and summary.png; returns the summary table. `warn` gets one line naming
    the runs left out because their results are gone."""
    missing = missing_runs(spec, results_dir)
    if missing and warn is not None:
        warn(missing_note(missing, len(spec.runs), results_dir))
    runs = run_rows(spec, results_dir)
    table = summary_table(spec, runs)
    atomic_write_text(results_dir / "summary.csv", table.to_csv(index=False))
    atomic_write_text(results_dir / "summary.md", markdown(table, spec.columns(), len(spec.seeds)))
    if len(runs):
        plot(runs, list(table["setting"]), results_dir / "summary.png")
    return table


def summary_table(spec: SweepSpec, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (in the spec's order): its values, n, and each measure's statistics over seeds."""
    settings = list(dict.fromkeys(run.setting for run in spec.runs))
    rows = []
    for setting in settings:
        mine = runs[runs["setting"] == setting] if len(runs) else runs
        planned = next(run for run in spec.runs if run.setting == setting)
        row = {"setting": setting, **{key.replace("_", "-"): value for key, value in planned.values.items()},
               "n": len(mine)}
        for measure in MEASURES:
            values = mine[measure] if len(mine) else pd.Series(dtype=float)
            for stat in STATISTICS:
                row[f"{measure}_{stat}"] = float(getattr(values, stat)()) if len(values) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame, grid_columns: list[str], seeds: int) -> str:
    """The papers' table: median over seeds, with min-max, of the final and best validation top-1."""
    head = [*(grid_columns or ["setting"]), "n", "final val top-1 % (median, min-max)",
            "best val top-1 % (median)", "final val loss (median)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in table.iterrows():
        cells = [str(row[c]) for c in (grid_columns or ["setting"])] + [f"{row['n']}/{seeds}"]
        if row["n"]:
            cells += [f"{row['final_val_acc1_median']:.2f} ({row['final_val_acc1_min']:.2f}-"
                      f"{row['final_val_acc1_max']:.2f})", f"{row['best_val_acc1_median']:.2f}",
                      f"{row['final_val_loss_median']:.4f}"]
        else:
            cells += ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, settings: list[str], path: Path) -> Path:
    fig, ax = new_figure(figsize=(max(5.0, 1.2 * len(settings) + 2), 4))
    empty = []
    for x, setting in enumerate(settings):
        values = runs.loc[runs["setting"] == setting, "final_val_acc1"]
        ax.scatter([x] * len(values), values, color="C0", alpha=0.7, label="runs (one per seed)" if x == 0 else None)
        if len(values):
            ax.hlines(values.median(), x - 0.3, x + 0.3, color="C3", label="median" if x == 0 else None)
        else:
            empty.append(x)
    low, high = ax.get_ylim()
    for x in empty:  # a setting whose every run failed or diverged: say so where its points would be
        ax.text(x, (low + high) / 2, "no finished run\n(failed or diverged)", ha="center", va="center", fontsize=7,
                color="C3", rotation=90)
    ax.set_xticks(range(len(settings)), settings, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final validation top-1 (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    return save_png(fig, path)
