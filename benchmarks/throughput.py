"""End-to-end training throughput of basinlab vs the pure compute rate of the same model.

    python3 benchmarks/throughput.py [--batches 20] [--threads N] [--datasets-dir DIR]

ResNet-20 on CIFAR-10, batch 128, standard augmentation (pad-crop-flip, normalisation):
- pure compute: forward + backward + SGD step on one fixed batch already in memory, in the faster
  memory format (contiguous or channels_last, both measured);
- end to end: `basinlab.train` over the dataset (loader, augmentation, regime, metrics, NaN check,
  records), the steady-state epoch (the second) of a run of --batches batches per epoch.
Measured alternately in one process so that machine load affects both alike; prints both and the ratio.
Uses the real CIFAR-10 copy when prepared (../shared/tools/prepare_data.py), else synthetic data
written in the real pickle format.
"""
from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import basinlab
from basinlab.models import create_model

BATCH = 128


def compute_rate(memory_format, steps: int) -> float:
    """Images/s of forward+backward+SGD on one fixed batch (no data pipeline at all)."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, "cifar10").to(memory_format=memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=memory_format)
    y = torch.randint(0, 10, (BATCH,))
    loss_fn = nn.CrossEntropyLoss()
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            start = time.perf_counter()
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
    for name, n in [(f"data_batch_{i}", 2000) for i in range(1, 6)] + [("test_batch", 1000)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


def end_to_end_rate(datasets_dir: Path, batches: int, channels_last: str, out: Path) -> float:
    run = basinlab.train(model="resnet20", dataset="cifar10", datasets_dir=str(datasets_dir), batch_size=BATCH,
                         train_limit=batches * BATCH, val_limit=BATCH, epochs=2, quiet=True,
                         channels_last=channels_last, results_dir=str(out), overwrite=True, save="bench")
    return float(run.history["train_images_per_s"].iloc[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=20, help="batches per epoch of the end-to-end run")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating measurement rounds")
    parser.add_argument("--datasets-dir", default=str(Path.home() / ".cache" / "shared-data"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="basinlab-bench-"))
    data_dir = Path(args.datasets_dir)
    source = "real CIFAR-10 copy"
    if not (data_dir / "cifar10" / "cifar-10-batches-py" / "data_batch_1").is_file():
        data_dir, source = synthetic_cifar(tmp / "data"), "synthetic data in the CIFAR pickle format"
    print(f"ResNet-20, CIFAR-10 ({source}), batch {BATCH}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    formats = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    compute = {name: [] for name in formats}
    e2e = []
    for _ in range(args.rounds):
        for name, fmt in formats.items():
            compute[name].append(compute_rate(fmt, args.batches))
        best = max(formats, key=lambda n: statistics.median(compute[n]))
        e2e.append(end_to_end_rate(data_dir, args.batches, "on" if best == "channels_last" else "off", tmp / "runs"))
    rates = {name: statistics.median(v) for name, v in compute.items()}
    best = max(rates, key=rates.get)
    end_to_end = statistics.median(e2e)
    for name, rate in rates.items():
        print(f"  pure compute, {name:13s} {rate:8.1f} images/s")
    print(f"  end to end (basinlab train, {best}) {end_to_end:8.1f} images/s")
    ratio = end_to_end / rates[best]
    print(f"  ratio end-to-end / pure compute (best format): {ratio:.3f}  (target >= 0.9)")
    sys.exit(0 if ratio >= 0.9 else 1)


if __name__ == "__main__":
    main()
