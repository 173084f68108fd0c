"""Cost of the low-rank metrics (basinlab.metrics.lowrank.model_metrics) relative to one training epoch.

For CIFAR-style ResNet-18 and ResNet-34 (``basinlab.models.create_model(name, 10, 'cifar10')``;
built inline when the model zoo is not importable) on this machine:

- metrics: wall time of ``model_metrics(model)`` (two EVBMFs per conv layer; best of N runs),
  split into the batched SVDs and the rest (EVBMF noise estimate, metrics, DataFrame);
- epoch: (50,000 / 128) x the time of one forward + backward + SGD step on a batch of 128
  32x32 images (median of N steps after a warm-up), measured in the same run;
- ratio = metrics / epoch (AdaS and autoHyper evaluate the metrics once per epoch; target < 5%).

Usage: python3 benchmarks/lowrank.py [--models resnet18 resnet34] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from basinlab.metrics.lowrank import _as_matrix, _svals_many, metric_layers, model_metrics, unfoldings  # noqa: E402

CIFAR_TRAIN = 50_000
BATCH = 128


# ----------------------------------------------------------------------------------------------
# Fallback CIFAR ResNet-18/34 (3x3 stride-1 stem, no max-pool, 1x1 projection shortcuts), used
# only when basinlab.models cannot build them.
# ----------------------------------------------------------------------------------------------

class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = nn.Sequential()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


class _ResNet(nn.Module):
    def __init__(self, blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            for j in range(n):
                layers.append(_Basic(cin, planes, 2 if (j == 0 and i > 0) else 1))
                cin = planes
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def build(name: str) -> tuple[nn.Module, str]:
    try:
        from basinlab.models import create_model

        model = create_model(name, 10, "cifar10")
        return model, getattr(model, "description", "basinlab.models")
    except Exception as exc:  # noqa: BLE001 - the zoo may not be there yet
        blocks = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}[name]
        return _ResNet(blocks), f"inline CIFAR ResNet ({type(exc).__name__} from basinlab.models)"


def time_step(model: nn.Module, repeats: int) -> float:
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    crit = nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)

    def step():
        opt.zero_grad(set_to_none=True)
        crit(model(x), y).backward()
        opt.step()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_metrics(model: nn.Module, repeats: int) -> tuple[float, float, int]:
    layers = metric_layers(model)
    mats = []
    with torch.no_grad():
        for _, _, m in layers:
            m3, _, m4, _ = unfoldings(m.weight)
            mats += [_as_matrix(m3), _as_matrix(m4)]
    model_metrics(model)  # warm-up
    total, svd = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        model_metrics(model)
        total.append(time.perf_counter() - t)
        t = time.perf_counter()
        _svals_many(mats)
        svd.append(time.perf_counter() - t)
    return min(total), min(svd), len(layers)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet18", "resnet34"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; batch {BATCH} at 32x32, "
          f"epoch = {CIFAR_TRAIN}/{BATCH} steps")
    rows = []
    for name in args.models:
        model, desc = build(name)
        m_total, m_svd, n_conv = time_metrics(model, args.repeats)
        step = time_step(model, args.repeats)
        epoch = CIFAR_TRAIN / BATCH * step
        rows.append((name, n_conv, m_total, m_svd, step, epoch, m_total / epoch))
        print(f"  {name}: {desc}")
    header = f"{'model':<10}{'convs':>6}{'metrics s':>11}{'(SVD s)':>9}{'step s':>9}{'epoch s':>10}{'ratio':>9}"
    print(header)
    print("-" * len(header))
    for name, n_conv, m_total, m_svd, step, epoch, ratio in rows:
        print(f"{name:<10}{n_conv:>6}{m_total:>11.3f}{m_svd:>9.3f}{step:>9.3f}{epoch:>10.1f}{ratio:>8.2%}")
    ok = all(r[-1] < 0.05 for r in rows)
    print(f"target: metrics < 5% of an epoch: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
