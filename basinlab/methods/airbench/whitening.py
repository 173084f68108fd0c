"""--whiten-bias-epochs E: the whitening layer's bias trains for the first E epochs and is kept after.

airbench turns `requires_grad` off; here its gradient is dropped before each later optimizer step, which gives
the same update (torch's optimizers skip a parameter without a gradient: no momentum, no weight decay) and
keeps the set of parameters that need gradients fixed, as data-parallel training wants.
"""
from __future__ import annotations

from torch import nn

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError


class WhitenBiasEpochs(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bias = None

    def setup(self, run) -> None:
        whiten = getattr(run.model, "whiten", None)
        if not isinstance(whiten, nn.Conv2d) or whiten.bias is None:
            raise ConfigError(f"--whiten-bias-epochs needs a model with a whitening conv that has a bias "
                              f"(model.whiten, as airbench94 has); {run.cfg.model} has none: drop the option")
        self.bias = whiten.bias

    def on_before_optimizer_step(self, run, optimizer) -> None:
        if run.epoch >= self.epochs:
            self.bias.grad = None
