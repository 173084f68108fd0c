"""Presets for the SmoothOut seed's experiments (Keskar's F1/C1/C3 and ResNet-44), small and large batch.

For each network: `smoothout-<net>-sb` (batch 128), `-sb-smoothout`, `-lb` (large batch with ghost
batches of 128 and lr x sqrt(B/128), the seed's main_gbn.py with --lr_bb_fix), `-lb-smoothout`
(uniform absolute noise) and `-lb-adasmoothout` (noise relative to filter norms). Every preset clips
the gradient norm at 5, as the seed's trainer always did. Regimes and epochs are the models' own
(basinlab.models.keskar / resnet) except F1, which the seed ran for 50 epochs.

Noise strengths are our choice, not numbers checked against the paper (its tables were not available
to us); see docs/methods/flat-minima.md.
"""
from __future__ import annotations

GHOST = 128
NETWORKS = {
    # name: (model, dataset, large batch, extra options, uniform A, filter A)
    "f1-mnist": ("f1", "mnist", 4096, {"epochs": 50}, 0.005, 0.02),
    "c1-cifar10": ("cifar10_shallow", "cifar10", 4096, {}, 0.005, 0.02),
    "c3-cifar100": ("cifar100_shallow", "cifar100", 4096, {}, 0.005, 0.02),
    "resnet44-cifar10": ("resnet44", "cifar10", 2048, {}, 0.002, 0.01),
}


def _presets_for(key: str, model: str, dataset: str, large: int, extra: dict, uniform_a: float,
                 filter_a: float) -> dict[str, dict]:
    base = {"model": model, "dataset": dataset, "grad_clip": 5.0, **extra}
    small = {**base, "batch_size": GHOST}
    lb = {**base, "batch_size": large, "ghost_batch": GHOST, "lr_scale_batch": "sqrt"}
    what = f"{model} on {dataset}"
    return {
        f"smoothout-{key}-sb": {**small, "_about": f"{what}, batch {GHOST} (small-batch baseline)"},
        f"smoothout-{key}-sb-smoothout": {**small, "smoothout": uniform_a,
                                          "_about": f"{what}, batch {GHOST}, SmoothOut A={uniform_a:g}"},
        f"smoothout-{key}-lb": {**lb, "_about": f"{what}, batch {large}, ghost batches of {GHOST}, "
                                               f"lr x sqrt(B/{GHOST})"},
        f"smoothout-{key}-lb-smoothout": {**lb, "smoothout": uniform_a,
                                          "_about": f"{what}, batch {large}/{GHOST}, SmoothOut A={uniform_a:g}"},
        f"smoothout-{key}-lb-adasmoothout": {**lb, "smoothout": filter_a, "smoothout_adapt": "filter",
                                             "_about": f"{what}, batch {large}/{GHOST}, AdaSmoothOut A={filter_a:g}"},
    }


PRESETS: dict[str, dict] = {}
for _key, _spec in NETWORKS.items():
    PRESETS.update(_presets_for(_key, *_spec))
