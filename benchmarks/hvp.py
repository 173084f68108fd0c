"""What a Hessian-vector product costs against a gradient, two ways (a script, not a test).

On one batch of CIFAR-shaped inputs through ResNet-20 (default; batch 128), in the Hessian's two modes
(eval: BatchNorm running statistics; train: batch statistics, what training steps see), it times
  * grad            one gradient of the mean loss (forward + backward): the unit;
  * double-backward basinlab's HVP (metrics/hessian.py): the gradient with create_graph, then a backward of
                    <gradient, v> through it; a fresh graph per product (what a measurement over several
                    batches pays);
  * cached          the same with the gradient's graph built once and kept (one backward per product: what a
                    single-batch measurement and the live monitor pay after their first product);
  * fwd-over-rev    torch.func: jvp of grad (forward-mode through the reverse pass), no graph kept;
interleaved, `--repeats` times each, and prints the median seconds and each one's ratio to grad, measured
in one run: read the ratios, not the seconds, on a shared machine (there, `--clock cpu --threads 1` counts this
process's CPU time, which other work on the machine does not inflate). It also checks that the routes agree.

Usage:  python3 benchmarks/hvp.py [--model resnet20|mnist] [--batch-size 128] [--repeats 5] [--threads N]
                                  [--clock wall|cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch import nn
from torch.func import functional_call, grad, jvp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from basinlab.metrics.hessian import _HessianOperator, _measurement_mode  # noqa: E402
from basinlab.models import create_model  # noqa: E402

SHAPES = {"resnet20": ("resnet20", "cifar10", (3, 32, 32)), "mnist": ("mnist", "mnist", (1, 28, 28))}


def batch(shape, batch_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, *shape, generator=gen), torch.randint(0, 10, (batch_size,), generator=gen)


def routes(model, criterion, x, y, vec):
    """name -> a function computing one product (or the gradient) on (x, y)."""
    params = [p for p in model.parameters() if p.requires_grad]
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    tangents = dict(zip(names, vec))
    data = [(x, y)]
    cached = _HessianOperator(model, criterion, data, params, cache_graph=True)
    fresh = _HessianOperator(model, criterion, data, params, cache_graph=False)

    def gradient():
        return torch.autograd.grad(criterion(model(x), y), params)

    def loss_at(weights):
        # buffers copied inside the transformed function: train-mode BatchNorm may update them there
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        return criterion(functional_call(model, (weights, buffers), (x,)), y)

    def forward_over_reverse():
        weights = {name: p.detach() for name, p in zip(names, params)}
        return list(jvp(grad(loss_at), (weights,), (tangents,))[1].values())

    return {"grad": gradient, "double-backward": lambda: fresh.matvec_list(vec),
            "cached": lambda: cached.matvec_list(vec), "fwd-over-rev": forward_over_reverse}


def relative_difference(a, b) -> float:
    num = sum(float((s - t).pow(2).sum()) for s, t in zip(a, b)) ** 0.5
    return num / max(sum(float(s.pow(2).sum()) for s in a) ** 0.5, 1e-30)


def measure(model, criterion, x, y, mode: str, repeats: int, clock=time.perf_counter) -> dict:
    gen = torch.Generator().manual_seed(1)
    vec = [torch.randn(p.shape, generator=gen).to(p.device) for p in model.parameters() if p.requires_grad]
    with _measurement_mode(model, mode):
        fns = routes(model, criterion, x, y, vec)
        agree = relative_difference(fns["double-backward"](), fns["fwd-over-rev"]())
        times = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                start = clock()
                fn()
                times[name].append(clock() - start)
    return {"median": {name: statistics.median(t) for name, t in times.items()}, "agree": agree}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(SHAPES), default="resnet20")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (with --threads 1 on a busy machine)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    name, dataset, shape = SHAPES[args.model]
    torch.manual_seed(0)
    model, criterion = create_model(name, 10, dataset), nn.CrossEntropyLoss()
    x, y = batch(shape, args.batch_size)
    print(f"{name}, batch {args.batch_size}, {sum(p.numel() for p in model.parameters()):,} parameters, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats (median {args.clock} time)")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    for mode in ("eval", "train"):
        result = measure(model, criterion, x, y, mode, args.repeats, clock)
        unit = result["median"]["grad"]
        cells = ", ".join(f"{route} {seconds:.3f} s ({seconds / unit:.2f}x)"
                          for route, seconds in result["median"].items())
        print(f"{mode:5s} {cells}; double-backward vs fwd-over-rev relative difference {result['agree']:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
