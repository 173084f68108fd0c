"""The Online Normalization seed's scripts as presets, defaults exactly as in their usage text.

    cifar10_main.py DIR ...   ->  basinlab train --preset onlinenorm-cifar10 --datasets-dir DIR ...
The seed's --norm-mode defaults to batch; add --norm-mode online (or group, layer, instance, none).
"""
from __future__ import annotations

_SGD = {"optimizer": "SGD", "lr": 0.1, "momentum": 0.9, "lr_multiplier": 0.1, "norm_mode": "batch", "ecm": "ls"}

PRESETS = {
    "onlinenorm-cifar10": {
        **_SGD, "model": "resnet", "depth": 20, "dataset": "cifar10", "epochs": 250, "batch_size": 128,
        "lr_milestones": [100, 150, 200], "weight_decay": 2e-4, "afwd": 1023 / 1024, "abkw": 127 / 128,
        "gn_num_groups": 8,
        "_about": "cifar10_main.py: ResNet-20 (-d), 250 epochs, batch 128, lr 0.1 x0.1 at 100/150/200, wd 2e-4",
    },
    "onlinenorm-cifar100": {
        **_SGD, "model": "resnet", "depth": 20, "dataset": "cifar100", "epochs": 250, "batch_size": 128,
        "lr_milestones": [100, 150, 200], "weight_decay": 2e-4, "afwd": 511 / 512, "abkw": 15 / 16,
        "gn_num_groups": 8,
        "_about": "cifar100_main.py: ResNet-20 (-d), afwd 511/512, abkw 15/16, otherwise as cifar10",
    },
    "onlinenorm-imagenet": {
        **_SGD, "model": "resnet18", "dataset": "imagenet", "epochs": 90, "batch_size": 256,
        "lr_milestones": [30, 60, 80, 90], "weight_decay": 1e-4, "afwd": 0.999, "abkw": 0.99,
        "gn_num_groups": 32,
        "_about": "imagenet_main.py: resnet18 (-a), 90 epochs, batch 256, x0.1 at 30/60/80/90, wd 1e-4",
    },
}
