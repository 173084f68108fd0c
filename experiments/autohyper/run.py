"""autoHyper's chosen lr against a 7-point log grid of fixed lrs on the same budget, per seed; resumable.

    python3 experiments/autohyper/run.py [--scale reduced|paper] [--jobs 2] [--compare-only]

1. `basinlab autohyper train --config autohyper-SCALE.yaml --seed S` for each of the grid's seeds (runs/autohyper-sS):
   the search, then one full training at the chosen lr with seed S.
2. `basinlab sweep SCALE.yaml` (runs/grid): the same training at each fixed lr of the grid, each seed.
3. The comparison: OUT/comparison.csv and .md (per seed: the chosen lr, the trials and trial epochs the search
   cost, autoHyper's final top-1 beside the grid's best and median; the grid lrs within one point of the best),
   OUT/comparison.png (the grid's final top-1 against lr, every seed, autoHyper's runs as stars), and the grid's
   summary.csv/md/png and each seed's search.csv copied next to it.
Before comparing, the trainings are checked to be the same runs except lr and seed (model, data, epochs, batch,
optimizer settings, precision).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import yaml

from basinlab.data import default_datasets_dir
from basinlab.sweep import read_spec
from basinlab.utils.figures import new_figure, save_png

HERE = Path(__file__).parent
SAME = ("model", "dataset", "epochs", "batch_size", "train_limit", "val_limit", "amp", "data_workers")


def autohyper(scale: str, seed: int, runs: Path, datasets_dir: str, amp: str, jobs: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    command = [sys.executable, "-m", "basinlab", "autohyper", "train",
               "--config", str(HERE / f"autohyper-{scale}.yaml"), "--output", str(runs / f"autohyper-s{seed}"),
               "--seed", str(seed), "--amp", amp, "--quiet", "--data", datasets_dir]
    subprocess.run(command, env=env, check=True)


def training_config(folder: Path) -> dict:
    config = yaml.safe_load((folder / "config.yaml").read_text())
    regime = yaml.safe_load(config["model-config"]) if isinstance(config.get("model-config"), str) else \
        config.get("model-config") or {}
    first = dict((regime.get("regime") or [{}])[0])
    first.pop("lr", None)
    return {**{key: config.get(key.replace("_", "-")) for key in SAME}, "regime": first,
            "depth": regime.get("depth"), "stem": regime.get("stem")}


def seed_row(runs: Path, seed: int, trial_epochs: int) -> tuple[dict, Path]:
    out = runs / f"autohyper-s{seed}"
    summary = pd.read_csv(out / "summary.csv")
    chosen = summary[summary["source"] == "auto"].iloc[0]
    search = pd.read_csv(out / "search.csv")
    trials = int(search["trial"].dropna().nunique())
    return ({"seed": seed, "chosen_lr": chosen["lr"], "trials": trials, "trial_epochs": trials * trial_epochs,
             "autohyper_final_val_acc1": chosen["final_val_acc1"], "autohyper_best_val_acc1": chosen["best_val_acc1"]},
            out / chosen["run"])


def comparison_table(scale: str, runs: Path):
    """(the grid's spec, one row per seed: the search's choice and cost beside the grid's best and median)."""
    spec = read_spec(HERE / f"{scale}.yaml", runs / "grid")
    config = yaml.safe_load((HERE / f"autohyper-{scale}.yaml").read_text())
    rows = []
    for seed in spec.seeds:
        row, trained = seed_row(runs, seed, int(config["trial_epochs"]))
        reference = next(r for r in spec.runs if r.seed == seed)
        mine, theirs = training_config(trained), training_config(runs / "grid" / reference.name)
        if mine != theirs:
            raise SystemExit(f"autoHyper's training {trained} differs from the grid's {reference.name}: "
                             f"{ {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs.get(k)} }")
        finals = {r.values["lr"]: pd.read_csv(runs / "grid" / r.name / "results.csv")["val_acc1"].iloc[-1]
                  for r in spec.runs if r.seed == seed}
        best_lr = max(finals, key=finals.get)
        row.update(grid_best_lr=best_lr, grid_best_final_val_acc1=finals[best_lr],
                   grid_median_final_val_acc1=float(pd.Series(finals).median()),
                   grid_within_1pt=" ".join(f"{lr:g}" for lr, acc in sorted(finals.items())
                                            if acc >= finals[best_lr] - 1.0),
                   grid_epochs=len(finals) * int(config["max_epochs"]))
        row["search_cost_vs_grid"] = row["trial_epochs"] / row["grid_epochs"]
        rows.append(row)
    return spec, pd.DataFrame(rows)


def compare(scale: str, runs: Path, out: Path) -> None:
    spec, table = comparison_table(scale, runs)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "comparison.csv", index=False)
    lines = ["| seed | autoHyper lr | trials (epochs) | autoHyper final top-1 % | grid best lr | grid best final "
             "top-1 % | grid median % | grid lrs within 1 pt of best | search epochs / grid epochs |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for _, r in table.iterrows():
        lines.append(f"| {r['seed']} | {r['chosen_lr']:.4g} | {r['trials']} ({r['trial_epochs']}) | "
                     f"{r['autohyper_final_val_acc1']:.2f} | {r['grid_best_lr']:g} | "
                     f"{r['grid_best_final_val_acc1']:.2f} | {r['grid_median_final_val_acc1']:.2f} | "
                     f"{r['grid_within_1pt']} | {r['search_cost_vs_grid']:.2f} |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    plot(spec, runs, table, out / "comparison.png")
    for name in ("summary.csv", "summary.md", "summary.png"):
        shutil.copy(runs / "grid" / name, out / name)
    for seed in spec.seeds:
        shutil.copy(runs / f"autohyper-s{seed}" / "search.csv", out / f"search-s{seed}.csv")
    print("\n".join(lines))


def plot(spec, runs: Path, table: pd.DataFrame, path: Path) -> None:
    fig, ax = new_figure(figsize=(6, 4))
    for k, seed in enumerate(spec.seeds):
        mine = [(r.values["lr"], pd.read_csv(runs / "grid" / r.name / "results.csv")["val_acc1"].iloc[-1])
                for r in spec.runs if r.seed == seed]
        ax.plot(*zip(*sorted(mine)), "o-", color=f"C{k}", alpha=0.6, label=f"fixed lr, seed {seed}")
        chosen = table[table["seed"] == seed].iloc[0]
        ax.plot([chosen["chosen_lr"]], [chosen["autohyper_final_val_acc1"]], "*", color=f"C{k}", markersize=14,
                markeredgecolor="black", label=f"autoHyper, seed {seed}")
    ax.set_xscale("log")
    ax.set_xlabel("initial lr")
    ax.set_ylabel("final validation top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_png(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=("reduced", "paper"), default="reduced")
    parser.add_argument("--runs", type=Path, default=HERE / "runs",
                        help="folder of the runs (their records are committed)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder of the result files")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once")
    parser.add_argument("--compare-only", action="store_true", help="only write the comparison of finished runs")
    args = parser.parse_args()
    spec = read_spec(HERE / f"{args.scale}.yaml", args.runs / "grid")
    if not args.compare_only:
        datasets_dir = str(Path(spec.base.get("datasets_dir") or default_datasets_dir()).expanduser())
        with ThreadPoolExecutor(args.jobs) as pool:
            amp = spec.base.get("amp", "none")  # the grid's precision: the same trainings
            list(pool.map(lambda s: autohyper(args.scale, s, args.runs, datasets_dir, amp, args.jobs), spec.seeds))
        subprocess.run([sys.executable, "-m", "basinlab", "sweep", str(HERE / f"{args.scale}.yaml"),
                        "--results-dir", str(args.runs / "grid"), "--jobs", str(args.jobs)], check=True)
    compare(args.scale, args.runs, args.out)


if __name__ == "__main__":
    main()
