"""Real workers against the simulator: delays, lambda_max against each threshold, accuracy.

    python3 experiments/async-sgd/analyze_real.py [--real experiments/async-sgd/runs-real]
                                                  [--simulated experiments/async-sgd/runs] [--out experiments/async-sgd]

One row per run (real.csv): the real runs (real-8, rule-8), their simulated replays (replay-8) and reduced.yaml's
constant-delay A-SGD (asgd-8, delay 7) and synchronous SGD (sync). For each: final validation top-1 and training
loss; the delays its gradients had (delays.csv, or the constant one); the last lr x lambda_max (one batch, as
reduced.yaml measures it); the linear-stability thresholds at constant delays equal to its mean (rounded up), p95
(rounded up) and max delay, and the empirical threshold of its delay sequence (methods/asgd/real/trace.py), with
lr x lambda_max over that one. real.md: the medians per variant; real.png: the delay distributions of the real
runs against the constant delay 7, and lr x lambda_max against each variant's empirical threshold.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from basinlab.methods.asgd.real.trace import applied_delays, empirical_threshold, read_delays
from basinlab.methods.asgd.stability import stability_threshold
from basinlab.utils.figures import new_figure, save_png

HERE = Path(__file__).resolve().parent
VARIANTS = (("sync", "simulated"), ("asgd-8", "simulated"), ("asgd-8-adjusted", "simulated"),
            ("real-8", "real"), ("replay-8", "real"), ("rule-8", "real"))
CONSTANT = {"sync": 0, "asgd-8": 7, "asgd-8-adjusted": 7}


def delays_of(folder: Path, variant: str, steps: int) -> np.ndarray:
    if variant in CONSTANT:  # every update of the round-robin simulator, after its warm-up of d updates
        d = CONSTANT[variant]
        return np.array([*range(d), *[d] * (steps - d)])
    return applied_delays(read_delays(folder / "delays.csv"))


def run_row(folder: Path, variant: str) -> dict:
    history = pd.read_csv(folder / "results.csv")
    measured = history.dropna(subset=["lr_times_lambda_max"])
    last = measured.iloc[-1]
    delays = delays_of(folder, variant, steps=39 * len(history))
    mean, p95, most = float(delays.mean()), float(np.percentile(delays, 95)), int(delays.max())
    empirical = empirical_threshold(delays)
    return {"variant": variant, "run": folder.name, "seed": int(folder.name.rsplit("-s", 1)[1]),
            "final_val_acc1": history["val_acc1"].iloc[-1], "final_train_loss": history["train_loss"].iloc[-1],
            "lr": last["lr"], "delay_mean": mean, "delay_p50": float(np.percentile(delays, 50)), "delay_p95": p95,
            "delay_max": most, "lambda_max": last["lambda_max"], "lr_times_lambda_max": last["lr_times_lambda_max"],
            "threshold_at_mean": stability_threshold(math.ceil(mean)),
            "threshold_at_p95": stability_threshold(math.ceil(p95)), "threshold_at_max": stability_threshold(most),
            "threshold_empirical": empirical, "ratio_to_empirical": last["lr_times_lambda_max"] / empirical}


def medians_table(table: pd.DataFrame) -> str:
    columns = ["final_val_acc1", "lr", "delay_mean", "delay_p95", "delay_max", "lambda_max", "lr_times_lambda_max",
               "threshold_at_mean", "threshold_empirical", "ratio_to_empirical"]
    order = [v for v, _ in VARIANTS if v in set(table.variant)]
    grouped = table.groupby("variant")
    lines = ["| variant | n | final val top-1 % (min-max) | lr | delay mean | p95 | max | lambda_max | lr x lambda_max "
             "| threshold at the mean | empirical threshold | ratio |", "|" + "---|" * 12]
    for variant in order:
        rows, medians = grouped.get_group(variant), grouped.get_group(variant)[columns].median()
        acc = rows.final_val_acc1
        lines.append(f"| {variant} | {len(rows)} | {medians.final_val_acc1:.2f} ({acc.min():.2f}-{acc.max():.2f}) | "
                     f"{medians.lr:.4g} | {medians.delay_mean:.2f} | {medians.delay_p95:.3g} | "
                     f"{medians.delay_max:g} | {medians.lambda_max:.3g} | {medians.lr_times_lambda_max:.3g} | "
                     f"{medians.threshold_at_mean:.3g} | {medians.threshold_empirical:.3g} | "
                     f"{medians.ratio_to_empirical:.3g} |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, real: Path, path: Path) -> None:
    fig, (left, right) = new_figure(1, 2, figsize=(13, 4.5))
    for folder in sorted(real.glob("real-8-s*")):
        delays = applied_delays(read_delays(folder / "delays.csv"))
        counts = np.bincount(delays) / delays.size
        left.plot(np.arange(counts.size), counts, marker="o", label=folder.name)
    left.axvline(7, color="black", linestyle="--", label="the simulator's constant delay 7")
    left.set_xlabel("delay (server updates)")
    left.set_ylabel("fraction of applied gradients")
    left.legend()
    order = [v for v, _ in VARIANTS if v in set(table.variant)]
    for i, variant in enumerate(order):
        rows = table[table.variant == variant]
        right.scatter([i] * len(rows), rows.lr_times_lambda_max, color=f"C{i}")
        right.hlines(rows.threshold_empirical.median(), i - 0.3, i + 0.3, colors=f"C{i}", linestyles="--")
    right.set_xticks(range(len(order)), order, rotation=20)
    right.set_yscale("log")
    right.set_ylabel("lr x lambda_max (dots), empirical threshold (dashed)")
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=HERE / "runs-real")
    parser.add_argument("--simulated", type=Path, default=HERE / "runs")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    rows = []
    for variant, where in VARIANTS:
        base = args.real if where == "real" else args.simulated
        for folder in sorted(base.glob(f"{variant}-s[0-9]*")):
            if (folder / "results.csv").is_file():
                rows.append(run_row(folder, variant))
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "real.csv", index=False)
    (args.out / "real.md").write_text(medians_table(table))
    plot(table, args.real, args.out / "real.png")
    print(medians_table(table))


if __name__ == "__main__":
    main()
