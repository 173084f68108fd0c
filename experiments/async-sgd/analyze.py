"""lr x lambda_max against the linear stability threshold, per variant of an async-sgd sweep.

    python3 experiments/async-sgd/analyze.py experiments/async-sgd/runs [--out experiments/async-sgd]

Reads each finished run's results.csv: `basinlab train --log-sharpness-every k` wrote lambda_max (the training
loss's Hessian, batch statistics, float32) and lr x lambda_max every k epochs, and for a parameter-server run the
threshold for its delay and momentum (stability_threshold, from the characteristic polynomial). A synchronous
run's threshold is the classic 2 / (1 + momentum) (delay 0), computed here with the same function.
Writes OUT/stability.csv (one row per run: final accuracy, the last lr x lambda_max, the threshold, their ratio),
OUT/stability.md (medians per variant) and OUT/stability.png (lr x lambda_max per measured epoch, thresholds
dashed).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

from basinlab.methods.asgd.stability import stability_threshold
from basinlab.sweep import status, stored_spec
from basinlab.utils.figures import new_figure, save_png


def run_row(run: Path) -> tuple[dict, pd.DataFrame]:
    history = pd.read_csv(run / "results.csv")
    measured = history.dropna(subset=["lr_times_lambda_max"])
    if "stability_threshold" in measured and measured["stability_threshold"].notna().any():
        threshold = float(measured["stability_threshold"].dropna().iloc[-1])
    else:  # no server: delay 0 with the run's momentum
        config = yaml.safe_load((run / "config.yaml").read_text())
        threshold = stability_threshold(0, float(config.get("momentum") or 0.0))
    last = measured.iloc[-1]
    return ({"final_val_acc1": history["val_acc1"].iloc[-1], "best_val_acc1": history["val_acc1"].max(),
             "final_train_loss": history["train_loss"].iloc[-1], "lr": last["lr"],
             "lambda_max": last["lambda_max"], "lr_times_lambda_max": last["lr_times_lambda_max"],
             "threshold": threshold, "ratio_to_threshold": last["lr_times_lambda_max"] / threshold}, measured)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep", type=Path, help="the sweep's results folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    spec = stored_spec(args.sweep)
    done = {name for name, state in status(args.sweep) if state["status"] == "done"}
    rows, curves = [], {}
    for run in spec.runs:
        if run.name in done:
            row, curves[run.name] = run_row(args.sweep / run.name)
            rows.append({"variant": run.values.get("variant", run.setting), "seed": run.seed, "run": run.name, **row})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "stability.csv", index=False)
    order = list(dict.fromkeys(table["variant"]))
    columns = ["final_val_acc1", "best_val_acc1", "final_train_loss", "lr", "lambda_max", "lr_times_lambda_max",
               "threshold", "ratio_to_threshold"]
    medians = table.groupby("variant", sort=False)[columns].median().loc[order]
    counts = table.groupby("variant", sort=False).size().loc[order]
    lines = ["| variant | n | final val top-1 % | best val top-1 % | final train loss | lr | lambda_max | "
             "lr x lambda_max | threshold | ratio |", "|---|" + "---:|" * 9]
    for name, row in medians.iterrows():
        lines.append(f"| {name} | {counts[name]} | {row['final_val_acc1']:.2f} | {row['best_val_acc1']:.2f} | "
                     f"{row['final_train_loss']:.3f} | {row['lr']:.4g} | {row['lambda_max']:.3g} | "
                     f"{row['lr_times_lambda_max']:.3g} | {row['threshold']:.3g} | {row['ratio_to_threshold']:.2f} |")
    (args.out / "stability.md").write_text("Medians over seeds; lambda_max at the last measurement.\n\n"
                                           + "\n".join(lines) + "\n")
    fig, ax = new_figure(figsize=(6, 4))
    for k, name in enumerate(order):
        mine = table[table["variant"] == name]
        for i, run in enumerate(mine["run"]):
            curve = curves[run]
            ax.plot(curve["epoch"], curve["lr_times_lambda_max"], "o-", color=f"C{k}", alpha=0.8,
                    label=name if i == 0 else None)
        ax.axhline(mine["threshold"].iloc[0], color=f"C{k}", linestyle="--", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("lr x lambda_max (dashed: stability threshold)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, args.out / "stability.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
