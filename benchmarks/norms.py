"""Norm modes: forward + backward time of the layers, and ResNet-20 training throughput per mode (CPU).

Part 1 (layers):
Compares OnlineNorm2d (ecm 'ls' = the default, 'ac', 'none') with BatchNorm2d, GroupNorm,
InstanceNorm2d, LayerNorm (= GroupNorm(1, C)) and the per-sample-loop reference
(``basinlab.nn.online_norm_reference``, with 'ls') on [128, 16, 32, 32] and [128, 64, 8, 8], with
``torch.set_num_threads(2)``. After a warm-up, the layers are timed round-robin (one forward+backward
of each per round, input and parameter gradients reset) so that load from other processes falls on
all of them alike; the table shows the median over the rounds and the ratio to BatchNorm2d. The slow
reference loop gets fewer rounds, each paired with rounds of OnlineNorm2d 'ls' for its ratio.

Part 2 (training): ResNet-20 (CIFAR-10 shapes, batch 128) forward + backward + SGD step on a fixed
batch with each --norm-mode, images/s and the ratio to batch norm (--training-steps 0 skips it).

    python3 benchmarks/norms.py [--rounds 60] [--ref-rounds 5] [--threads 2] [--training-steps 6]

Targets (checked for the default layer, ecm='ls', and for ecm='none'; 'ac' is shown too): OnlineNorm2d
fwd+bwd <= 2.0x BatchNorm2d on both shapes; the per-sample loop >= 10x slower than OnlineNorm2d on
[128, 64, 8, 8] and not faster on [128, 16, 32, 32]. The exit status is 0 when they hold in every
allocator mode run, 1 otherwise. Timings on a machine shared with other jobs are noisy; the load
average is printed with the results.

Allocator: with glibc's default heap trimming, the freed 2-8 MB activations are handed back to the
kernel between iterations whenever more than ~2x the largest block is free at the top of the heap,
and the next iteration page-faults them in again (hundreds to thousands of faults per layer
call, at several microseconds each on a VM). That penalises every layer by how many full-size
temporaries it keeps alive, not by its arithmetic, and varies from run to run. ``--allocator``:
'steady' runs the measurement in a subprocess with MALLOC_TRIM_THRESHOLD_ and MALLOC_MMAP_THRESHOLD_
at 4 GiB (a steady heap, like a caching allocator or jemalloc/tcmalloc), 'default' as the process
was started, 'both' (the default) one after the other.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from basinlab.nn.online_norm import OnlineNorm2d  # noqa: E402
from basinlab.nn.online_norm_reference import OnlineNormReference  # noqa: E402

SHAPES = [(128, 16, 32, 32), (128, 64, 8, 8)]
ONLINE = ("OnlineNorm2d ls", "OnlineNorm2d ac", "OnlineNorm2d none")
CHECKED = ("OnlineNorm2d ls", "OnlineNorm2d none")
REF = "per-sample loop (ls)"


def _layers(c: int):
    groups = 8 if c % 8 == 0 else 1
    return [
        ("OnlineNorm2d ls", OnlineNorm2d(c, ecm="ls")),
        ("OnlineNorm2d ac", OnlineNorm2d(c, ecm="ac")),
        ("OnlineNorm2d none", OnlineNorm2d(c, ecm="none")),
        ("BatchNorm2d", nn.BatchNorm2d(c)),
        (f"GroupNorm({groups}, C)", nn.GroupNorm(groups, c)),
        ("InstanceNorm2d", nn.InstanceNorm2d(c, affine=True)),
        ("LayerNorm=GN(1, C)", nn.GroupNorm(1, c)),
    ]


def _module_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    params = list(layer.parameters())

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        layer(x).backward(grad)

    return step


def _reference_step(ref: OnlineNormReference, x: torch.Tensor, grad: torch.Tensor):
    xd = x.detach()

    def step():
        ref.forward(xd)
        ref.backward(grad)

    return step


def bench_training(steps: int, batch: int = 128) -> dict[str, float]:
    """Images/s of ResNet-20 training steps with each norm mode (modes interleaved step by step)."""
    from basinlab.models import create_model
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    runs = {}
    for mode in ("batch", "online", "group", "layer", "instance", "none"):
        model = create_model("resnet20", 10, "cifar10", norm=mode)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, opt=opt):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        step()  # warm-up
        runs[mode] = step
    times = {mode: [] for mode in runs}
    for _ in range(steps):
        for mode, step in runs.items():
            times[mode].append(_timed(step))
    return {mode: batch / statistics.median(ts) for mode, ts in times.items()}


def _timed(step) -> float:
    t0 = time.perf_counter()
    step()
    return time.perf_counter() - t0


def bench_shape(shape, rounds: int, ref_rounds: int, warmup: int = 5):
    torch.manual_seed(0)
    x = (torch.randn(shape) * 1.5 + 0.5).requires_grad_()
    grad = torch.randn(shape)
    steps = [(name, _module_step(layer.train(), x, grad)) for name, layer in _layers(shape[1])]
    for _, step in steps:
        for _ in range(warmup):
            step()
    times = {name: [] for name, _ in steps}
    for _ in range(rounds):
        for name, step in steps:
            times[name].append(_timed(step))
    med = {name: statistics.median(ts) * 1e3 for name, ts in times.items()}

    online = dict(steps)["OnlineNorm2d ls"]
    ref_step = _reference_step(OnlineNormReference(shape[1], ecm="ls"), x, grad)
    ref_step()
    ref_times, paired = [], []
    for _ in range(ref_rounds):
        ref_times.append(_timed(ref_step))
        paired.extend(_timed(online) for _ in range(3))
    med[REF] = statistics.median(ref_times) * 1e3
    ref_speedup = statistics.median(ref_times) / statistics.median(paired)
    return med, ref_speedup


_CHILD = "BASINLAB_NORMS_BENCH_CHILD"
_STEADY_ENV = {"MALLOC_TRIM_THRESHOLD_": str(4 << 30), "MALLOC_MMAP_THRESHOLD_": str(4 << 30)}


def _run_child(mode: str, argv) -> int:
    env = dict(os.environ)
    env[_CHILD] = mode
    if mode == "steady":
        env.update(_STEADY_ENV)
    else:
        for key in _STEADY_ENV:
            env.pop(key, None)
    args = [sys.executable, os.path.abspath(__file__), *argv]
    return subprocess.run(args, env=env, check=False).returncode


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--ref-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--allocator", choices=("both", "steady", "default"), default="both")
    ap.add_argument("--training-steps", type=int, default=6, help="ResNet-20 steps per norm mode (0: skip)")
    args = ap.parse_args(argv)
    mode = os.environ.get(_CHILD)
    if mode is None:  # parent: run the measurement(s) in fresh processes
        modes = ("steady", "default") if args.allocator == "both" else (args.allocator,)
        codes = []
        for m in modes:
            sys.stdout.flush()
            codes.append(_run_child(m, argv))
            print()
        return 0 if all(c == 0 for c in codes) else 1

    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    label = ("steady heap (MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ = 4 GiB)"
             if mode == "steady" else "glibc malloc defaults (heap trimming on)")
    print(f"== allocator: {label}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32 CPU, forward+backward, "
        f"median of {args.rounds} interleaved rounds (per-sample loop: {args.ref_rounds})"
    )
    results = {shape: bench_shape(shape, args.rounds, args.ref_rounds) for shape in SHAPES}
    names = list(results[SHAPES[0]][0])
    head = f"{'layer':<22}" + "".join(f"{str(list(s)):>22}{'x BN':>7}" for s in SHAPES)
    print(head)
    print("-" * len(head))
    for name in names:
        row = f"{name:<22}"
        for shape in SHAPES:
            med = results[shape][0]
            row += f"{med[name]:>19.3f} ms{med[name] / med['BatchNorm2d']:>7.2f}"
        print(row)
    print()
    ok = True
    for shape in SHAPES:
        med, ref_speedup = results[shape]
        ratios = ", ".join(f"{n.split()[-1]} {med[n] / med['BatchNorm2d']:.2f}" for n in ONLINE)
        within = all(med[n] / med["BatchNorm2d"] <= 2.0 for n in CHECKED)
        need = 10.0 if shape == (128, 64, 8, 8) else 1.0
        print(f"{list(shape)}: OnlineNorm2d / BatchNorm2d = {ratios} (target <= 2.0 for ls, none: "
              f"{'ok' if within else 'MISSED'}); per-sample loop / OnlineNorm2d ls = "
              f"{ref_speedup:.1f}x (target >= {need:g}: {'ok' if ref_speedup >= need else 'MISSED'})")
        ok &= within and ref_speedup >= need
    if args.training_steps > 0:
        rates = bench_training(args.training_steps)
        print("ResNet-20 training, batch 128: " + ", ".join(
            f"{mode} {rate:.0f} img/s ({rate / rates['batch']:.2f}x batch)" for mode, rate in rates.items()))
    print(f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; targets "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
