"""Sharpness of every finished run of a flat-minima sweep, beside its accuracy, median per variant.

    python3 experiments/flat-minima/measure.py experiments/flat-minima/runs [--out experiments/flat-minima]

For each run's final weights (last.pt), on the first --limit training examples without augmentation, in eval
mode (BatchNorm running statistics), float32:
- lambda_max: the Hessian's largest eigenvalue (Lanczos, `basinlab sharpness --measure hessian`);
- keskar_pct: Keskar et al.'s epsilon-sharpness, 100 x (max loss in the box |dw| <= eps (|w| + 1) - loss) /
  (1 + loss), eps 1e-3, 10 L-BFGS-B iterations in the full parameter space (`--measure keskar`);
- noisy_loss: the mean training loss under weight noise, uniform and scaled by each filter's norm (AdaSmoothOut's
  noise, strength --noise), over 5 draws (`basinlab evaluate --noise`), and its rise over the clean loss.
Each run's numbers are kept in RUN/sharpness.csv (rerunning skips measured runs). Writes OUT/sharpness.csv (one
row per run), OUT/sharpness.md (medians per variant) and OUT/sharpness.png (final val top-1 against lambda_max).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import pandas as pd

from basinlab.analysis.measure import MeasureOptions, measure_checkpoint
from basinlab.api import evaluate_checkpoint
from basinlab.sweep import status, stored_spec
from basinlab.utils.figures import new_figure, save_png

COLUMNS = ["lambda_max", "keskar_pct", "clean_loss", "noisy_loss", "noise_rise"]


def measure_run(run: Path, limit: int, noise: float) -> dict:
    cached = run / "sharpness.csv"
    if cached.is_file():
        return pd.read_csv(cached).iloc[0].to_dict()
    frame = measure_checkpoint(run, ["hessian", "keskar"], split="train", limit=limit, which="last", device="cpu",
                               options=MeasureOptions(epsilons=(1e-3,)), report=lambda line: None)
    value = dict(zip(frame["quantity"], frame["value"]))
    clean = evaluate_checkpoint(run / "last.pt", split="train", limit=limit, device="cpu")
    noisy = evaluate_checkpoint(run / "last.pt", split="train", limit=limit, device="cpu", noise=noise,
                                noise_adapt="filter", noise_samples=5)
    row = {"lambda_max": value["lambda_1"], "keskar_pct": value["epsilon_sharpness_pct"],
           "clean_loss": clean["loss"], "noisy_loss": noisy["loss"], "noise_rise": noisy["loss"] - clean["loss"]}
    pd.DataFrame([row]).to_csv(cached, index=False)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep's results folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--limit", type=int, default=1000, help="training examples measured (stratified)")
    parser.add_argument("--noise", type=float, default=0.2, help="each filter moved by this fraction of its norm")
    args = parser.parse_args()
    spec = stored_spec(args.sweep)
    done = {name for name, state in status(args.sweep) if state["status"] == "done"}
    rows = []
    for run in spec.runs:
        if run.name in done:
            history = pd.read_csv(args.sweep / run.name / "results.csv")
            rows.append({"variant": run.values.get("variant", run.setting), "seed": run.seed, "run": run.name,
                         "final_val_acc1": history["val_acc1"].iloc[-1],
                         "final_train_loss": history["train_loss"].iloc[-1],
                         **measure_run(args.sweep / run.name, args.limit, args.noise)})
            print(f"{run.name}: " + ", ".join(f"{k} {rows[-1][k]:.4g}" for k in ["final_val_acc1", *COLUMNS]))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "sharpness.csv", index=False)
    order = list(dict.fromkeys(table["variant"]))
    medians = table.groupby("variant", sort=False)[["final_val_acc1", *COLUMNS]].median().loc[order]
    counts = table.groupby("variant", sort=False).size().loc[order]
    lines = ["| variant | n | final val top-1 % | lambda_max | Keskar eps-sharpness % | train loss | "
             f"train loss under {args.noise:g} filter noise | rise |", "|---|" + "---:|" * 7]
    for name, row in medians.iterrows():
        lines.append(f"| {name} | {counts[name]} | {row['final_val_acc1']:.2f} | {row['lambda_max']:.3g} | "
                     f"{row['keskar_pct']:.3g} | {row['clean_loss']:.4f} | {row['noisy_loss']:.4f} | "
                     f"{row['noise_rise']:.4f} |")
    (args.out / "sharpness.md").write_text("Medians over seeds.\n\n" + "\n".join(lines) + "\n")
    fig, ax = new_figure(figsize=(7, 4.5))
    colours = matplotlib.colormaps["tab20"]  # one colour per variant up to 20
    for k, name in enumerate(order):
        mine = table[table["variant"] == name]
        ax.scatter(mine["lambda_max"], mine["final_val_acc1"], color=colours(k % 20), label=name,
                   marker="o" if name.startswith("sb") else "s")
    ax.set_xscale("log")
    ax.set_xlabel("lambda_max of the training loss (final weights)")
    ax.set_ylabel("final validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    save_png(fig, args.out / "sharpness.png")
    print(f"wrote {args.out / 'sharpness.csv'}, sharpness.md, sharpness.png")


if __name__ == "__main__":
    main()
