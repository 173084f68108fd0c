"""The seed's experiment (At Stability's Edge, ResNet-20 on CIFAR-10 with 32 workers) as presets."""

_FIXED_LR_01 = "{'regime': 'fixed', 'regime_lr': 0.1, 'regime_momentum': 0, 'regime_wd': 0}"
_RESNET20_CIFAR10 = {"model": "resnet20", "dataset": "cifar10", "batch_size": 128, "epochs": 200,
                     "model_config": _FIXED_LR_01}

PRESETS = {
    "asgd-resnet20-cifar10": {
        "_about": "seed example: ResNet-20 CIFAR-10, pure A-SGD with 32 workers (delay 31), lr 0.1, no momentum",
        **_RESNET20_CIFAR10, "server": "asgd", "workers": 32,
    },
    "asgd-resnet20-cifar10-adjusted": {
        "_about": "as asgd-resnet20-cifar10 with the paper's rule: lr 0.1*sin(pi/126) for delay 31",
        **_RESNET20_CIFAR10, "server": "asgd", "workers": 32, "adjust_lr": True,
    },
    "sgd-resnet20-cifar10": {
        "_about": "the delay-0 baseline of the asgd presets: one worker, same regime (lr 0.1, no momentum)",
        **_RESNET20_CIFAR10,
    },
}
