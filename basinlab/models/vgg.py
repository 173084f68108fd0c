"""VGG-11/13/16/19 (Simonyan & Zisserman 2015), plain and ``_bn`` variants.

Plain names default to norm 'none' and ``_bn`` names to 'batch'; both take any norm mode, so
``vgg16`` with norm 'batch' is ``vgg16_bn``. Convs have no bias (the package-wide rule), which
makes plain VGG a little smaller than torchvision's (vgg16: 138.34M vs 138.36M parameters).

* 28x28/32x32 datasets (the CIFAR VGG): the conv stack, max-pools with ceil_mode so that 28x28
  inputs also reach 1x1 after five pools, then one FC 512 -> classes.
* otherwise (ImageNet): the conv stack, 7x7 adaptive average pool, FC 4096-4096-classes with
  ReLU and dropout 0.5, as in the paper.
"""

from __future__ import annotations

from torch import nn

from basinlab.models.common import finish_model, init_weights_, input_spec, resolve_norm, step_regime
from basinlab.models.registry import register_model
from basinlab.nn.norms import NormSpec

__all__ = ["VGG", "VGG_CONFIGS"]

VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"),
}


def _regime(small: bool, normalised: bool) -> tuple[list[dict], int]:
    if small:
        # CIFAR: wd 5e-4 as in the common CIFAR VGG recipes; without a norm layer lr 0.1 diverges.
        lr = 0.1 if normalised else 0.01
        first = {"optimizer": "SGD", "lr": lr, "momentum": 0.9, "weight_decay": 5e-4}
        return step_regime(first, milestones=(80, 120)), 160
    # ImageNet: the paper's lr 0.01 and wd 5e-4, /10 every 30 epochs (pytorch/examples' VGG setting).
    first = {"optimizer": "SGD", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    return step_regime(first, milestones=(30, 60)), 90


def make_features(config, in_channels: int, norm: NormSpec, ceil_mode: bool) -> nn.Sequential:
    layers, cin = [], in_channels
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
            continue
        layers += [norm.conv(cin, item, 3, padding=1, bias=False), *norm.norm_act(item)]
        cin = item
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, norm: NormSpec = NormSpec(),
                 small_input: bool = False):
        super().__init__()
        self.features = make_features(VGG_CONFIGS[depth], in_channels, norm, ceil_mode=small_input)
        if small_input:
            self.avgpool = nn.Identity()
            self.classifier = nn.Linear(512, num_classes)
        else:
            self.avgpool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5),
                nn.Linear(4096, num_classes))
        init_weights_(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def build_vgg(depth: int, num_classes: int, dataset: str, norm, in_channels: int | None) -> nn.Module:
    spec, norm = input_spec(dataset, in_channels), resolve_norm(norm, dataset)
    model = VGG(depth, num_classes, spec.channels, norm, small_input=spec.small)
    regime, epochs = _regime(spec.small, norm.mode != "none")
    head = "CIFAR VGG, FC 512->classes" if spec.small else "ImageNet VGG, FC 4096-4096-classes"
    text = f"VGG-{depth} ({head})"
    return finish_model(model, description=text, norm=norm, regime=regime, default_epochs=epochs)


def _register(depth: int, default_norm: str):
    suffix = "_bn" if default_norm == "batch" else ""

    def factory(num_classes, dataset, norm=default_norm, in_channels=None):
        return build_vgg(depth, num_classes, dataset, norm, in_channels)

    factory.__name__ = factory.__qualname__ = f"vgg{depth}{suffix}"
    factory.__doc__ = f"VGG-{depth}, default norm {default_norm!r}."
    return register_model(f"vgg{depth}{suffix}")(factory)


vgg11, vgg13, vgg16, vgg19 = (_register(d, "none") for d in (11, 13, 16, 19))
vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn = (_register(d, "batch") for d in (11, 13, 16, 19))
