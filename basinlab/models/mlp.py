"""Fully-connected networks on flattened images, as the edge-of-stability papers train them.

* ``fc`` (aliases ``fc_tanh``, ``fc_relu``): Flatten, then for each width Linear - activation, then Linear ->
  classes; PyTorch's default initialisation, biases on, no normalisation. The default, widths (200, 200) with
  tanh, is Cohen et al. (2021)'s ``fc-tanh`` (locuslab/edge-of-stability, src/archs.py fully_connected_net);
  ``fc_relu`` is the same with ReLU. Its regime is their gradient descent: SGD, lr 0.01, no momentum, no weight
  decay (a full batch is `--batch-size` = the training set).
"""
from __future__ import annotations

from torch import nn

from basinlab.models.common import check_choice, check_widths, finish_model, input_spec, resolve_norm
from basinlab.models.registry import register_model

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "softplus": nn.Softplus, "gelu": nn.GELU,
               "hardtanh": nn.Hardtanh}
GD_REGIME = [{"epoch": 0, "optimizer": "SGD", "lr": 0.01, "momentum": 0.0, "weight_decay": 0.0}]


class FullyConnected(nn.Sequential):
    def __init__(self, num_classes: int, in_features: int, widths=(200, 200), activation: str = "tanh"):
        layers, cin = [nn.Flatten()], in_features
        for width in widths:
            layers += [nn.Linear(cin, width), ACTIVATIONS[activation]()]
            cin = width
        super().__init__(*layers, nn.Linear(cin, num_classes))


def _widths(widths) -> list[int]:
    if isinstance(widths, int) and not isinstance(widths, bool):
        widths = [widths]
    return check_widths(widths, "fc widths", "the hidden layers' widths", "[200, 200]")


def _fc(num_classes, dataset, widths, activation, in_channels):
    spec = input_spec(dataset, in_channels)
    check_choice("fc activation", activation, tuple(ACTIVATIONS))
    widths = _widths(widths)
    model = FullyConnected(num_classes, spec.channels * spec.size * spec.size, widths, activation)
    text = f"fully connected ({' - '.join(map(str, widths))}, {activation})"
    return finish_model(model, description=text, norm=resolve_norm("none", dataset), regime=GD_REGIME,
                        default_epochs=1000)


@register_model("fc")
def fc(num_classes, dataset, widths=(200, 200), activation="tanh", in_channels=None, norm="none"):
    """Cohen et al.'s fc-tanh: 2 hidden layers of 200, tanh (``widths``, ``activation`` to change)."""
    check_choice("fc norm", norm, ("none",))
    return _fc(num_classes, dataset, widths, activation, in_channels)


@register_model("fc_tanh")
def fc_tanh(num_classes, dataset, widths=(200, 200), in_channels=None, norm="none"):
    check_choice("fc_tanh norm", norm, ("none",))
    return _fc(num_classes, dataset, widths, "tanh", in_channels)


@register_model("fc_relu")
def fc_relu(num_classes, dataset, widths=(200, 200), in_channels=None, norm="none"):
    check_choice("fc_relu norm", norm, ("none",))
    return _fc(num_classes, dataset, widths, "relu", in_channels)
