"""Accuracy parity of bf16 autocast on the CPU: ResNet-20 on a 10,000-image stratified CIFAR-10 subset,
10 epochs, seeds 0-2, --amp none vs --amp bf16; the mean final validation top-1 must agree within 1 point.

    python3 experiments/bf16-parity/run.py [--jobs 2] [--out experiments/bf16-parity/runs]

Resumable: a finished run is read back, an interrupted one continues from its last checkpoint. Writes
summary.csv (one row per run) and prints the table the docs quote. Needs CIFAR-10 where basinlab looks
(`basinlab data download cifar10`, or --datasets-dir) and a CPU with native bfloat16.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
PRECISIONS = ("none", "bf16")
EPOCHS = 10
OPTIONS = ["--model", "resnet20", "--dataset", "cifar10", "--train-limit", "10000", "--epochs", str(EPOCHS),
           "--batch-size", "128", "--quiet"]


def run_one(out: Path, datasets_dir: str | None, amp: str, seed: int) -> Path:
    folder = out / f"amp-{amp}-seed{seed}"
    results = folder / "results.csv"
    if results.is_file() and len(pd.read_csv(results)) >= EPOCHS:
        return folder
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if (folder / "last.pt").is_file():
        command = ["--resume", str(folder)]
    else:
        data = ["--datasets-dir", datasets_dir] if datasets_dir else []
        command = [*OPTIONS, "--amp", amp, "--seed", str(seed), *data, "--results-dir", str(out), "--save",
                   folder.name, "--overwrite"]
    subprocess.run([sys.executable, "-m", "basinlab", "train", *command], check=True, env=env)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    parser.add_argument("--out", default=str(HERE / "runs"))
    parser.add_argument("--datasets-dir", default=None, help="default: basinlab's ($BASINLAB_DATASETS, else "
                                                                 "~/.cache/basinlab/datasets)")
    args = parser.parse_args()
    out = Path(args.out)
    jobs = [(amp, seed) for seed in SEEDS for amp in PRECISIONS]
    with ThreadPoolExecutor(args.jobs) as pool:
        folders = list(pool.map(lambda job: run_one(out, args.datasets_dir, *job), jobs))
    rows = []
    for (amp, seed), folder in zip(jobs, folders):
        history = pd.read_csv(folder / "results.csv")
        last = history.iloc[-1]
        rows.append({"amp": amp, "seed": seed, "final_val_acc1": last["val_acc1"],
                     "best_val_acc1": history["val_acc1"].max(), "final_train_loss": last["train_loss"],
                     "train_images_per_s": history["train_images_per_s"].median(),
                     "epoch_time_s": history["epoch_time_s"].median(), "val_time_s": history["val_time_s"].median()})
    frame = pd.DataFrame(rows)
    frame.to_csv(HERE / "summary.csv", index=False)
    table = frame.groupby("amp").agg(mean=("final_val_acc1", "mean"), std=("final_val_acc1", "std"),
                                     img_s=("train_images_per_s", "median"))
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    gap = abs(table.loc["bf16", "mean"] - table.loc["none", "mean"])
    print(f"mean final val top-1: bf16 - fp32 = {table.loc['bf16', 'mean'] - table.loc['none', 'mean']:+.2f} "
          f"points (target within 1)")
    sys.exit(0 if gap <= 1 else 1)


if __name__ == "__main__":
    main()
