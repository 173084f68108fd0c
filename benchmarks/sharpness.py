"""Benchmark of basinlab.metrics.sharpness on a small CNN with synthetic data (a script, not a test).

Reports
  * HVP throughput (Hessian-vector products per second) over the measured batches, with and
    without the cached gradient graph, next to the cost of one plain gradient;
  * HVPs needed to get lambda_max to 1e-3 relative accuracy by Lanczos and by basinlab's power
    iteration, each with its own stopping rule (default tol) and as the oracle count (the first
    HVP after which the estimate stays within 1e-3 of the reference);
  * the cost of PyHessian's default: plain power iteration that stops when the estimate changes by
    less than 1e-3 relative (its tol), after at most 100 HVPs (its maxIter);
side by side with ratios.  The reference lambda_max is Lanczos run to convergence (tol 1e-10).

and the throughput of loss-landscape grids (grid points per second) with one data pass per point
versus G points per pass (torch.func.vmap over stacked parameter sets), measured in one run with
interleaved repetitions (the ratios are what to read on a shared machine).

Usage:  python3 benchmarks/sharpness.py [--batches 3] [--batch-size 64] [--model auto|inline]
                                        [--only all|hessian|landscape] [--grid-examples 1024]
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from basinlab.metrics.hessian import _HessianOperator, _measurement_mode  # noqa: E402
from basinlab.metrics.sharpness import hessian_eigenvalues  # noqa: E402


class SmallResNet(nn.Module):
    """A ResNet-ish CNN for 1x28x28 inputs: stem conv, two residual blocks, pooling, linear head."""

    def __init__(self, channels: int = 16, num_classes: int = 10):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.block1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                    nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.down = nn.Sequential(nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(2 * c))
        self.block2 = nn.Sequential(nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False), nn.BatchNorm2d(2 * c),
                                    nn.ReLU(), nn.Conv2d(2 * c, 2 * c, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(2 * c))
        self.head = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = torch.relu(self.down(x))
        x = torch.relu(x + self.block2(x))
        return self.head(x.mean(dim=(2, 3)))


def build_model(kind: str) -> tuple[nn.Module, str]:
    if kind in ("auto", "basinlab"):
        try:
            from basinlab.models import create_model

            model = create_model("mnist", 10, "mnist")
            return model, getattr(model, "description", "basinlab mnist convnet")
        except Exception as exc:  # noqa: BLE001 - fall back to the inline model
            if kind == "basinlab":
                raise
            print(f"(basinlab.models unavailable: {type(exc).__name__}: {exc}; using the inline model)")
    return SmallResNet(), "inline SmallResNet (2 residual blocks, 16/32 channels, BN)"


def synthetic_data(n_batches: int, batch_size: int, seed: int = 0):
    """Images with labels from a fixed random linear 'teacher', so a short training makes sense."""
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(10, 28 * 28, generator=g)
    data = []
    for _ in range(n_batches):
        x = torch.randn(batch_size, 1, 28, 28, generator=g)
        y = (x.flatten(1) @ teacher.T).argmax(1)
        data.append((x, y))
    return data


def first_within(history, ref, rel):
    """1-based index of the first HVP after which every estimate is within rel of ref (None if never)."""
    idx = None
    for i in range(len(history) - 1, -1, -1):
        if abs(history[i] - ref) <= rel * abs(ref):
            idx = i + 1
        else:
            break
    return idx


def pyhessian_stop(history, tol=1e-3):
    """Where PyHessian's rule |l_t - l_{t-1}| / (|l_{t-1}| + 1e-6) < tol stops plain power iteration."""
    for i in range(1, len(history)):
        if abs(history[i] - history[i - 1]) / (abs(history[i - 1]) + 1e-6) < tol:
            return i + 1
    return len(history)


class _Plain:
    def __init__(self, values, history):
        self.values, self.history, self.hvp_count = values, history, len(history)


def plain_power_iteration(model, crit, data, params, steps, seed=0, tol=None):
    """PyHessian's top-eigenvalue computation: power steps without deflation, at most `steps`, stopping
    when the estimate changes by less than `tol` relative (PyHessian: tol 1e-3, maxIter 100)."""
    gen = torch.Generator().manual_seed(seed)
    with _measurement_mode(model):
        op = _HessianOperator(model, crit, data, params, None)
        v = torch.randn(op.numel, generator=gen).to(device=params[0].device, dtype=op.dtype)
        v = v / v.norm()
        history = []
        for _ in range(steps):
            hv = op.matvec(v)
            history.append(float(torch.dot(v, hv)))
            v = hv / hv.norm()
            if tol is not None and len(history) > 1 and \
                    abs(history[-1] - history[-2]) / (abs(history[-2]) + 1e-6) < tol:
                break  # PyHessian's rule: the estimate changed by less than tol (relative)
    return _Plain([history[-1]], history)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def landscape_throughput(model, device, examples: int, batch_size: int, groups, points: int, repeats: int):
    """Grid points per second of GridEvaluator for each group size G (G=1: one data pass per point)."""
    from basinlab.analysis.data import MeasurementData
    from basinlab.analysis.landscape import GridEvaluator, displaced_parameters, filter_normalized_direction

    data = {"val": MeasurementData([(x.to(device), y.to(device))
                                    for x, y in synthetic_data(examples // batch_size, batch_size, seed=7)])}
    gen = torch.Generator().manual_seed(0)
    d1, d2 = (filter_normalized_direction(model, gen) for _ in range(2))
    origin = {k: v.detach().clone() for k, v in model.named_parameters()}
    grid = [displaced_parameters(origin, [d1, d2], (0.05 * i, -0.05 * i)) for i in range(points)]
    crit = nn.CrossEntropyLoss()
    seconds = {g: [] for g in groups}
    for _ in range(repeats):  # interleaved, so machine load affects every G alike
        for g in groups:
            with GridEvaluator(model, crit, data, points_per_pass=g) as ev:
                start = time.perf_counter()
                ev.evaluate(grid)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[g].append(time.perf_counter() - start)
    return {g: points / min(t) for g, t in seconds.items()}


def report_landscape(model, device, args) -> None:
    groups = [1, 2, 4, 8]
    rates = landscape_throughput(model, device, args.grid_examples, 256, groups, points=8, repeats=args.repeats)
    print(f"\n== 2-D landscape grid: {args.grid_examples} evaluation examples in batches of 256, 8 grid points, "
          f"best of {args.repeats} interleaved repeats ==")
    print(f"{'points per pass G':>18s} {'points/s':>10s} {'vs G=1':>8s}")
    for g in groups:
        print(f"{g:18d} {rates[g]:10.2f} {rates[g] / rates[1]:8.2f}")
    best = max(rates, key=rates.get)
    print(f"fastest here: G={best}; a 51x51 grid (2,601 points) at that rate: {2601 / rates[best] / 60:.1f} min")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["auto", "basinlab", "inline"], default="auto")
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=15, help="SGD steps on the synthetic data first")
    ap.add_argument("--ref-iter", type=int, default=200, help="Lanczos steps for the reference lambda_max")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["all", "hessian", "landscape"], default="all")
    ap.add_argument("--grid-examples", type=int, default=1024, help="evaluation examples of the landscape grid")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the landscape timings")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    model, desc = build_model(args.model)
    model.to(device)
    data = [(x.to(device), y.to(device)) for x, y in synthetic_data(args.batches, args.batch_size, args.seed)]
    crit = nn.CrossEntropyLoss()
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # a short training so the measured point is not a random initialisation
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(args.train_steps):
        x, y = data[step % len(data)]
        opt.zero_grad()
        crit(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        model.eval()
        loss = sum(crit(model(x), y).item() * len(x) for x, y in data) / sum(len(x) for x, _ in data)

    print(f"model: {desc}; {n_params:,} parameters; device {device}; torch threads {torch.get_num_threads()}")
    if args.only == "landscape":
        report_landscape(model, device, args)
        return
    print(f"data: {args.batches} synthetic batches x {args.batch_size}; train steps {args.train_steps}; "
          f"loss {loss:.4f}")

    # ------------------------------------------------------------------ throughput
    params = [p for p in model.parameters() if p.requires_grad]
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def rate(batches, cache, reps):
        with _measurement_mode(model):
            op = _HessianOperator(model, crit, batches, params, cache)
            v = torch.randn(op.numel, device=device, dtype=op.dtype)
            op.matvec(v)  # warm-up
            sync()
            t = time.perf_counter()
            for _ in range(reps):
                v = op.matvec(v)
                v = v / v.norm()
            sync()
            return reps / (time.perf_counter() - t)

    def grad_rate(batches, reps):
        with _measurement_mode(model):
            sync()
            t = time.perf_counter()
            for _ in range(reps):
                for x, y in batches:
                    torch.autograd.grad(crit(model(x), y), params)
            sync()
            return reps / (time.perf_counter() - t)

    reps = 5
    r_all = rate(data, False, reps)
    r_one = rate(data[:1], False, reps)
    r_one_cached = rate(data[:1], True, reps)
    g_all = grad_rate(data, reps)
    print("\n== throughput ==")
    print(f"HVP over all {args.batches} batches (recompute graph): {r_all:8.2f} HVP/s  ({1e3 / r_all:7.1f} ms)")
    print(f"HVP on one batch (recompute graph):                {r_one:8.2f} HVP/s  ({1e3 / r_one:7.1f} ms)")
    print(f"HVP on one batch (cached gradient graph):          {r_one_cached:8.2f} HVP/s  "
          f"({1e3 / r_one_cached:7.1f} ms)")
    print(f"plain gradient over all batches:                   {g_all:8.2f} /s     ({1e3 / g_all:7.1f} ms);"
          f" one HVP = {g_all / r_all:.2f} gradients")

    # ------------------------------------------------------------------ reference
    # Lanczos to convergence on a float64 copy (float32 HVPs limit every estimate to ~1e-6 relative)
    ref_model = copy.deepcopy(model).double()
    ref_data = [(x.double(), y) for x, y in data]
    ref_res, t_ref = timed(lambda: hessian_eigenvalues(ref_model, crit, ref_data, method="lanczos",
                                                       max_iter=args.ref_iter, tol=1e-10, seed=123,
                                                       return_vectors=False))
    ref = ref_res.values[0]
    print(f"\n== reference lambda_max (float64 Lanczos, tol 1e-10): {ref:.10g} after {ref_res.hvp_count} HVPs "
          f"(converged: {ref_res.converged}; {t_ref:.1f} s)")

    # ------------------------------------------------------------------ methods
    runs = {}
    runs["lanczos (tol 1e-4)"] = timed(lambda: hessian_eigenvalues(model, crit, data, method="lanczos",
                                                                  max_iter=100, tol=1e-4, seed=0,
                                                                  return_vectors=False))
    runs["power (tol 1e-4)"] = timed(lambda: hessian_eigenvalues(model, crit, data, method="power", which="LM",
                                                                max_iter=100, tol=1e-4, seed=0,
                                                                return_vectors=False))
    runs["PyHessian: power, tol 1e-3"] = timed(lambda: plain_power_iteration(model, crit, data, params, 100,
                                                                            tol=1e-3))
    runs["power x100 (no early stop)"] = timed(lambda: plain_power_iteration(model, crit, data, params, 100))
    base_res, base_t = runs["PyHessian: power, tol 1e-3"]

    print("\n== lambda_max: HVPs and time (ratios vs PyHessian's power iteration with its own stopping rule) ==")
    hdr = (f"{'method':32s} {'lambda_max':>12s} {'rel.err':>9s} {'HVPs':>5s} {'time s':>7s} "
           f"{'HVP ratio':>9s} {'time ratio':>10s} {'HVPs to 1e-3 (oracle)':>22s} {'oracle ratio':>12s}")
    print(hdr)
    print("-" * len(hdr))
    for name, (res, t) in runs.items():
        lam = res.values[0]
        err = abs(lam - ref) / abs(ref)
        oracle = first_within(res.history, ref, 1e-3)
        orc = f"{oracle}" if oracle else "never"
        ratio = f"{oracle / base_res.hvp_count:.3f}" if oracle else "-"
        print(f"{name:32s} {lam:12.6g} {err:9.2e} {res.hvp_count:5d} {t:7.2f} "
              f"{res.hvp_count / base_res.hvp_count:9.3f} {t / base_t:10.3f} {orc:>22s} {ratio:>12s}")
    err_stop = abs(base_res.values[0] - ref) / abs(ref)
    print(f"\nPyHessian's stopping rule (relative change < 1e-3) stopped its power iteration after "
          f"{base_res.hvp_count} HVPs (~{base_t:.2f} s) with relative error {err_stop:.2e}: a small change per step "
          f"is not a small error when the top eigenvalues are close.")
    lz = runs["lanczos (tol 1e-4)"][0]
    lz_oracle = first_within(lz.history, ref, 1e-3)
    pw_oracle = first_within(runs["power x100 (no early stop)"][0].history, ref, 1e-3)
    if lz_oracle and pw_oracle:
        print(f"HVPs to 1e-3: Lanczos {lz_oracle} vs power iteration {pw_oracle} "
              f"({pw_oracle / lz_oracle:.1f}x fewer with Lanczos).")
    if args.only == "all":
        report_landscape(model, device, args)


if __name__ == "__main__":
    main()
