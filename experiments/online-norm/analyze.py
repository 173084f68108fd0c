"""Online Normalization's reduced experiment, from its sweeps' finished runs.

    python3 experiments/online-norm/analyze.py [experiments/online-norm/runs] [--out experiments/online-norm]

Writes, from SWEEP (reduced.yaml's runs) and the folders beside it:
- OUT/table.csv and .md: per norm mode, the runs finished of those asked, the ones that diverged (exit 3, with
  the error their sweep recorded) and any that failed otherwise, the median, min and max over the seeds of the
  final and of the best validation top-1 and of the final validation loss, and the best epoch of the median
  curve over the seeds (the paper's statistic) with its gap to batch norm's beside the paper's;
- OUT/paired.csv and .md: each norm's final top-1 minus batch norm's on the same seed (the seeds share data
  order, augmentation and initialisation up to the norm layers);
- OUT/rerun-checks.csv and .md: reduced-checks.yaml's runs (SWEEP/../runs-checks) beside batch norm's seed 0 on the
  same schedule;
- OUT/threads.csv and .md: the runs of runs-threads/ (trained with 2 CPU threads) beside the same seed with 1;
- OUT/table.png: every seed's final top-1 per norm mode, the median marked, a diverged mode written in.
The runs finished so far are what is read: n says how many seeds; a table with no rows is not written.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from basinlab.config import read_yaml_mapping
from basinlab.records.report_data import read_history
from basinlab.sweep import stored_spec
from basinlab.sweep.state import run_state
from basinlab.sweep.summary import (
    analysis_arguments,
    cost_line,
    paired_cells,
    paired_rows,
    run_rows,
    write_table,
)
from basinlab.utils.figures import new_figure, save_png

HERE = Path(__file__).resolve().parent
NORMS = ("batch", "online", "instance", "group", "layer", "none")
# Quoted, not measured: the best epoch of the median of 5 runs, ResNet-20 on CIFAR-10, 250 epochs (the
# Online Normalization repository's reproducibility notes, github.com/Cerebras/online-normalization).
PAPER_BEST = {"online": 92.3, "batch": 92.2, "instance": 90.4, "group": 90.3, "layer": 87.4}
COLUMNS = {"final_val_acc1": "final top-1 %", "best_val_acc1": "best top-1 %", "final_val_loss": "final val loss"}


def failures(spec, sweep: Path, norm: str) -> tuple[list[str], int]:
    """(the error lines of this norm's diverged runs, how many failed otherwise): a non-finite loss is exit 3;
    any other failure (killed, disk full) is not a divergence."""
    states = [run_state(sweep, run.name) for run in spec.runs if run.values.get("norm_mode") == norm]
    failed = [state for state in states if state["status"] == "failed"]
    return [state.get("error", "") for state in failed if state.get("exit") == 3], sum(
        state.get("exit") != 3 for state in failed)


def where_it_diverged(error: str) -> str:
    """'epoch 1, step 4 of 78' from the error line a diverged run's sweep recorded (the line itself otherwise)."""
    found = re.search(r"non-finite loss \(\w+\) at (epoch \d+, step \d+ of \d+)", error)
    return found.group(1) if found else error


def best_of_median_curve(sweep: Path, runs: pd.DataFrame) -> float:
    """The paper's statistic: the best epoch of the per-epoch median over the seeds of validation top-1."""
    if not len(runs):
        return float("nan")
    curves = pd.concat([read_history(sweep / run / "results.csv").set_index("epoch")["val_acc1"]
                        for run in runs["run"]], axis=1)
    return float(curves.median(axis=1).max())


def table(sweep: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per norm mode: finished, diverged and otherwise failed runs; medians and ranges; the gap to batch
    norm at the best epoch of the median curve, here and in the paper."""
    spec = stored_spec(sweep)  # read once: every norm's failures come from it
    asked = len(spec.seeds)
    by_norm = {norm: runs[runs["norm-mode"] == norm] if len(runs) else runs for norm in NORMS}
    batch = best_of_median_curve(sweep, by_norm["batch"])
    rows = []
    for norm, mine in by_norm.items():
        diverged, failed = failures(spec, sweep, norm)
        row = {"norm": norm, "n": len(mine), "asked": asked, "diverged": len(diverged), "failed": failed,
               "diverged_at": "; ".join(where_it_diverged(error) for error in diverged)}
        for column in COLUMNS:
            values = mine[column] if len(mine) else pd.Series(dtype=float)
            row |= {f"{column}_median": values.median(), f"{column}_low": values.min(),
                    f"{column}_high": values.max()}
        row["best_of_median_curve"] = best_of_median_curve(sweep, mine)
        row["gap_best_here"] = row["best_of_median_curve"] - batch
        row["paper_best"] = PAPER_BEST.get(norm, float("nan"))
        row["gap_best_paper"] = row["paper_best"] - PAPER_BEST["batch"]
        rows.append(row)
    return pd.DataFrame(rows)


def count_cell(r) -> str:
    """'3/3', '2/3, 1 diverged', '0/3, 3 diverged, ...'."""
    cell = f"{int(r['n'])}/{int(r['asked'])}"
    if r["diverged"]:
        cell += f", {int(r['diverged'])} diverged"
    if r["failed"]:
        cell += f", {int(r['failed'])} failed otherwise"
    return cell


def markdown(rows: pd.DataFrame) -> str:
    lines = ["| norm | n | " + " | ".join(f"{label} (median, min-max)" for label in COLUMNS.values())
             + " | best epoch of the median curve | paper (the same) | gap to batch: here / paper |",
             "|---|---|" + "---|" * (len(COLUMNS) + 3)]
    for _, r in rows.iterrows():
        paper = f"{r['paper_best']:.1f}" if pd.notna(r["paper_best"]) else "(not reported)"
        if r["n"] == 0:
            what = (f"diverged, every seed (non-finite loss at {r['diverged_at']})" if r["diverged"] == r["asked"]
                    else "no finished run")
            lines.append(f"| {r['norm']} | {count_cell(r)} | {what} | | | | {paper} | |")
            continue
        digits = {column: 3 if "loss" in column else 2 for column in COLUMNS}
        cells = [f"{r[f'{c}_median']:.{d}f} ({r[f'{c}_low']:.{d}f}-{r[f'{c}_high']:.{d}f})" for c, d in digits.items()]
        gap = f"{r['gap_best_here']:+.2f} / {r['gap_best_paper']:+.1f}" if r["norm"] != "batch" else "0 / 0"
        lines.append(f"| {r['norm']} | {count_cell(r)} | " + " | ".join(cells)
                     + f" | {r['best_of_median_curve']:.2f} | {paper} | {gap} |")
    return "\n".join(lines) + "\n"


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Per norm: its final top-1 minus batch norm's on each seed both finished."""
    wide = runs.pivot_table(index="seed", columns="norm-mode", values="final_val_acc1")
    return pd.DataFrame(paired_rows(wide, [(norm, "batch") for norm in NORMS[1:]], ("norm", "minus")))


def paired_markdown(rows: pd.DataFrame) -> str:
    lines = ["| norm | minus | per seed | median (range) | every seed one sign |", "|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['norm']} | {r['minus']} | {paired_cells(r)} |")
    return "\n".join(lines) + "\n"


def last_values(folder: Path) -> dict:
    """A run folder's final and best top-1, final train top-1 and the CPU threads it started with."""
    history = read_history(folder / "results.csv")
    env = read_yaml_mapping(folder / "env.yaml", what="run environment")
    return {"final_val_acc1": float(history["val_acc1"].iloc[-1]), "best_val_acc1": float(history["val_acc1"].max()),
            "final_train_acc1": float(history["train_acc1"].iloc[-1]), "epochs": len(history),
            "threads": env.get("threads"), "commit": str(env.get("git_commit"))[:7]}


def checks(sweep: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """reduced-checks.yaml's runs (seed 0 each), each beside batch norm's seed 0 on its schedule: the main
    sweep's for 20 epochs, the checks' own batch-60ep for 60."""
    folder = sweep.parent / "runs-checks"
    if not (folder / ".sweep").is_dir():
        return pd.DataFrame()
    rows = [{"run": run, **last_values(folder / run)} for run in run_rows(stored_spec(folder), folder)["run"]]
    frame = pd.DataFrame(rows)
    batch = runs[(runs["norm-mode"] == "batch") & (runs["seed"] == 0)]["final_val_acc1"]
    by_epochs = {20: float(batch.iloc[0]) if len(batch) else float("nan")}
    by_epochs |= {r["epochs"]: r["final_val_acc1"] for r in rows if r["run"].startswith("batch-")}
    frame["gap_to_batch"] = [r["final_val_acc1"] - by_epochs.get(r["epochs"], float("nan")) for r in rows]
    return frame


def checks_markdown(rows: pd.DataFrame) -> str:
    lines = ["| run (seed 0) | epochs | final val top-1 % | best | final train top-1 % | gap to batch norm, same "
             "schedule (final) |", "|---|---:|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['run']} | {r['epochs']} | {r['final_val_acc1']:.2f} | {r['best_val_acc1']:.2f} | "
                     f"{r['final_train_acc1']:.2f} | {r['gap_to_batch']:+.2f} |")
    return "\n".join(lines) + "\n"


def threads(sweep: Path) -> pd.DataFrame:
    """Each run of runs-threads/ beside the sweep's run of the same norm and seed."""
    rows = []
    for folder in sorted(path for path in (sweep.parent / "runs-threads").glob("*") if path.is_dir()):
        config = read_yaml_mapping(folder / "config.yaml", what="run options")
        twin = sweep / f"norm-mode_{config['norm-mode']}-s{config['seed']}"
        if run_state(sweep, twin.name)["status"] == "done":
            rows.append({"run": folder.name, "twin": twin.name, **last_values(folder),
                         **{f"twin_{k}": v for k, v in last_values(twin).items()}})
    return pd.DataFrame(rows)


def threads_markdown(rows: pd.DataFrame) -> str:
    lines = ["| run | threads at start | final val top-1 % | best | same seed, sweep's run: threads | final | best | "
             "final minus the sweep run's |", "|---|---|---|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['run']} | {r['threads']} | {r['final_val_acc1']:.2f} | {r['best_val_acc1']:.2f} | "
                     f"{r['twin_threads']} | {r['twin_final_val_acc1']:.2f} | {r['twin_best_val_acc1']:.2f} | "
                     f"{r['final_val_acc1'] - r['twin_final_val_acc1']:+.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, runs: pd.DataFrame, path: Path) -> None:
    fig, ax = new_figure(figsize=(7, 4))
    for i, norm in enumerate(NORMS):
        mine = runs[runs["norm-mode"] == norm]["final_val_acc1"] if len(runs) else pd.Series(dtype=float)
        if len(mine):
            ax.scatter([i] * len(mine), mine, color=f"C{i}", alpha=0.7)
            ax.hlines(mine.median(), i - 0.2, i + 0.2, color=f"C{i}")
        else:
            row = rows.set_index("norm").loc[norm]
            if row["diverged"] == row["asked"]:
                ax.text(i, 0.5, "diverged\n(every seed)", ha="center", va="center",
                        transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(NORMS)), NORMS)
    ax.set_xlim(-0.5, len(NORMS) - 0.5)  # a mode with no point keeps its column (and its "diverged")
    ax.set_xlabel("norm mode")
    ax.set_ylabel("final validation top-1 % (each seed; bar: median)")
    save_png(fig, path)


def main() -> None:
    args = analysis_arguments(__doc__, HERE)
    runs = run_rows(stored_spec(args.sweep), args.sweep)
    rows = table(args.sweep, runs)
    tables = {"table": (rows, markdown), "paired": (paired(runs), paired_markdown),
              "rerun-checks": (checks(args.sweep, runs), checks_markdown), "threads": (threads(args.sweep),
                                                                                      threads_markdown)}
    for name, (frame, to_markdown) in tables.items():
        if len(frame):  # a table with no rows yet writes nothing
            print(write_table(args.out, name, frame, to_markdown(frame)))
    plot(rows, runs, args.out / "table.png")
    print(cost_line(args.sweep, runs))


if __name__ == "__main__":
    main()
