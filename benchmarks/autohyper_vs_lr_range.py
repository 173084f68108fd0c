"""autoHyper and the LR range test on the same model and data, next to a grid of fixed lrs.

mnist5k (4,000 training / 1,000 validation digits), the `mnist` convnet, SGD with momentum 0.9,
batch 128, seed 0. Everything runs through the command line (`basinlab.cli.main`), so each step
below is one command of docs/methods/autohyper.md:

1. `basinlab autohyper train` with init_lr: auto (trial_epochs 2 instead of the seed's 5), which
   also trains the chosen lr for `--epochs` epochs;
2. `basinlab lr-range` (100 steps from 1e-7 to 10): its steepest, valley and min/10 suggestions;
3. `basinlab train` at each suggestion and at each lr of the fixed grid, `--epochs` epochs each.

Prints one markdown table (lr, where it came from, trial epochs spent choosing it, best and final
validation top-1) and writes it to <out>/table.csv. Usage:

    python3 benchmarks/autohyper_vs_lr_range.py [--out /tmp/ah-exp] [--epochs 5] [--grid 0.003 0.01 0.03 0.1 0.3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from basinlab.cli import main  # noqa: E402

COMMON = ["--model", "mnist", "--dataset", "mnist5k", "-b", "128", "--optimizer", "SGD", "--momentum", "0.9",
          "--seed", "0", "--device", "cpu", "--quiet"]


def seed_config(epochs: int, trial_epochs: int) -> dict:
    return {"dataset": "mnist5k", "network": "mnist", "optimizer": "SGD", "scheduler": "None", "init_lr": "auto",
            "optimizer_kwargs": {"momentum": 0.9}, "n_trials": 1, "max_epochs": epochs, "mini_batch_size": 128,
            "num_workers": 0, "trial_epochs": trial_epochs, "early_stop_threshold": -1, "seed": 0}


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    code = main(argv)
    if code != 0:
        raise SystemExit(f"command failed ({code}): basinlab {' '.join(argv)}")
    return time.perf_counter() - start


def best_and_final(run: Path) -> tuple[float, float]:
    history = pd.read_csv(run / "results.csv")
    return float(history["val_acc1"].max()), float(history["val_acc1"].iloc[-1])


def main_experiment(out: Path, epochs: int, trial_epochs: int, grid: list[float]) -> pd.DataFrame:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    config = out / "autohyper.yaml"
    config.write_text(yaml.safe_dump(seed_config(epochs, trial_epochs)))
    seconds = timed(["autohyper", "train", "--config", str(config), "--output", str(out / "autohyper"), "--cpu"])
    print(f"autohyper command: {seconds:.0f} s (search and one {epochs}-epoch training; trials are reused on a rerun)")
    search = pd.read_csv(out / "autohyper" / "search.csv")
    n_trials = int(search["trial"].notna().sum())  # cached (reused) points have no trial number
    summary = pd.read_csv(out / "autohyper" / "summary.csv").iloc[0]
    best, final = best_and_final(out / "autohyper" / summary["run"])
    rows.append({"lr": summary["lr"], "source": "autoHyper", "selection_trials": n_trials,
                 "selection_epochs": n_trials * trial_epochs, "best_val_acc1": best, "final_val_acc1": final})

    seconds = timed(["lr-range", *COMMON, "--num-steps", "100", "-o", str(out / "lr-range")])
    print(f"lr-range command: {seconds:.0f} s")
    facts = json.loads((out / "lr-range" / "lr_range.json").read_text())
    steps_per_epoch = 4000 / 128
    for name, lr in facts["suggestions"].items():
        rows.append({"lr": lr, "source": f"LR range: {name}", "selection_trials": 1,
                     "selection_epochs": round(facts["steps"] / steps_per_epoch, 2)})
    for lr in grid:
        rows.append({"lr": lr, "source": "fixed grid", "selection_trials": 0, "selection_epochs": 0})
    for row in rows[1:]:
        run = train_once(out / "runs", row["lr"], epochs)
        row["best_val_acc1"], row["final_val_acc1"] = best_and_final(run)
    table = pd.DataFrame(rows)
    table.to_csv(out / "table.csv", index=False)
    return table


def train_once(results: Path, lr: float, epochs: int) -> Path:
    """`basinlab train` at this lr, unless a finished run of it is already there."""
    run = results / f"lr={lr:.6g}"
    done = (run / "results.csv").is_file() and len(pd.read_csv(run / "results.csv")) == epochs
    if not done:
        timed(["train", *COMMON, "--lr", str(lr), "--epochs", str(epochs), "--results-dir", str(results),
               "--save", run.name, "--overwrite"])
    return run


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/ah-exp")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--trial-epochs", type=int, default=2)
    parser.add_argument("--grid", type=float, nargs="+", default=[0.003, 0.01, 0.03, 0.1, 0.3])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = main_experiment(Path(args.out), args.epochs, args.trial_epochs, args.grid)
    try:
        print(result.to_markdown(index=False, floatfmt=".4g"))
    except ImportError:  # to_markdown needs the optional `tabulate` package
        print(result.to_string(index=False))
