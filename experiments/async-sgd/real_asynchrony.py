"""The real-asynchrony part of async-sgd at reduced scale: 8 real worker processes against the simulator.

    python3 experiments/async-sgd/real_asynchrony.py [--results-dir experiments/async-sgd/runs-real] [--seeds 0 1]

The same runs as reduced.yaml's `asgd-8` (ResNet-20, 5,000 CIFAR-10 images, 15 epochs, batch 128, lr 0.1, no
momentum, bf16, lambda_max every 5 epochs on one batch), but:

- real-8-s<seed>: `--real`, 8 worker processes on this machine, every delay measured (delays.csv);
- replay-8-s<seed>: the simulator replaying that run's arrivals (`--worker-trace .../delays.csv`): the same delays,
  other numerics and data order;
- rule-8-s<seed>: real workers again, at the lr the paper's rule gives for the *measured* delays of real-8-s<seed>:
  0.1 x (empirical threshold of its delay sequence) / 2, as `basinlab stability --delays-from` reports it,
  where the constant-delay rule (asgd-8-adjusted) uses 0.1 x sin(pi/30).

The constant-delay simulation and synchronous SGD are reduced.yaml's `asgd-8` and `sync` runs (runs/). The real
runs go one at a time (another run beside one would change its delays), then the two replays side by side.
A finished run is skipped, an interrupted one resumed. Then `analyze_real.py` writes real.csv, real.md and
real.png.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

BASE = ["--preset", "sgd-resnet20-cifar10", "--train-limit", "5000", "--epochs", "15", "--amp", "auto",
        "--log-sharpness-every", "5", "--sharpness-batches", "1", "--server", "asgd", "--workers", "8", "--quiet"]
EPOCHS = 15


def finished(folder: Path) -> bool:
    results = folder / "results.csv"
    return results.is_file() and len(results.read_text().strip().splitlines()) == EPOCHS + 1


def command(results: Path, name: str, seed: int, extra: list[str]) -> list[str]:
    folder = results / name
    if (folder / "last.pt").is_file():
        return [sys.executable, "-m", "basinlab", "train", "--resume", str(folder), "--quiet"]
    return [sys.executable, "-m", "basinlab", "train", *BASE, *extra, "--seed", str(seed),
            "--results-dir", str(results), "--save", name]


def rule_lr(results: Path, seed: int) -> float:
    """0.1 x the empirical threshold of real-8-s<seed>'s measured delays / 2: where synchronous SGD's lr 0.1 sits
    against its threshold 2, at the threshold of the measured delays."""
    from basinlab.methods.asgd.real.trace import applied_delays, empirical_threshold, read_delays
    return 0.1 * empirical_threshold(applied_delays(read_delays(results / f"real-8-s{seed}"))) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=Path("experiments/async-sgd/runs-real"),
                        help="where the runs go (default: the committed folder, from the clone's root)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    results = args.results_dir
    for seed in args.seeds:
        name = f"real-8-s{seed}"
        if not finished(results / name):
            subprocess.run(command(results, name, seed, ["--real"]), check=True)
    for seed in args.seeds:
        name = f"rule-8-s{seed}"
        if not finished(results / name):
            subprocess.run(command(results, name, seed, ["--real", "--lr", f"{rule_lr(results, seed):.6g}"]),
                           check=True)
    replays = []
    for seed in args.seeds:
        name = f"replay-8-s{seed}"
        if not finished(results / name):
            trace = results / f"real-8-s{seed}" / "delays.csv"
            one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}   # two replays side by side, a core each
            replays.append(subprocess.Popen(command(results, name, seed, ["--worker-trace", str(trace)]),
                                            env=one_thread))
    return max([p.wait() for p in replays], default=0)


if __name__ == "__main__":
    sys.exit(main())
