"""Keskar et al. (2017) small networks, as the SmoothOut experiments ran them.

* ``f1`` (alias ``mnist_f1``): MLP on flattened images, 5 hidden layers of 512 units, each
  Linear - norm (1-D) - ReLU, then Linear -> classes (Keskar's F1 on MNIST).
* ``cifar10_shallow`` (C1) and ``cifar100_shallow`` (C3): the same network, 2 x [conv5x5-64 (pad 2)
  - max-pool 3x3/2 - norm - ReLU], then FC 384 - norm - ReLU - dropout 0.5, FC 192 - norm - ReLU
  - dropout 0.5, FC -> classes. Layer order and sizes follow the SmoothOut reference
  (models/cifar_shallow.py: 64*7*7 features on 32x32 input); the class count comes from
  ``num_classes`` (the reference ignored it and always built 10 or 100).

Regimes are the SmoothOut seed's, SGD (the seed's shallow-net schedule; F1 had none of its own, so
its runs used the command-line defaults: SGD lr 1e-3, momentum 0.9, no weight decay). The
reference scaled lr by sqrt(batch/128) for large batches on the command line, not in the model.
"""

from __future__ import annotations

from torch import nn

from basinlab.models.common import check_fraction, finish_model, init_weights_, input_spec, resolve_norm
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec

__all__ = ["KeskarF1", "KeskarShallow", "F1_REGIME", "SHALLOW_REGIME"]

F1_REGIME = [{"epoch": 0, "optimizer": "SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}]
# The seed's schedule: 1e-3 for 60 epochs (a warm-up), 1e-2 until 120, then 1e-3 and 1e-4 from 180.
SHALLOW_REGIME = [{"epoch": 0, "optimizer": "SGD", "lr": 1e-3, "momentum": 0.9, "weight_decay": 5e-4},
                  {"epoch": 60, "lr": 1e-2}, {"epoch": 120, "lr": 1e-3}, {"epoch": 180, "lr": 1e-4}]
KESKAR_EPOCHS = 200  # the SmoothOut trainer's default --epochs


def linear_block(cin: int, cout: int, norm: NormSpec) -> list[nn.Module]:
    # A bias right before a norm layer is cancelled by its mean subtraction.
    return [nn.Linear(cin, cout, bias=norm.mode == "none"), *norm.norm_act(cout, dim=1)]


class KeskarF1(nn.Module):
    def __init__(self, num_classes: int, in_features: int, norm: NormSpec = NormSpec(),
                 hidden: int = 512, layers: int = 5):
        super().__init__()
        blocks, cin = [nn.Flatten()], in_features
        for _ in range(layers):
            blocks += linear_block(cin, hidden, norm)
            cin = hidden
        self.layers = nn.Sequential(*blocks, nn.Linear(cin, num_classes))
        init_weights_(self)

    def forward(self, x):
        return self.layers(x)


def _pooled(size: int) -> int:
    return (size - 3) // 2 + 1  # 3x3 max-pool, stride 2, no padding


class KeskarShallow(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, size: int = 32, norm: NormSpec = NormSpec(),
                 dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            norm.conv(in_channels, 64, 5, padding=2, bias=False), nn.MaxPool2d(3, 2), *norm.norm_act(64),
            norm.conv(64, 64, 5, padding=2, bias=False), nn.MaxPool2d(3, 2), *norm.norm_act(64))
        side = _pooled(_pooled(size))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            *linear_block(64 * side * side, 384, norm), nn.Dropout(dropout),
            *linear_block(384, 192, norm), nn.Dropout(dropout),
            nn.Linear(192, num_classes))
        init_weights_(self)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("f1", aliases=("mnist_f1", "keskar_f1"))
def f1(num_classes, dataset, norm="batch", in_channels=None):
    """Keskar's F1: 5 x (FC 512 - norm - ReLU) MLP on flattened images."""
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    model = KeskarF1(num_classes, spec.channels * spec.size * spec.size, norm)
    return finish_model(model, description="Keskar F1 (MLP, 5 x FC 512)", norm=norm, regime=F1_REGIME,
                        default_epochs=KESKAR_EPOCHS)


def _shallow(label: str, num_classes, dataset, norm, dropout, in_channels) -> nn.Module:
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    model = KeskarShallow(num_classes, spec.channels, spec.size, norm,
                          check_fraction(f"{label} dropout", dropout))
    text = f"Keskar {label} (2 x conv5x5-64 + max-pool, FC 384-192, dropout {dropout:g})"
    return finish_model(model, description=text, norm=norm, regime=SHALLOW_REGIME, default_epochs=KESKAR_EPOCHS)


@register_model("cifar10_shallow", aliases=("c1", "keskar_c1"))
def cifar10_shallow(num_classes, dataset, norm="batch", dropout=0.5, in_channels=None):
    """Keskar's C1 (CIFAR-10 shallow convnet)."""
    return _shallow("C1", num_classes, dataset, norm, dropout, in_channels)


@register_model("cifar100_shallow", aliases=("c3", "keskar_c3"))
def cifar100_shallow(num_classes, dataset, norm="batch", dropout=0.5, in_channels=None):
    """Keskar's C3: the C1 network with a 100-way classifier."""
    return _shallow("C3", num_classes, dataset, norm, dropout, in_channels)
