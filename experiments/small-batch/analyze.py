"""Each norm's final accuracy at batch 2, 8 and 128, from the small-batch sweep's finished runs.

    python3 experiments/small-batch/analyze.py [experiments/small-batch/runs] [--out experiments/small-batch]

Writes OUT/table.csv (per norm and batch: n, median, min and max of the final validation top-1 over the seeds, and
the median's drop from batch 128), OUT/table.md (the same as a norm x batch table; "–" where no run has
finished), OUT/table.png (median and min-max per norm against the batch, log x), and OUT/paired.csv / .md: each
norm's difference from batch norm at the same batch and seed (FRN's and EvoNorm-S0's from group norm too; the
seeds share data order and augmentation), its median and range, and whether every seed's difference has one sign.
The runs finished so far are what is read: a sweep still running gives a partial table (n says how many seeds).
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
BATCHES = {"b2": 2, "b8": 8, "b128": 128}
NORMS = ("batch", "online", "group", "frn", "evonorm_s0", "batchrenorm")


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (norm, batch) with finished runs: n, median, min, max of the final top-1; the drop from 128."""
    grouped = runs.groupby(["norm-mode", "variant"])["final_val_acc1"]
    out = grouped.agg(n="size", median="median", low="min", high="max").reset_index()
    out["batch"] = out["variant"].map(BATCHES)
    full = out[out["batch"] == 128].set_index("norm-mode")["median"]
    out["drop_from_128"] = out["median"] - out["norm-mode"].map(full)
    order = {norm: i for i, norm in enumerate(NORMS)}
    return out.sort_values(["norm-mode", "batch"], key=lambda c: c.map(order) if c.name == "norm-mode" else c)


def markdown(rows: pd.DataFrame) -> str:
    lines = ["| norm | " + " | ".join(f"batch {b}" for b in BATCHES.values()) + " |",
             "|---|" + "---|" * len(BATCHES)]
    for norm in NORMS:
        cells = []
        for variant in BATCHES:
            found = rows[(rows["norm-mode"] == norm) & (rows["variant"] == variant)]
            if found.empty:
                cells.append("–")
                continue
            r = found.iloc[0]
            cells.append(f"{r['median']:.2f} ({r['low']:.2f}-{r['high']:.2f}), n={int(r['n'])}")
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# (norm, the norm it is compared with): every norm against batch norm; FRN and EvoNorm-S0 also against group norm,
# the comparison their papers make at small batches
PAIRS = [(norm, "batch") for norm in NORMS[1:]] + [("frn", "group"), ("evonorm_s0", "group")]


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """Per batch and pair: the norm's final top-1 minus the other's on the same seed (the seeds both have)."""
    wide = runs.pivot_table(index=["variant", "seed"], columns="norm-mode", values="final_val_acc1")
    rows = []
    for variant in BATCHES:
        if variant in wide.index.get_level_values(0):
            rows += [{"batch": BATCHES[variant], **row}
                     for row in paired_rows(wide.loc[variant], PAIRS, ("norm", "against"))]
    return pd.DataFrame(rows)


def paired_markdown(rows: pd.DataFrame) -> str:
    lines = ["| batch | norm | minus | per seed (0, 1, 2) | median (range) | every seed one sign |",
             "|---:|---|---|---|---|---|"]
    for _, r in rows.iterrows():
        lines.append(f"| {r['batch']} | {r['norm']} | {r['against']} | {paired_cells(r)} |")
    return "\n".join(lines) + "\n"


def plot(rows: pd.DataFrame, path: Path) -> None:
    fig, ax = new_figure(figsize=(7, 4.5))
    for i, norm in enumerate(NORMS):
        mine = rows[rows["norm-mode"] == norm]
        if mine.empty:
            continue
        ax.errorbar(mine["batch"], mine["median"], yerr=[mine["median"] - mine["low"], mine["high"] - mine["median"]],
                    marker="o", capsize=3, color=f"C{i}", label=norm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(BATCHES.values()), [str(b) for b in BATCHES.values()])
    ax.set_xlabel("batch size (lr scaled linearly from 0.1 at 128)")
    ax.set_ylabel("final validation top-1 % (median, min-max)")
    ax.legend()
    save_png(fig, path)


def main() -> None:
    args = analysis_arguments(__doc__, HERE)
    runs = run_rows(stored_spec(args.sweep), args.sweep)
    rows, differences = table(runs), paired(runs)
    print(write_table(args.out, "table", rows, markdown(rows)))
    print(write_table(args.out, "paired", differences, paired_markdown(differences)))
    plot(rows, args.out / "table.png")
    print(cost_line(args.sweep, runs))


if __name__ == "__main__":
    main()
