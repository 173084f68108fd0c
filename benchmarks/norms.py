"""Norm modes: forward + backward time of each norm layer and ResNet-20 training steps per mode, in float32 and
under CPU bfloat16 autocast, against batch norm (CPU).

Part 1 (layers): every --norm-mode's layer alone (``NormSpec.make``; FRN, EvoNorm with their own activation,
"+act"; "batch+ReLU" is their fair comparison) and OnlineNorm2d with ecm 'ls' (the default), 'ac', 'none', on
[128, 16, 32, 32] and [128, 64, 8, 8], plus the per-sample-loop reference (``basinlab.nn.online_norm_reference``,
'ls', float32). Each mode's input is in the memory format the engine gives its model (channels_last on CPU for
conv models except OnlineNorm ones: ``basinlab.engine.setup.prefers_channels_last``; --memory-format overrides it).
bf16: the input and its gradient in bfloat16 (what a conv hands a norm under autocast), the layer run under
``torch.autocast("cpu", dtype=torch.bfloat16)``. After a warm-up the layers of both precisions are timed
round-robin (one forward+backward of each per round, gradients reset) so that load from other processes falls on
all alike; the tables show the median over the rounds and the ratio to batch norm in the same precision. The slow
reference loop gets fewer rounds, each paired with rounds of OnlineNorm2d 'ls' for its ratio.

Part 2 (training): ResNet-20 (CIFAR-10 shapes, batch 128) forward + backward + SGD step on a fixed batch with each
--norm-mode, float32 and bf16 autocast, in the engine's memory format, steps interleaved across all of them;
images/s and the step time as a multiple of batch norm's in the same precision (--training-steps 0 skips it).

    python3 benchmarks/norms.py [--rounds 30] [--ref-rounds 5] [--threads 2] [--training-steps 4]
                                [--clock wall|cpu] [--precision both|float32|bf16] [--allocator both|steady|default]

``--clock cpu`` times the process's CPU time (time.process_time) instead of the wall clock: on a shared, busy
machine use it with ``--threads 1``, so that time spent waiting for a core is not counted. bf16 is measured only
where the CPU computes it natively (as ``--amp bf16`` requires).

Targets (float32, checked for the default layer, ecm='ls', and for ecm='none'; 'ac' is shown too): OnlineNorm2d
fwd+bwd <= 2.0x BatchNorm2d on both shapes; the per-sample loop >= 10x slower than OnlineNorm2d on
[128, 64, 8, 8] and not faster on [128, 16, 32, 32]. The exit status is 0 when they hold in every allocator mode
run, 1 otherwise. The other ratios are reported, not checked. The load average is printed with the results.

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
import contextlib
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from basinlab.choices import NORM_MODES  # noqa: E402
from basinlab.engine.precision import cpu_bf16_native  # noqa: E402
from basinlab.engine.setup import prefers_channels_last  # noqa: E402
from basinlab.models import create_model  # noqa: E402
from basinlab.nn.norms import NormSpec  # noqa: E402
from basinlab.nn.online_norm import OnlineNorm2d  # noqa: E402
from basinlab.nn.online_norm_reference import OnlineNormReference  # noqa: E402

SHAPES = [(128, 16, 32, 32), (128, 64, 8, 8)]
ONLINE = ("online ls", "online ac", "online none")
CHECKED = ("online ls", "online none")
REF = "per-sample loop (ls)"
BASE = "batch"
# gn_ws's layer is group norm's (its difference, the standardised conv weights, shows in training); none has none.
LAYER_MODES = tuple(m for m in NORM_MODES if m not in ("gn_ws", "none", "online"))
PRECISIONS = ("float32", "bf16")
_CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def _memory_format(spec: NormSpec, choice: str) -> torch.memory_format:
    """The format the engine gives a ResNet-20 with this norm on the CPU, unless --memory-format says otherwise."""
    if choice == "engine":
        model = create_model("resnet20", 10, "cifar10", norm=spec)
        choice = "channels_last" if prefers_channels_last(model, torch.device("cpu")) else "contiguous"
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def _layers(c: int):
    """(name, layer, spec) per row: every mode's layer as a model builds it, and OnlineNorm2d's three ecm modes."""
    rows = []
    for mode in LAYER_MODES:
        spec = NormSpec.parse(mode, "cifar10")
        if spec.activation().__class__ is nn.Identity:  # FRN, EvoNorm: the layer with its own activation
            rows.append((f"{mode}+act", spec.norm_act(c)[0], spec))
        else:
            rows.append((mode, spec.make(c), spec))
        if mode == BASE:
            rows.append(("batch+ReLU", nn.Sequential(spec.make(c), nn.ReLU()), spec))
    for ecm in ("ls", "ac", "none"):
        spec = NormSpec.parse({"mode": "online", "ecm": ecm}, "cifar10")
        rows.append((f"online {ecm}", spec.make(c), spec))
    return rows


def _autocast(precision: str):
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _module_step(layer: nn.Module, x: torch.Tensor, grad: torch.Tensor, precision: str):
    params = list(layer.parameters())

    def step():
        x.grad = None
        for p in params:
            p.grad = None
        with _autocast(precision):
            y = layer(x)
        y.backward(grad)

    return step


def _reference_step(ref: OnlineNormReference, x: torch.Tensor, grad: torch.Tensor):
    xd = x.detach()

    def step():
        ref.forward(xd)
        ref.backward(grad)

    return step


def _timed(step, clock) -> float:
    t0 = clock()
    step()
    return clock() - t0


def _inputs(shape, precision: str, fmt: torch.memory_format):
    torch.manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    x = (torch.randn(shape) * 1.5 + 0.5).to(dtype).contiguous(memory_format=fmt).requires_grad_()
    grad = torch.randn(shape).to(dtype).contiguous(memory_format=fmt)
    return x, grad


def bench_shape(shape, precisions, args, clock, warmup: int = 3):
    """Median ms per (precision, row) over interleaved rounds, the reference loop's slowdown, and row formats."""
    steps, formats = {}, {}
    for precision in precisions:
        for name, layer, spec in _layers(shape[1]):
            fmt = _memory_format(spec, args.memory_format)
            formats[name] = "CL" if fmt == torch.channels_last else "contig"
            x, grad = _inputs(shape, precision, fmt)
            steps[(precision, name)] = _module_step(layer.train(), x, grad, precision)
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            times[key].append(_timed(step, clock))
    med = {key: statistics.median(ts) * 1e3 for key, ts in times.items()}

    x, grad = _inputs(shape, "float32", torch.contiguous_format)
    online = _module_step(OnlineNorm2d(shape[1], ecm="ls").train(), x, grad, "float32")
    ref_step = _reference_step(OnlineNormReference(shape[1], ecm="ls"), x, grad)
    ref_step()
    ref_times, paired = [], []
    for _ in range(args.ref_rounds):
        ref_times.append(_timed(ref_step, clock))
        paired.extend(_timed(online, clock) for _ in range(3))
    med[("float32", REF)] = statistics.median(ref_times) * 1e3
    formats[REF] = "contig"
    return med, statistics.median(ref_times) / statistics.median(paired), formats


def bench_training(steps: int, precisions, args, clock, batch: int = 128):
    """Images/s of ResNet-20 training steps per (precision, norm mode), all interleaved step by step."""
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    runs, formats = {}, {}
    for precision in precisions:
        for mode in NORM_MODES:
            spec = NormSpec.parse(mode, "cifar10")
            fmt = _memory_format(spec, args.memory_format)
            formats[mode] = "CL" if fmt == torch.channels_last else "contig"
            model = create_model("resnet20", 10, "cifar10", norm=spec).to(memory_format=fmt)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            runs[(precision, mode)] = _training_step(model, opt, x.contiguous(memory_format=fmt), y, precision)
    for step in runs.values():
        step()  # warm-up
    times = {key: [] for key in runs}
    for _ in range(steps):
        for key, step in runs.items():
            times[key].append(_timed(step, clock))
    return {key: batch / statistics.median(ts) for key, ts in times.items()}, formats


def _training_step(model, opt, x, y, precision):
    def step():
        with _autocast(precision):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


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


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--ref-rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=tuple(_CLOCKS), default="wall",
                    help="wall: elapsed time; cpu: the process's CPU time (use on a busy machine, with --threads 1)")
    ap.add_argument("--precision", choices=("both", *PRECISIONS), default="both")
    ap.add_argument("--memory-format", choices=("engine", "contiguous", "channels_last"), default="engine")
    ap.add_argument("--allocator", choices=("both", "steady", "default"), default="both")
    ap.add_argument("--training-steps", type=int, default=4, help="ResNet-20 steps per norm mode (0: skip)")
    return ap.parse_args(argv)


def _precisions(choice: str) -> tuple[str, ...]:
    wanted = PRECISIONS if choice == "both" else (choice,)
    native, what = cpu_bf16_native()
    if "bf16" in wanted and not native:
        print(f"bf16 skipped: this CPU does not compute bfloat16 natively ({what})")
        wanted = tuple(p for p in wanted if p != "bf16")
    return wanted


def _print_layers(results, precisions):
    head = f"{'layer':<22}{'format':>7}" + "".join(
        f"{str(list(s)) + ' ' + p:>30}{'x BN':>6}" for s in SHAPES for p in precisions)
    print(head)
    print("-" * len(head))
    names = list(results[SHAPES[0]][2])
    for name in names:
        row = f"{name:<22}{results[SHAPES[0]][2][name]:>7}"
        for shape in SHAPES:
            med = results[shape][0]
            for p in precisions:
                if (p, name) in med:
                    row += f"{med[(p, name)]:>27.3f} ms{med[(p, name)] / med[(p, BASE)]:>6.2f}"
                else:
                    row += f"{'-':>30}{'':>6}"
        print(row)
    print()


def _check_online(results) -> bool:
    ok = True
    for shape in SHAPES:
        med, ref_speedup, _ = results[shape]
        ratio = {n: med[("float32", n)] / med[("float32", BASE)] for n in ONLINE}
        within = all(ratio[n] <= 2.0 for n in CHECKED)
        need = 10.0 if shape == (128, 64, 8, 8) else 1.0
        print(f"{list(shape)} float32: OnlineNorm2d / BatchNorm2d = "
              f"{', '.join(f'{n.split()[-1]} {ratio[n]:.2f}' for n in ONLINE)} (target <= 2.0 for ls, none: "
              f"{'ok' if within else 'MISSED'}); per-sample loop / OnlineNorm2d ls = "
              f"{ref_speedup:.1f}x (target >= {need:g}: {'ok' if ref_speedup >= need else 'MISSED'})")
        ok &= within and ref_speedup >= need
    return ok


def _print_training(rates, formats, precisions):
    print("ResNet-20 training, batch 128 (images/s; step time as a multiple of batch norm's, same precision):")
    print(f"{'mode':<12}{'format':>7}" + "".join(f"{p + ' img/s':>16}{'time x':>9}" for p in precisions))
    for mode in NORM_MODES:
        row = f"{mode:<12}{formats[mode]:>7}"
        for p in precisions:
            row += f"{rates[(p, mode)]:>16.0f}{rates[(p, BASE)] / rates[(p, mode)]:>9.2f}"
        print(row)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
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
    clock = _CLOCKS[args.clock]
    load0 = os.getloadavg()[0]
    label = ("steady heap (MALLOC_TRIM_THRESHOLD_/MALLOC_MMAP_THRESHOLD_ = 4 GiB)"
             if mode == "steady" else "glibc malloc defaults (heap trimming on)")
    print(f"== allocator: {label}")
    precisions = _precisions(args.precision)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.clock} clock, CPU, "
          f"forward+backward, median of {args.rounds} interleaved rounds (per-sample loop: {args.ref_rounds}); "
          f"memory format: {args.memory_format}")
    results = {shape: bench_shape(shape, precisions, args, clock) for shape in SHAPES}
    _print_layers(results, precisions)
    ok = _check_online(results) if "float32" in precisions else True
    if args.training_steps > 0:
        _print_training(*bench_training(args.training_steps, precisions, args, clock), precisions)
    print(f"load average {load0:.2f} before, {os.getloadavg()[0]:.2f} after; targets "
          f"{'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
