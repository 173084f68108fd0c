"""Helpers every model family shares: input geometry by dataset, init, regimes, descriptions."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from basinlab.errors import ConfigError
from basinlab.nn.norms import NormSpec, init_norm_
from basinlab.utils.checks import check_int

__all__ = ["InputSpec", "input_spec", "resolve_norm", "init_weights_", "step_regime", "finish_model",
           "count_params", "check_choice", "check_fraction", "check_widths"]

_MNIST_LIKE = ("mnist", "fashionmnist", "kmnist", "emnist")
_CIFAR_LIKE = ("cifar", "svhn")


@dataclass(frozen=True)
class InputSpec:
    """What a model must accept for a dataset: channels, nominal side length, family.

    family is 'mnist' (28x28), 'cifar' (32x32) or 'imagenet' (224x224, or 64x64 tiny-imagenet);
    ``small`` is True for the first two, which get CIFAR-style stems.
    """

    dataset: str
    channels: int
    size: int
    family: str

    @property
    def small(self) -> bool:
        return self.family in ("mnist", "cifar")


def input_spec(dataset: str, in_channels: int | None = None) -> InputSpec:
    """Input geometry for ``dataset``; anything unknown (image folders) is treated as ImageNet-like."""
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"dataset must be a non-empty name, got {dataset!r}")
    key = dataset.lower().replace("-", "").replace("_", "")
    if key.startswith(_MNIST_LIKE):
        family, channels, size = "mnist", 1, 28
    elif key.startswith(_CIFAR_LIKE):
        family, channels, size = "cifar", 3, 32
    elif key.startswith("tinyimagenet"):
        family, channels, size = "imagenet", 3, 64
    else:
        family, channels, size = "imagenet", 3, 224
    if in_channels is not None:
        channels = check_int(in_channels, "in_channels", maximum=4096)
    return InputSpec(dataset, channels, size, family)


def resolve_norm(norm, dataset: str) -> NormSpec:
    """The model's NormSpec; unspecified fields take the reference defaults for the dataset."""
    return NormSpec.parse(norm, dataset=dataset)


def check_choice(name: str, value, allowed) -> None:
    """ConfigError unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_widths(widths, name: str, what: str, example: str) -> list[int]:
    """A non-empty list of layer widths (integers in [1, 65536]), else ConfigError naming `what` they are."""
    if not isinstance(widths, (list, tuple)) or not widths:
        raise ConfigError(f"{name} must be {what}, e.g. {example}; got {widths!r}")
    return [check_int(w, f"each of {name}", maximum=1 << 16) for w in widths]


def check_fraction(name: str, value) -> float:
    """``value`` as a float in [0, 1) (dropout rates), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def init_weights_(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero conv biases, γ = 1 and β = 0.

    Linear layers keep PyTorch's default init (as torchvision's ResNet/VGG classifiers do).
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return init_norm_(model)


def _round(lr: float) -> float:
    # 0.1 * 0.1 is 0.010000000000000002: keep regimes readable in logs and configs.
    return float(f"{lr:.6g}")


def step_regime(first: dict, milestones, factor: float = 0.1) -> list[dict]:
    """List-format regime: ``first`` from epoch 0, lr multiplied by ``factor`` at each milestone."""
    regime = [{"epoch": 0, **first}]
    lr = first["lr"]
    for epoch in milestones:
        lr *= factor
        regime.append({"epoch": int(epoch), "lr": _round(lr)})
    return regime


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def finish_model(model: nn.Module, *, description: str, norm: NormSpec | None, regime: list[dict],
                 default_epochs: int, data_regime: list[dict] | None = None) -> nn.Module:
    """Attach what the engine reads from a model.

    description     one line: architecture, depth, norm mode, parameter count
    regime          default optimisation schedule, list format (copied: each model owns its own)
    default_epochs  how many epochs the regime was designed for (the engine's default --epochs)
    data_regime     optional batch-size / input-size schedule
    """
    norm_text = f", norm={norm.mode}" if norm is not None else ""
    model.description = f"{description}{norm_text}, {count_params(model) / 1e6:.2f}M params"
    model.regime = copy.deepcopy(regime)
    model.default_epochs = int(default_epochs)
    if data_regime is not None:
        model.data_regime = copy.deepcopy(data_regime)
    return model
