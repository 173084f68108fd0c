"""AlexNet and AlexNet-BN ("one weird trick" widths, as in convNet's AlexNetOWT_BN that SmoothOut ran).

Each conv and hidden FC layer is followed by the norm, then ReLU (then max-pool where there is one).
``alexnet`` defaults to norm 'none', ``alexnet_bn`` to 'batch'. Note: SmoothOut's ``alexnet``
was the BN network; here that is ``alexnet_bn``.

* ImageNet-sized input: 11x11/4 stem, 64-192-384-256-256 convs, three 3x3/2 max-pools, 6x6
  adaptive pool, FC 4096-4096-classes with dropout 0.5 (61.1M parameters with BN).
* 28x28/32x32 input: a 5x5 stride-1 stem and padded 3x3/2 max-pools (32 -> 16 -> 8 -> 4) instead,
  and FC 1024-1024-classes, since 4096-wide layers would hold most of a CIFAR model's weights.

Convs have no bias; hidden FC layers have one only when no norm follows them.
"""

from __future__ import annotations

from torch import nn

from basinlab.models.common import finish_model, init_weights_, input_spec, resolve_norm, step_regime
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec

__all__ = ["AlexNet", "ALEXNET_REGIME"]

# SmoothOut's final AlexNet schedule: SGD lr 1e-2, momentum 0.9, wd 5e-4, /10 at epochs 20 and 40.
ALEXNET_REGIME = step_regime({"optimizer": "SGD", "lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4},
                             milestones=(20, 40))
ALEXNET_EPOCHS = 50

# (out channels, kernel, stride, padding, max-pool after it)
_IMAGENET_CONVS = ((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                   (256, 3, 1, 1, False), (256, 3, 1, 1, True))
_SMALL_CONVS = ((64, 5, 1, 2, True),) + _IMAGENET_CONVS[1:]


def conv_stack(convs, in_channels: int, norm: NormSpec, pool_padding: int) -> nn.Sequential:
    layers, cin = [], in_channels
    for cout, kernel, stride, padding, pool in convs:
        layers += [norm.conv(cin, cout, kernel, stride=stride, padding=padding, bias=False),
                   *norm.norm_act(cout)]
        if pool:
            layers.append(nn.MaxPool2d(3, stride=2, padding=pool_padding))
        cin = cout
    return nn.Sequential(*layers)


def fc_block(cin: int, cout: int, norm: NormSpec, dropout: float) -> list[nn.Module]:
    # A bias right before a norm layer is cancelled by its mean subtraction.
    return [nn.Linear(cin, cout, bias=norm.mode == "none"), *norm.norm_act(cout, dim=1), nn.Dropout(dropout)]


class AlexNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, norm: NormSpec = NormSpec(),
                 small_input: bool = False):
        super().__init__()
        convs, pool_padding, grid, width = ((_SMALL_CONVS, 1, 4, 1024) if small_input
                                            else (_IMAGENET_CONVS, 0, 6, 4096))
        self.features = conv_stack(convs, in_channels, norm, pool_padding)
        self.avgpool = nn.AdaptiveAvgPool2d(grid)  # fixes the FC input for any image size
        self.classifier = nn.Sequential(*fc_block(256 * grid * grid, width, norm, 0.5),
                                        *fc_block(width, width, norm, 0.5),
                                        nn.Linear(width, num_classes))
        init_weights_(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def build_alexnet(num_classes: int, dataset: str, norm, in_channels: int | None) -> nn.Module:
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    model = AlexNet(num_classes, spec.channels, norm, small_input=spec.small)
    variant = "5x5 stride-1 stem, FC 1024-1024" if spec.small else "11x11/4 stem, FC 4096-4096"
    return finish_model(model, description=f"AlexNet ({variant})", norm=norm, regime=ALEXNET_REGIME,
                        default_epochs=ALEXNET_EPOCHS)


@register_model("alexnet")
def alexnet(num_classes, dataset, norm="none", in_channels=None):
    """AlexNet without normalisation (norm 'none' by default)."""
    return build_alexnet(num_classes, dataset, norm, in_channels)


@register_model("alexnet_bn")
def alexnet_bn(num_classes, dataset, norm="batch", in_channels=None):
    """AlexNet-BN (SmoothOut's ImageNet network): norm after every conv and hidden FC layer."""
    return build_alexnet(num_classes, dataset, norm, in_channels)
