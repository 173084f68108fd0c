"""Online Normalization's reduced experiment, from its sweeps' finished runs.

    python3 experiments/online-norm/analyze.py [experiments/online-norm/runs] [--out experiments/online-norm]

Writes, from SWEEP (reduced.yaml's runs) and the folders beside it:
- OUT/table.csv and .md: per norm mode, the runs finished of those asked and the ones that diverged (with the
  error their sweep recorded), the median, min and max over the seeds of the final and of the best validation
  top-1 and of the final validation loss, and the gap to batch norm at the best epoch beside the paper's;
- OUT/paired.csv and .md: each norm's final top-1 minus batch norm's on the same seed (the seeds share data
  order, augmentation and initialisation up to the norm layers);
- OUT/checks.csv and .md: reduced-checks.yaml's runs (SWEEP/../runs-checks) beside batch norm's seed 0 on the
  same schedule;
- OUT/threads.csv and .md: the runs of runs-threads/ (trained with 2 CPU threads) beside the same seed with 1;
- OUT/table.png: every seed's final top-1 per norm mode, the median marked, a diverged mode written in.
The runs finished so far are what is read: n says how many seeds.
"""
from __future__ import annotations

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
    paired_difference,
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


def diverged(sweep: Path, norm: str) -> list[str]:
    """The error lines the sweep recorded for this norm's failed runs."""
    spec = stored_spec(sweep)
    states = [run_state(sweep, run.name) for run in spec.runs if run.values.get("norm_mode") == norm]
    return [state.get("error", "") for state in states if state["status"] == "failed"]


def table(sweep: Path, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per norm mode: n finished, n diverged, medians and ranges, gap to batch norm (best epoch)."""
    asked = len(stored_spec(sweep).seeds)
    batch = runs[runs["norm-mode"] == "batch"]["best_val_acc1"].median()
    rows = []
    for norm in NORMS:
        mine = runs[runs["norm-mode"] == norm] if len(runs) else runs
        failed = diverged(sweep, norm)
        row = {"norm": norm, "n": len(mine), "asked": asked, "diverged": len(failed),
               "error": failed[0] if failed else ""}
        for column in COLUMNS:
            values = mine[column] if len(mine) else pd.Series(dtype=float)
            row |= {f"{column}_median": values.median(), f"{column}_low": values.min(),
                    f"{column}_high": values.max()}
        row["gap_best_here"] = row["best_val_acc1_median"] - batch
        row["paper_best"] = PAPER_BEST.get(norm, float("nan"))
        row["gap_best_paper"] = row["paper_best"] - PAPER_BEST["batch"]
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(rows: pd.DataFrame) -> str:
    lines = ["| norm | n | " + " | ".join(f"{label} (median, min-max)" for label in COLUMNS.values())
             + " | paper, best top-1 % | gap to batch, best epoch: here (median) / paper |",
             "|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for _, r in rows.iterrows():
        n = f"{int(r['n'])}/{int(r['asked'])}"
        paper = f"{r['paper_best']:.1f}" if pd.notna(r["paper_best"]) else "(not reported)"
        if r["n"] == 0:
            what = f"diverged ({r['error']})" if r["diverged"] else "not run yet"
            lines.append(f"| {r['norm']} | {n} | {what} | | | {paper} | |")
            continue
        digits = {column: 3 if "loss" in column else 2 for column in COLUMNS}
        cells = [f"{r[f'{c}_median']:.{d}f} ({r[f'{c}_low']:.{d}f}-{r[f'{c}_high']:.{d}f})" for c, d in digits.items()]
        gap = f"{r['gap_best_here']:+.2f} / {r['gap_best_paper']:+.1f}" if r["norm"] != "batch" else "0 / 0"
        lines.append(f"| {r['norm']} | {n} | " + " | ".join(cells) + f" | {paper} | {gap} |")
    return "\n".join(lines) + "\n"


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Per norm: its final top-1 minus batch norm's on each seed both finished."""
    wide = runs.pivot_table(index="seed", columns="norm-mode", values="final_val_acc1")
    rows = []
    for norm in NORMS[1:]:
        if norm in wide.columns and "batch" in wide.columns:
            diff = (wide[norm] - wide["batch"]).dropna()
            if len(diff):
                rows.append({"norm": norm, "minus": "batch", **paired_difference(diff)})
    return pd.DataFrame(rows)


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
    lines = ["| run | threads | final val top-1 % | best | same seed, sweep's run: threads | final | best | "
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
        elif rows.set_index("norm").loc[norm, "diverged"]:
            ax.text(i, 0.5, "diverged\n(every seed)", ha="center", va="center", transform=ax.get_xaxis_transform())
    ax.set_xticks(range(len(NORMS)), NORMS)
    ax.set_xlabel("norm mode")
    ax.set_ylabel("final validation top-1 % (each seed; bar: median)")
    save_png(fig, path)


def main() -> None:
    args = analysis_arguments(__doc__, HERE)
    runs = run_rows(stored_spec(args.sweep), args.sweep)
    rows = table(args.sweep, runs)
    print(write_table(args.out, "table", rows, markdown(rows)))
    differences = paired(runs)
    print(write_table(args.out, "paired", differences, paired_markdown(differences)))
    checked = checks(args.sweep, runs)
    print(write_table(args.out, "checks", checked, checks_markdown(checked)))
    threaded = threads(args.sweep)
    print(write_table(args.out, "threads", threaded, threads_markdown(threaded)))
    plot(rows, runs, args.out / "table.png")
    print(cost_line(args.sweep, runs))


if __name__ == "__main__":
    main()
