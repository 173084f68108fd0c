"""Training throughput of one process vs K data-parallel processes (gloo on CPU) on this machine.

    python3 benchmarks/ddp.py [--nproc 2] [--batches 10] [--rounds 2] [--datasets-dir DIR]

ResNet-20 on CIFAR-10-shaped data, global batch 128, standard augmentation. Each configuration is a
real `basinlab train` run in fresh processes; the figure is `train_images_per_s` of its second
(steady-state) epoch from results.csv: training images of all ranks per second of the epoch loop.
Configurations, with the thread settings stated because they decide the result on a CPU:
- 1 process x C threads (C = the cores this process may use; OMP_NUM_THREADS=C);
- K processes x C/K threads (`basinlab train --nproc K`, which sets OMP_NUM_THREADS=C/K);
- 1 process x C/K threads (what one of the K processes does alone: the scaling reference).
Rounds alternate the configurations so that other load on the machine affects all alike; the median
of the rounds is printed with the ratios. Uses the real CIFAR-10 copy when prepared
(../shared/tools/prepare_data.py), else synthetic images in the real pickle format.
"""
from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

BATCH = 128


def synthetic_cifar(root: Path) -> Path:
    """A CIFAR-10 folder in the real pickle layout with random images (when the real copy is absent)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 1000) for i in range(1, 6)] + [("test_batch", 500)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train_rate(nproc: int, threads: int, datasets_dir: Path, batches: int, out: Path, name: str) -> float:
    """images/s of the second epoch of a `basinlab train` run with `nproc` processes x `threads` threads."""
    command = [sys.executable, "-m", "basinlab", "train", "--model", "resnet20", "--dataset", "cifar10",
               "--datasets-dir", str(datasets_dir), "-b", str(BATCH), "--train-limit", str(batches * BATCH),
               "--val-limit", str(BATCH), "--epochs", "2", "--optimizer", "SGD", "--lr", "0.1", "--quiet",
               "--results-dir", str(out), "--save", name, "--overwrite"]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return float(pd.read_csv(out / name / "results.csv")["train_images_per_s"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--batches", type=int, default=10, help="global batches of 128 per epoch")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--datasets-dir", default=str(Path.home() / ".cache" / "shared-data"))
    args = parser.parse_args()
    total = cores()
    per_process = max(1, total // args.nproc)
    configs = {f"1 process x {total} threads": (1, total),
               f"{args.nproc} processes x {per_process} threads": (args.nproc, per_process),
               f"1 process x {per_process} threads": (1, per_process)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.datasets_dir)
        real = (data / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file()
        if not real:
            data = synthetic_cifar(tmp / "data")
        print(f"ResNet-20, CIFAR-10 ({'real copy' if real else 'synthetic pickle'}), global batch {BATCH}, "
              f"{args.batches} batches/epoch, {total} cores, load average {os.getloadavg()[0]:.1f} at start")
        rates = {label: [] for label in configs}
        for round_ in range(args.rounds):
            for label, (nproc, threads) in configs.items():
                start = time.perf_counter()
                rate = train_rate(nproc, threads, data, args.batches, tmp / "runs", f"r{round_}")
                rates[label].append(rate)
                print(f"  round {round_ + 1}: {label:28s} {rate:7.1f} img/s  (run {time.perf_counter() - start:.0f} s)",
                      flush=True)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    labels = list(configs)
    print("median images/s: " + ", ".join(f"{label} {medians[label]:.1f}" for label in labels))
    print(f"ratio {labels[1]} / {labels[0]}: {medians[labels[1]] / medians[labels[0]]:.2f}")
    print(f"ratio {labels[1]} / {labels[2]}: {medians[labels[1]] / medians[labels[2]]:.2f} "
          f"(parallel efficiency {medians[labels[1]] / medians[labels[2]] / args.nproc:.0%})")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (other users of the {total} cores lower all figures)")


if __name__ == "__main__":
    main()
