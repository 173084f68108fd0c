"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis 2016), pre-activation, for CIFAR-sized inputs.

3x3 stem with 16 channels; 3 stages of n = (d-4)/6 blocks with 16k/32k/64k channels, stride 2 at
stages 2 and 3; each block is norm-ReLU-conv3x3-norm-ReLU-(dropout)-conv3x3 and adds a 1x1 conv
shortcut where the shape changes (taken from the pre-activated input, as in the authors' code);
final norm-ReLU, global average pooling, FC. WRN-28-10 on CIFAR-10 has 36.5M parameters.
"""

from __future__ import annotations

from torch import nn

from basinlab.errors import ConfigError
from basinlab.models.common import (
    check_fraction,
    finish_model,
    init_weights_,
    input_spec,
    resolve_norm,
    step_regime,
)
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec
from basinlab.utils.checks import check_int

__all__ = ["WideBlock", "WideResNet", "WRN_REGIME"]

# The WRN paper's CIFAR schedule: Nesterov SGD, wd 5e-4, lr x0.2 at epochs 60, 120, 160 of 200.
WRN_REGIME = step_regime({"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "nesterov": True,
                          "weight_decay": 5e-4}, milestones=(60, 120, 160), factor=0.2)
WRN_EPOCHS = 200


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float, norm: NormSpec):
        super().__init__()
        self.bn1, self.act1 = norm.norm_act(cin)
        self.conv1 = norm.conv(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2, self.act2 = norm.norm_act(cout)
        self.conv2 = norm.conv(cout, cout, 3, padding=1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        project = stride != 1 or cin != cout
        self.shortcut = norm.conv(cin, cout, 1, stride=stride, bias=False) if project else None

    def forward(self, x):
        pre = self.act1(self.bn1(x))
        out = self.conv2(self.dropout(self.act2(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int, in_channels: int = 3,
                 dropout: float = 0.0, norm: NormSpec = NormSpec()):
        super().__init__()
        if check_int(depth, "wide_resnet depth", maximum=1000) < 10 or (depth - 4) % 6:
            raise ConfigError(f"wide_resnet depth must be 6n+4 with n >= 1 (16, 22, 28, 40, ...), got {depth}")
        check_int(widen_factor, "wide_resnet widen_factor", maximum=64)
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = norm.conv(in_channels, 16, 3, padding=1, bias=False)
        cin, stages = 16, []
        for i, width in enumerate(widths):
            blocks = [WideBlock(cin if j == 0 else width, width, 1 if (i == 0 or j > 0) else 2, dropout, norm)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.bn, self.act = norm.norm_act(cin)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights_(self)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.avgpool(self.act(self.bn(x))).flatten(1))


@register_model("wide_resnet", aliases=("wrn",))
def wide_resnet(num_classes: int, dataset: str, depth: int = 28, widen_factor: int = 10,
                dropout: float = 0.0, norm="batch", in_channels: int | None = None):
    """WRN-depth-widen_factor (default WRN-28-10, no dropout; the paper also used dropout 0.3)."""
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    dropout = check_fraction("wide_resnet dropout", dropout)
    model = WideResNet(depth, widen_factor, num_classes, spec.channels, dropout, norm)
    text = f"Wide ResNet WRN-{depth}-{widen_factor} (pre-activation, dropout {dropout:g})"
    return finish_model(model, description=text, norm=norm, regime=WRN_REGIME, default_epochs=WRN_EPOCHS)
