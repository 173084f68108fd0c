"""Cost of the simulated parameter server per training step, and its memory (a script, not a test).

    python3 benchmarks/asgd.py [--steps 10] [--rounds 5] [--workers 32] [--threads 1] [--device cpu]

For ResNet-20 on a CIFAR-shaped synthetic batch of 128 and the MNIST convnet on a batch of 128, runs
the engine's own step code (StepContext.forward/backward/optimizer_step) through PlainStep (synchronous
training) and through ParameterServerStep (asgd with N workers, pure delay N-1; msgd and ssgd too),
one step of each in turn in one process so machine load hits all alike, and prints the median
time per step and the median over rounds of its ratio to plain training (target for asgd: <= 1.15).
Also prints the server's own work per step (snapshot copies and bookkeeping, timed with a gradient
step that does nothing) and the memory of snapshots and buffers next to the model size.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from basinlab.api import make_config  # noqa: E402
from basinlab.engine.step_context import StepContext  # noqa: E402
from basinlab.engine.steps import PlainStep  # noqa: E402
from basinlab.methods.asgd.server import ParameterServerStep  # noqa: E402
from basinlab.models import create_model  # noqa: E402

BATCH = 128
MODELS = {"resnet20": ("cifar10", (3, 32, 32)), "mnist": ("mnist5k", (1, 28, 28))}


def bare_context(model: nn.Module, device: torch.device, momentum: float):
    """(StepContext, a stand-in RunInfo): what step strategies use, built without a run, so the real
    forward/backward/step code runs."""
    ctx = StepContext.from_config(make_config(grad_clip=None, channels_last="off"), model, device)
    ctx.optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=momentum)
    run = types.SimpleNamespace(log=lambda message: None, batch_size=BATCH, epochs=1, steps_per_epoch=1,
                                device=device, epoch=0)
    return ctx, run


def strategies(workers: int) -> dict:
    return {"plain": (lambda: PlainStep(), 0.0),
            f"asgd N={workers}": (lambda: ParameterServerStep("asgd", workers), 0.0),
            f"msgd N={workers}": (lambda: ParameterServerStep("msgd", workers), 0.9),
            f"ssgd N={workers}": (lambda: ParameterServerStep("ssgd", workers), 0.0)}


def time_steps(strategy, ctx, x, y, steps: int) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        strategy.train_step(ctx, x, y)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def server_overhead(strategy, ctx, steps: int = 200) -> float:
    """Seconds per push of the server alone: gradients are left as they are, no forward/backward."""
    server = strategy.server
    params = [p for p in ctx.model.parameters()]

    def compute(worker):
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        return True

    start = time.perf_counter()
    for _ in range(steps):
        server.step(compute, lambda worker: None)
    if params[0].is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def bench_model(name: str, args, device: torch.device) -> None:
    dataset, shape = MODELS[name]
    torch.manual_seed(0)
    base = create_model(name, 10, dataset).to(device)
    x = torch.randn(BATCH, *shape, device=device)
    y = torch.randint(0, 10, (BATCH,), device=device)
    runs = {}
    for label, (make, momentum) in strategies(args.workers).items():
        ctx, run = bare_context(copy.deepcopy(base), device, momentum)
        strategy = make()
        strategy.setup(ctx, run)
        time_steps(strategy, ctx, x, y, 2)  # warm-up (allocations, first-touch)
        runs[label] = (strategy, ctx, [])
    for _ in range(args.rounds):
        spent = dict.fromkeys(runs, 0.0)
        for _ in range(args.steps):  # one step of each in turn: load changes hit all alike
            for label, (strategy, ctx, _) in runs.items():
                spent[label] += time_steps(strategy, ctx, x, y, 1)
        for label, (_, _, times) in runs.items():
            times.append(spent[label] / args.steps)
    n_params = sum(p.numel() for p in base.parameters())
    print(f"\n{name} ({n_params:,} parameters), batch {BATCH}, {device}, {torch.get_num_threads()} thread(s): "
          f"{args.rounds} rounds of {args.steps} interleaved steps; median time and median per-round ratio")
    plain_times = runs["plain"][2]
    plain = statistics.median(plain_times)
    for label, (strategy, ctx, times) in runs.items():
        median = statistics.median(times)
        ratio = statistics.median(t / p for t, p in zip(times, plain_times))
        line = f"  {label:10s} {median * 1e3:8.1f} ms/step  ratio {ratio:5.3f}"
        if label != "plain":
            own = server_overhead(strategy, ctx)
            mem = strategy.server.memory()
            held = mem["snapshots_max"] * mem["snapshot_bytes"] + mem["momentum_bytes_max"] + mem["group_buffer_bytes"]
            line += (f"  | server work {own * 1e3:6.2f} ms/push ({own / plain:.1%} of a plain step)"
                     f"  | memory {held / 2**20:6.1f} MiB = {held / mem['model_bytes']:5.1f} x model "
                     f"({mem['snapshots_max']} snapshots of {mem['snapshot_bytes'] / 2**20:.2f} MiB")
            if mem["momentum_bytes_max"]:
                line += f", msgd momentum {mem['momentum_bytes_max'] / 2**20:.1f} MiB"
            line += ")"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="interleaved steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (one ratio each)")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadiest on a shared machine)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["resnet20", "mnist"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    for name in args.models:
        bench_model(name, args, device)


if __name__ == "__main__":
    main()
