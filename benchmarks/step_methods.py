"""Step time of the flat-minima and SAM-family strategies relative to plain SGD, measured in one run.

    python benchmarks/step_methods.py [--rounds 3] [--steps 10] [--threads 1] [--device cpu] [--only SAM ...]

For each model (CIFAR ResNet-20 on a synthetic MNIST-shaped batch of 128, the MNIST convnet on a synthetic
MNIST batch of 128) a real Trainer is set up per method (same seed, so the same initial weights) and
the methods' steps are timed in interleaved rounds, so that a busy machine slows every method alike;
each method's time is its fastest round, in CPU seconds of this process on CPU (so that other
processes on a shared machine do not count) and in wall seconds on CUDA. A round is --steps steps (10:
whole cycles of LookSAM K=5 and --sam-interval 2, so their time per step is the cycle's mean). Prints
seconds per step, forward-backward passes per step (the strategy's own count, where it keeps one) and the
ratio to plain SGD with the targets of the issues (SmoothOut <= 1.1, SAM <= 2.2, LookSAM K=5 <= 1.3,
Momentum-SAM and SAF <= 1.15), and the cost of the noise alone (draw + add + restore of every perturbed
weight), the only work SmoothOut adds per chunk.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from basinlab.api import build_run, make_config  # noqa: E402
from basinlab.engine.trainer import Trainer  # noqa: E402

METHODS = {
    "plain SGD": {},
    "SmoothOut (uniform)": {"smoothout": 0.005},
    "AdaSmoothOut (filter)": {"smoothout": 0.02, "smoothout_adapt": "filter"},
    "SAM": {"sam": 0.05},
    "ASAM": {"asam": 0.5},
    "m-SAM m=32": {"sam": 0.05, "sam_m": 32},
    "m-SAM m=16": {"sam": 0.05, "sam_m": 16},
    "SAM every 2nd step": {"sam": 0.05, "sam_interval": 2},
    "GSAM": {"gsam": 0.05},
    "LookSAM K=5": {"looksam": 0.05, "looksam_k": 5},
    "Momentum-SAM": {"msam": 0.5},
    "SAF": {"saf": True, "saf_start_epoch": 0, "saf_horizon": 1},
    "MESA": {"mesa": True, "saf_start_epoch": 0},
}
MODELS = {
    "resnet20, MNIST-shaped batch 128": ("resnet20", {"in_channels": 1}, (1, 28, 28)),
    "mnist convnet, MNIST batch 128": ("mnist", {}, (1, 28, 28)),
}
TARGETS = {"SmoothOut (uniform)": 1.1, "AdaSmoothOut (filter)": 1.1, "SAM": 2.2, "ASAM": 2.2, "LookSAM K=5": 1.3,
           "Momentum-SAM": 1.15, "SAF": 1.15}


def make_trainer(folder: str, name: str, model: str, model_config: dict, device: str, options: dict) -> Trainer:
    cfg = make_config(results_dir=folder, save=name, quiet=True, model=model, model_config=model_config,
                      dataset="mnist5k", train_limit=256, val_limit=64, batch_size=128, device=device,
                      optimizer="SGD", lr=0.01, momentum=0.9, **options)
    trainer = build_run(cfg)
    trainer.setup()
    trainer.model.train()
    trainer.epoch = 1  # timed as the second epoch's steps: SAF's and MESA's term (after epoch 0 here) applies
    return trainer


def clock(device: torch.device):
    """CPU time of this process on CPU (other processes on a shared machine do not count), else wall time."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter()
    return time.process_time()


def time_steps(trainer: Trainer, x, y, steps: int) -> float:
    """Seconds per step over `steps` steps."""
    start = clock(trainer.device)
    for _ in range(steps):
        trainer.strategy.train_step(trainer.step_context, x, y)
    return (clock(trainer.device) - start) / steps


def bench_model(label: str, model: str, model_config: dict, shape, args) -> tuple[dict, dict, dict]:
    """({method: seconds per step}, {method: passes per step}, {noise adapt: seconds})."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, *shape, generator=gen).to(args.device)
    y = torch.randint(0, 10, (128,), generator=gen).to(args.device)
    methods = {m: opts for m, opts in METHODS.items() if m == "plain SGD" or not args.only or m in args.only}
    with tempfile.TemporaryDirectory() as folder:
        trainers = {m: make_trainer(folder, f"m{i}", model, model_config, args.device, opts)
                    for i, (m, opts) in enumerate(methods.items())}
        for trainer in trainers.values():
            time_steps(trainer, x, y, 1)  # warm-up: allocations, kernels
        times = {m: [] for m in methods}
        order = list(trainers)
        for _ in range(args.rounds):
            for method in order:
                times[method].append(time_steps(trainers[method], x, y, args.steps))
            order.reverse()  # no method always runs first
        passes = {m: t.strategy.epoch_metrics(t.info).get("passes_per_step", 1.0) for m, t in trainers.items()}
        for trainer in trainers.values():
            trainer.run.close()
        noisy = [trainers[m] for m in ("SmoothOut (uniform)", "AdaSmoothOut (filter)") if m in trainers]
        noise_cost = time_noise(*noisy, rounds=args.rounds)
    return {m: min(t) for m, t in times.items()}, passes, noise_cost


def time_noise(*trainers, rounds: int) -> dict:
    """Seconds of one perturb + restore (fastest of `rounds`) for each SmoothOut trainer's noise model."""
    out = {}
    for trainer in trainers:
        noise = trainer.strategy.noise
        best = float("inf")
        for _ in range(rounds):
            start = clock(trainer.device)
            noise.perturb(1.0)
            noise.restore()
            best = min(best, clock(trainer.device) - start)
        out[trainer.strategy.noise_model.adapt] = best
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="steps per method per round")
    parser.add_argument("--only", nargs="+", choices=sorted(METHODS), metavar="METHOD",
                        help="time these methods (and plain SGD) only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {args.device}, {args.threads} thread(s), "
          f"{args.rounds} rounds x {args.steps} steps per method, fastest round")
    for label, (model, model_config, shape) in MODELS.items():
        best, passes, noise_cost = bench_model(label, model, model_config, shape, args)
        base = best["plain SGD"]
        print(f"\n{label}")
        for method, seconds in best.items():
            target = TARGETS.get(method)
            note = f"  (target <= {target})" if target else ""
            print(f"  {method:24s} {seconds * 1e3:8.1f} ms/step   {passes[method]:.2f} passes/step   "
                  f"ratio {seconds / base:5.2f}{note}")
        for adapt, seconds in noise_cost.items():
            print(f"  noise alone, adapt {adapt:7s} {seconds * 1e3:8.2f} ms per chunk "
                  f"= {seconds / base:.4f} of a plain step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
