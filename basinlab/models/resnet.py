"""ResNets: the CIFAR family (depth 6n+2) and the ImageNet family (18-152, v1.5).

CIFAR ResNet (He et al. 2016, as in the Online Normalization reference): 3x3 stem with 16
channels, 3 stages of n basic blocks (16/32/64 channels), stride 2 at stages 2 and 3 with
projection shortcuts (1x1 conv + norm), a norm after every conv, global average pooling, FC.

ImageNet ResNet v1.5 (torchvision's layout and parameter names, so torchvision state dicts load):
7x7 stride-2 stem + 3x3 max-pool, stages of 64/128/256/512 planes, bottlenecks take the stride
in their 3x3 conv. On 28x28/32x32 datasets the stem becomes a 3x3 stride-1 conv without the
max-pool (the CIFAR variant autoHyper trains), since a 4x downsampling stem would leave 1x1 maps.

Convs have no bias (every conv is followed by a norm; with norm 'none' only the FC has one).
"""

from __future__ import annotations

from torch import nn

from basinlab.errors import ConfigError
from basinlab.models.common import (
    InputSpec,
    check_choice,
    finish_model,
    init_weights_,
    input_spec,
    resolve_norm,
    step_regime,
)
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec
from basinlab.optim.weight_decay import weight_decay_config
from basinlab.utils.checks import check_int

__all__ = ["BasicBlock", "Bottleneck", "CifarResNet", "ImageNetResNet", "CIFAR_REGIME",
           "IMAGENET_REGIME"]

# convNet's CIFAR ResNet schedule (He et al.: 0.1, /10 at 32k and 48k iterations = epochs 81, 122),
# with convNet's regularizer: weight decay on conv and linear weights only (optim/weight_decay.py).
CIFAR_REGIME = step_regime({"optimizer": "SGD", "lr": 0.1, "momentum": 0.9,
                            "regularizer": weight_decay_config(1e-4)}, milestones=(81, 122, 164))
CIFAR_EPOCHS = 200
# pytorch/examples' ImageNet schedule (/10 every 30 epochs), with the Online Normalization
# reference's extra step at 80.
IMAGENET_REGIME = step_regime({"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
                              milestones=(30, 60, 80))
IMAGENET_EPOCHS = 90

_IMAGENET_DEPTHS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                    50: ("bottleneck", (3, 4, 6, 3)), 101: ("bottleneck", (3, 4, 23, 3)),
                    152: ("bottleneck", (3, 8, 36, 3))}
_STEMS = ("auto", "imagenet", "cifar")


# Convs are built by the norm spec: weight-standardised under gn_ws, plain otherwise.
def conv3x3(cin: int, cout: int, norm: NormSpec, stride: int = 1) -> nn.Conv2d:
    return norm.conv(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, norm: NormSpec, stride: int = 1) -> nn.Conv2d:
    return norm.conv(cin, cout, 1, stride=stride, bias=False)


def projection(cin: int, cout: int, stride: int, norm: NormSpec) -> nn.Sequential | None:
    """1x1 conv + norm shortcut where the shape changes, None (identity) where it does not."""
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(conv1x1(cin, cout, norm, stride), norm.make(cout))


class BasicBlock(nn.Module):
    """conv3x3-norm-ReLU-conv3x3-norm, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, norm: NormSpec):
        super().__init__()
        self.conv1 = conv3x3(cin, planes, norm, stride)
        self.bn1, self.act1 = norm.norm_act(planes)
        self.conv2 = conv3x3(planes, planes, norm)
        self.bn2 = norm.make(planes)
        # Not in-place: hooks (autoHyper metrics, landscape probes) may hold activations. After the sum: ReLU.
        self.relu = nn.ReLU()
        self.downsample = projection(cin, planes, stride, norm)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride: v1.5), 1x1 expand x4, each followed by a norm."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, norm: NormSpec):
        super().__init__()
        width = planes * self.expansion
        self.conv1 = conv1x1(cin, planes, norm)
        self.bn1, self.act1 = norm.norm_act(planes)
        self.conv2 = conv3x3(planes, planes, norm, stride)
        self.bn2, self.act2 = norm.norm_act(planes)
        self.conv3 = conv1x1(planes, width, norm)
        self.bn3 = norm.make(width)
        self.relu = nn.ReLU()
        self.downsample = projection(cin, width, stride, norm)

    def forward(self, x):
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


def make_stage(block, cin: int, planes: int, blocks: int, stride: int, norm: NormSpec) -> nn.Sequential:
    layers = [block(cin, planes, stride, norm)]
    layers += [block(planes * block.expansion, planes, 1, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 (or 28x28) inputs."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, norm: NormSpec = NormSpec()):
        super().__init__()
        if check_int(depth, "resnet depth", maximum=2000) < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = conv3x3(in_channels, 16, norm)
        self.bn1, self.act1 = norm.norm_act(16)
        self.layer1 = make_stage(BasicBlock, 16, 16, n, 1, norm)
        self.layer2 = make_stage(BasicBlock, 16, 32, n, 2, norm)
        self.layer3 = make_stage(BasicBlock, 32, 64, n, 2, norm)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        init_weights_(self)

    def forward(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50/101/152 v1.5; ``small_stem`` swaps the 7x7/2 + max-pool stem for a 3x3/1 conv."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, norm: NormSpec = NormSpec(),
                 small_stem: bool = False):
        super().__init__()
        if depth not in _IMAGENET_DEPTHS:
            raise ConfigError(f"ImageNet ResNet depth must be one of {sorted(_IMAGENET_DEPTHS)}, got {depth}")
        kind, blocks = _IMAGENET_DEPTHS[depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.depth, self.small_stem = depth, small_stem
        if small_stem:
            self.conv1 = conv3x3(in_channels, 64, norm)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = norm.conv(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1, self.act1 = norm.norm_act(64)
        cin = 64
        for i, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks)):
            setattr(self, f"layer{i + 1}", make_stage(block, cin, planes, count, 1 if i == 0 else 2, norm))
            cin = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights_(self)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def _regime_for(spec: InputSpec) -> tuple[list[dict], int]:
    return (CIFAR_REGIME, CIFAR_EPOCHS) if spec.small else (IMAGENET_REGIME, IMAGENET_EPOCHS)


def build_cifar_resnet(depth, num_classes, dataset, norm="batch", in_channels=None) -> nn.Module:
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    model = CifarResNet(depth, num_classes, spec.channels, norm)
    regime, epochs = _regime_for(spec)
    text = f"CIFAR ResNet-{depth} (3x3 basic blocks, projection shortcuts)"
    return finish_model(model, description=text, norm=norm, regime=regime, default_epochs=epochs)


def build_imagenet_resnet(depth, num_classes, dataset, norm="batch", in_channels=None, stem="auto") -> nn.Module:
    check_choice("stem", stem, _STEMS)
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    small_stem = spec.small if stem == "auto" else stem == "cifar"
    model = ImageNetResNet(depth, num_classes, spec.channels, norm, small_stem=small_stem)
    regime, epochs = _regime_for(spec)
    kind = "basic" if _IMAGENET_DEPTHS[depth][0] == "basic" else "bottleneck"
    if small_stem:
        text = f"ResNet-{depth} v1.5 ({kind} blocks, 3x3 stride-1 stem without max-pool for small inputs)"
    else:
        text = f"ImageNet ResNet-{depth} v1.5 ({kind} blocks, 7x7 stem + max-pool)"
    return finish_model(model, description=text, norm=norm, regime=regime, default_epochs=epochs)


@register_model("resnet")
def resnet(num_classes, dataset, depth=None, norm="batch", in_channels=None):
    """convNet's ``resnet``: CIFAR ResNet (default depth 44) on 28x28/32x32 datasets,
    ImageNet ResNet (default depth 50) otherwise. The depth built is in ``model.description``."""
    spec = input_spec(dataset, in_channels)
    if spec.small:
        return build_cifar_resnet(44 if depth is None else depth, num_classes, dataset, norm, in_channels)
    depth = 50 if depth is None else depth
    if depth not in _IMAGENET_DEPTHS:
        raise ConfigError(f"resnet depth on {dataset} must be one of {sorted(_IMAGENET_DEPTHS)}, got {depth}; "
                          "for a CIFAR ResNet on larger images name it (resnet20, resnet56, ...)")
    return build_imagenet_resnet(depth, num_classes, dataset, norm, in_channels)


def _register_cifar(depth: int):
    def factory(num_classes, dataset, norm="batch", in_channels=None):
        return build_cifar_resnet(depth, num_classes, dataset, norm, in_channels)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = f"CIFAR ResNet-{depth}: 3 stages x {(depth - 2) // 6} basic blocks, projection shortcuts."
    return register_model(f"resnet{depth}")(factory)


def _register_imagenet(depth: int):
    def factory(num_classes, dataset, norm="batch", in_channels=None, stem="auto"):
        return build_imagenet_resnet(depth, num_classes, dataset, norm, in_channels, stem)

    factory.__name__ = factory.__qualname__ = f"resnet{depth}"
    factory.__doc__ = (f"ImageNet ResNet-{depth} v1.5; stem 'auto' uses a 3x3 stride-1 stem on "
                       "28x28/32x32 datasets, 'imagenet' or 'cifar' forces one.")
    return register_model(f"resnet{depth}")(factory)


resnet20, resnet32, resnet44, resnet56, resnet110 = map(_register_cifar, (20, 32, 44, 56, 110))
resnet18, resnet34, resnet50, resnet101, resnet152 = map(_register_imagenet, (18, 34, 50, 101, 152))
