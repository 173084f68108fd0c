"""Training speed on a CPU (or GPU): pure compute vs basinlab end to end, float32 vs bf16, validation, start-up.

    python3 benchmarks/throughput.py [--batches 20] [--threads N] [--rounds 2] [--datasets-dir DIR] [--startup-only]

ResNet-20 on CIFAR-10, batch 128, channels_last, standard augmentation. Measured in one run, alternating
so that machine load affects every column alike (read the ratios, not the absolute numbers):
- pure compute: forward + backward + SGD step on one fixed batch already in memory (no data pipeline),
  float32 and under bf16 autocast;
- end to end: `basinlab.train` (loader, augmentation, regime, metrics, NaN check, records), the steady
  epoch (the second) of a run of --batches batches per epoch, --amp none and --amp bf16;
- validation: images/s of the same runs' validation (val_time_s);
- start-up: a fresh `basinlab train -p 1` process until its first training step is logged, against
  fresh plain-PyTorch processes that import torch and build the model (the target's baseline), that also
  construct the optimizer, and that also take one training step on a random batch.
Targets (issue "Speed on the machines researchers without a GPU have"): end-to-end bf16 >= 1.6x
end-to-end float32; end to end >= 0.9x pure compute in both precisions; start-up <= 1.3x
`import torch` + model build. bf16 columns need a CPU with native bfloat16 (or a CUDA device).
Uses the real CIFAR-10 copy when prepared (../shared/tools/prepare_data.py), else synthetic data
written in the real pickle format.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import basinlab
from basinlab.engine.precision import cpu_bf16_native
from basinlab.models import create_model

BATCH = 128
VAL = 1024


def compute_rate(bf16: bool, steps: int) -> float:
    """Images/s of forward+backward+SGD on one fixed batch (channels_last; bf16: under autocast)."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, "cifar10").to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    loss_fn = nn.CrossEntropyLoss()
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
        with cast:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * BATCH / (time.perf_counter() - start)


def synthetic_cifar(root: Path) -> Path:
    """A CIFAR-10 folder in the real pickle layout with random images (when the real copy is absent)."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 2000) for i in range(1, 6)] + [("test_batch", 2000)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


def end_to_end(datasets_dir: Path, batches: int, amp: str, out: Path) -> tuple[float, float]:
    """(training images/s of the steady epoch, validation images/s) of `basinlab.train`."""
    run = basinlab.train(model="resnet20", dataset="cifar10", datasets_dir=str(datasets_dir), batch_size=BATCH,
                         train_limit=batches * BATCH, val_limit=VAL, epochs=2, quiet=True, amp=amp,
                         channels_last="on", results_dir=str(out), overwrite=True, save=f"bench-{amp}")
    last = run.history.iloc[-1]
    return float(last["train_images_per_s"]), VAL / float(last["val_time_s"])


def seconds_until(command: list[str], marker: str | None) -> float:
    """Wall time of a fresh process until a line containing `marker` is printed (or until it exits)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
        for line in proc.stdout:
            if marker and marker in line:
                elapsed = time.perf_counter() - start
                proc.kill()
                return elapsed
        proc.wait()
    return time.perf_counter() - start


def startup(datasets_dir: Path, out: Path) -> tuple[float, float, float, float]:
    """Seconds to the first training step of `basinlab train`, and of three plain-PyTorch processes: import torch
    and build ResNet-20; also construct its SGD optimizer (torch imports torch._dynamo at the first optimizer:
    ~1 s on this CPU); also take one training step on a random batch (the least any training process pays)."""
    train = [sys.executable, "-m", "basinlab", "train", "--model", "resnet20", "--dataset", "cifar10",
             "--datasets-dir", str(datasets_dir), "--train-limit", str(4 * BATCH), "--val-limit", "128", "-p", "1",
             "--epochs", "1", "--results-dir", str(out), "--overwrite", "--save", "startup"]
    build = "import torch; from basinlab.models import create_model; m = create_model('resnet20', 10, 'cifar10')"
    with_optimizer = build + "; o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)"
    with_step = (with_optimizer + f"; x = torch.randn({BATCH}, 3, 32, 32); y = torch.randint(0, 10, ({BATCH},)); "
                 "torch.nn.functional.cross_entropy(m(x), y).backward(); o.step()")
    plain = [[sys.executable, "-c", code + "; print('built')"] for code in (build, with_optimizer, with_step)]
    return (seconds_until(train, "step 1/"), *(seconds_until(command, "built") for command in plain))


def print_startup(starts: list, plain: list[list]) -> list:
    """The start-up line and its checks: the target is against import torch + model build."""
    first = statistics.median(starts)
    base, optimizer, step = (statistics.median(values) for values in plain)
    print(f"  start-up: first step after {first:.2f} s; import torch + model {base:.2f} s, + optimizer "
          f"{optimizer:.2f} s, + one training step {step:.2f} s")
    return [("start-up to first step / (import torch + model)", first / base, "<=", 1.3),
            ("start-up to first step / (import torch + model + optimizer)", first / optimizer, "", None),
            ("start-up to first step / (the same + one step: plain PyTorch)", first / step, "", None)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch of the end-to-end runs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--datasets-dir", default=str(Path.home() / ".cache" / "shared-data"))
    parser.add_argument("--startup-only", action="store_true", help="measure only the start-up columns")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="basinlab-bench-"))
    data_dir = Path(args.datasets_dir)
    source = "real CIFAR-10 copy"
    if not (data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file():
        data_dir, source = synthetic_cifar(tmp / "data"), "synthetic data in the CIFAR pickle format"
    bf16, what = cpu_bf16_native()
    print(f"ResNet-20, CIFAR-10 ({source}), batch {BATCH}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, CPU: {what}")
    precisions = ["fp32", "bf16"] if bf16 else ["fp32"]
    columns = {f"{kind} {p}": [] for kind in ("compute", "e2e", "val") for p in precisions}
    starts, plain = [], [[], [], []]
    for _ in range(args.rounds):
        for p in precisions if not args.startup_only else []:
            columns[f"compute {p}"].append(compute_rate(p == "bf16", args.batches))
            train, val = end_to_end(data_dir, args.batches, "bf16" if p == "bf16" else "none", tmp / "runs")
            columns[f"e2e {p}"].append(train)
            columns[f"val {p}"].append(val)
        first, *baselines = startup(data_dir, tmp / "runs")
        starts.append(first)
        for kept, value in zip(plain, baselines):
            kept.append(value)
    checks = []
    if not args.startup_only:
        rate = {name: statistics.median(values) for name, values in columns.items()}
        for name, value in rate.items():
            print(f"  {name:12s} {value:8.1f} images/s")
        for p in precisions:
            checks.append((f"end to end / pure compute, {p}", rate[f"e2e {p}"] / rate[f"compute {p}"], ">=", 0.9))
        if bf16:
            checks.append(("end to end bf16 / fp32", rate["e2e bf16"] / rate["e2e fp32"], ">=", 1.6))
            checks.append(("validation bf16 / fp32", rate["val bf16"] / rate["val fp32"], "", None))
    checks += print_startup(starts, plain)
    ok = True
    for name, ratio, sense, target in checks:
        met = target is None or (ratio >= target if sense == ">=" else ratio <= target)
        ok &= met
        goal = f"  (target {sense} {target})" if target is not None else ""
        print(f"  {name:60s} {ratio:6.3f}{goal}{'' if met else '  MISSED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
