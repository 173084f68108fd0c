"""The flip comparison on the airbench94 preset, from the sweep's finished runs.

    python3 experiments/airbench/analyze.py [experiments/airbench/runs] [--out experiments/airbench]

Writes OUT/table.csv and .md (per flip: n, median, min and max over the seeds of the final and of the best
validation top-1, which is test-time augmented, and of the final validation loss), OUT/paired.csv and .md
(alternating minus random and random minus none on the same seed: the seeds share data order and translations;
median, range, and whether every seed's difference has one sign), and OUT/table.png (every seed's final top-1
per flip, the median marked). The runs finished so far are what is read: n says how many seeds.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from basinlab.sweep import stored_spec
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
FLIPS = ("alternating", "random", "none")
PAIRS = (("alternating", "random"), ("random", "none"), ("alternating", "none"))
COLUMNS = {"final_val_acc1": "final top-1 %", "best_val_acc1": "best top-1 %", "final_val_loss": "final val loss"}


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per flip with finished runs: n and the median, min and max of each column over the seeds."""
    rows = []
    for flip in FLIPS:
        mine = runs[runs["variant"] == flip]
        if mine.empty:
            continue
        row = {"flip": flip, "n": len(mine)}
        for column in COLUMNS:
            row |= {f"{column}_median": mine[column].median(), f"{column}_low": mine[column].min(),
                    f"{column}_high": mine[column].max()}
        rows.append(row)
    return pd.DataFrame(rows)


def markdown(rows: pd.DataFrame) -> str:
    lines = ["| flip | n | " + " | ".join(f"{label} (median, min-max)" for label in COLUMNS.values()) + " |",
             "|---|---:|" + "---|" * len(COLUMNS)]
    for _, r in rows.iterrows():
        digits = {column: 3 if "loss" in column else 2 for column in COLUMNS}
        cells = [f"{r[f'{c}_median']:.{d}f} ({r[f'{c}_low']:.{d}f}-{r[f'{c}_high']:.{d}f})" for c, d in digits.items()]
        lines.append(f"| {r['flip']} | {int(r['n'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Per pair: the first flip's final top-1 minus the second's on each seed both have."""
    wide = runs.pivot_table(index="seed", columns="variant", values="final_val_acc1")
    return pd.DataFrame(paired_rows(wide, PAIRS, ("flip", "minus")))


def paired_markdown(rows: pd.DataFrame) -> str:
    lines = ["| flip | minus | per seed (0, 1, 2) | median (range) | every seed one sign |", "|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['flip']} | {r['minus']} | {paired_cells(r)} |")
    return "\n".join(lines) + "\n"


def plot(runs: pd.DataFrame, path: Path) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for i, flip in enumerate(FLIPS):
        mine = runs[runs["variant"] == flip]["final_val_acc1"]
        if mine.empty:
            continue
        ax.scatter([i] * len(mine), mine, color=f"C{i}", alpha=0.7)
        ax.hlines(mine.median(), i - 0.2, i + 0.2, color=f"C{i}")
    ax.set_xticks(range(len(FLIPS)), FLIPS)
    ax.set_xlabel("horizontal flip")
    ax.set_ylabel("final validation top-1 %, TTA (each seed; bar: median)")
    save_png(fig, path)


def main() -> None:
    args = analysis_arguments(__doc__, HERE)
    runs = run_rows(stored_spec(args.sweep), args.sweep)
    rows, differences = table(runs), paired(runs)
    print(write_table(args.out, "table", rows, markdown(rows)))
    print(write_table(args.out, "paired", differences, paired_markdown(differences)))
    plot(runs, args.out / "table.png")
    print(cost_line(args.sweep, runs))


if __name__ == "__main__":
    main()
