"""The edge-of-stability runs, summarised: how sharpness meets 2/lr (the threshold column of each run).

    python3 experiments/edge-of-stability/analyze.py [RUNS] [--out DIR]

For each run of RUNS (default experiments/edge-of-stability/runs) it reads sharpness-steps.csv and results.csv
and writes OUT/summary.csv and .md (default OUT = this folder) with, per run:
  lambda_start      lambda_max before the first step;
  reach_step        the first measured step with lambda_max >= 0.9 x threshold (blank: never);
  hover_median      the median of lambda_max / threshold over the measurements from reach_step on;
  hover_min, hover_max  their range;
  hover_batch       the median of batch_sharpness / threshold from reach_step on (at the edge the gradient
                    turns into the top eigenvector: this ratio jumps from about 0 to about 1 in gradient descent);
  before_batch      the same median before reach_step (the whole run where it never reaches the edge);
  late_lambda       the median of lambda_max / threshold over the second half of the measurements (every run,
                    edge reached or not);
  final_loss, final_acc1  training loss and top-1 (on the training set, as measured during the last epoch);
  loss_rises        the share of steps (epochs of one full-batch step) whose training loss is above the step
                    before's: 0 for monotone descent, well above it at the edge (non-monotone, Cohen et al.);
and OUT/sharpness.png: lambda_max (and the batch sharpness of mini-batch runs) against steps, each run's 2/lr
dashed in its colour, with the training loss below (Cohen et al.'s Figure 1 layout).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from basinlab.utils.figures import new_figure, save_png  # noqa: E402

HERE = Path(__file__).parent
REACHED = 0.9  # lambda_max within 10% of the threshold counts as having reached the edge


def run_row(folder: Path) -> dict:
    steps = pd.read_csv(folder / "sharpness-steps.csv")
    results = pd.read_csv(folder / "results.csv")
    ratio = steps["lambda_max"] / steps["threshold"]
    reached = steps.index[ratio >= REACHED]
    after = slice(reached[0], None) if len(reached) else slice(0, 0)
    batch_ratio = steps["batch_sharpness"] / steps["threshold"]
    late = slice(len(steps) // 2, None)
    losses = results["train_loss"].to_numpy()
    return {"run": folder.name, "lr": steps["lr"].iloc[0], "threshold": steps["threshold"].iloc[0],
            "steps": int(steps["step"].iloc[-1]), "lambda_start": steps["lambda_max"].iloc[0],
            "reach_step": int(steps["step"].iloc[reached[0]]) if len(reached) else np.nan,
            "hover_median": ratio.iloc[after].median(), "hover_min": ratio.iloc[after].min(),
            "hover_max": ratio.iloc[after].max(), "hover_batch": batch_ratio.iloc[after].median(),
            "before_batch": batch_ratio.iloc[:reached[0] if len(reached) else None].median(),
            "late_lambda": ratio.iloc[late].median(),
            "lambda_final": steps["lambda_max"].iloc[-1], "final_loss": losses[-1],
            "final_acc1": results["train_acc1"].iloc[-1],
            "loss_rises": float(np.mean(np.diff(losses) > 0)) if len(losses) > 1 else np.nan}


def markdown(frame: pd.DataFrame) -> str:
    lines = ["| run | lr | 2/lr | steps | lambda_max at start | reaches 0.9 x 2/lr at step | lambda_max / (2/lr) "
             "from then on (median, range) | batch sharpness / (2/lr) from then on | late lambda_max / (2/lr) | "
             "final train loss | final train top-1 % | loss rises |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for row in frame.itertuples():
        reach = "never" if np.isnan(row.reach_step) else f"{row.reach_step:.0f}"
        hover = "-" if np.isnan(row.hover_median) else \
            f"{row.hover_median:.3f} ({row.hover_min:.3f}-{row.hover_max:.3f})"
        batch = "-" if np.isnan(row.hover_batch) else f"{row.hover_batch:.3f}"
        lines.append(f"| {row.run} | {row.lr:.4g} | {row.threshold:.4g} | {row.steps} | {row.lambda_start:.1f} | "
                     f"{reach} | {hover} | {batch} | {row.late_lambda:.3f} | {row.final_loss:.4f} | "
                     f"{row.final_acc1:.2f} | {row.loss_rises:.2f} |")
    return "\n".join(lines) + "\n"


def plot(folders: list[Path], path: Path) -> None:
    fig, (top, bottom) = new_figure(2, 1, figsize=(8, 7), sharex=True)
    for index, folder in enumerate(folders):
        colour = f"C{index}"
        steps = pd.read_csv(folder / "sharpness-steps.csv")
        results = pd.read_csv(folder / "results.csv")
        top.plot(steps["step"], steps["lambda_max"], color=colour, marker=".", markersize=3, label=folder.name)
        if results["epoch"].size and len(steps) and steps["step"].iloc[-1] > results["epoch"].iloc[-1]:
            top.plot(steps["step"], steps["batch_sharpness"], color=colour, linestyle=":", linewidth=1,
                     label=f"{folder.name}: batch sharpness")
        top.axhline(steps["threshold"].iloc[0], color=colour, linestyle="--", linewidth=0.8)
        per_epoch = steps["step"].iloc[-1] / max(results["epoch"].iloc[-1], 1)
        bottom.plot(results["epoch"] * per_epoch, results["train_loss"], color=colour, linewidth=0.8)
    top.set_ylabel("lambda_max (dashed: 2/lr)")
    top.legend(fontsize=7)
    top.grid(alpha=0.3)
    bottom.set_yscale("log")
    bottom.set_ylabel("training loss")
    bottom.set_xlabel("optimizer step")
    bottom.grid(alpha=0.3)
    save_png(fig, path, dpi=80)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", default=str(HERE / "runs"))
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    folders = sorted(p for p in Path(args.runs).iterdir() if (p / "sharpness-steps.csv").is_file())
    if not folders:
        print(f"no run with sharpness-steps.csv in {args.runs}", file=sys.stderr)
        return 2
    frame = pd.DataFrame([run_row(folder) for folder in folders])
    out = Path(args.out)
    frame.to_csv(out / "summary.csv", index=False)
    (out / "summary.md").write_text(markdown(frame))
    plot(folders, out / "sharpness.png")
    print(markdown(frame))
    print(f"wrote {out / 'summary.csv'}, summary.md and sharpness.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
