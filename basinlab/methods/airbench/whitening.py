"""--whiten-bias-epochs E: the whitening layer's bias trains for the first E epochs and is kept after.

airbench turns `requires_grad` off. Here the parameters that need gradients stay fixed, as data-parallel training
wants, and the bias is frozen in two parts that together give airbench's update for every step computed in this
process (a real asynchronous worker's gradients come from another process, without the hook):
- from epoch E on, a gradient hook makes every backward give the bias a zero gradient, so whatever reads the
  gradients before the step (--grad-clip's norm, SAM's perturbation and its norm) leaves the bias out. So do the
  measurements taken during training (the sharpness monitors), as they would leave out a parameter without
  requires_grad: from epoch E they measure the other parameters' curvature;
- before each step its gradient is dropped, so the optimizer skips it (torch's optimizers skip a parameter
  without a gradient: no momentum from earlier epochs, no weight decay).
"""
from __future__ import annotations

import torch
from torch import nn

from basinlab.engine.callbacks import Callback
from basinlab.errors import ConfigError


def zero_gradient(grad: torch.Tensor) -> torch.Tensor:
    """A zero in place of the gradient; one that keeps the graph when a measurement differentiates the gradient
    again (create_graph), so a Hessian-vector product sees a zero row instead of failing."""
    return grad * 0 if grad.requires_grad else torch.zeros_like(grad)


class WhitenBiasEpochs(Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bias = None
        self.hook = None  # zero_gradient's handle while the bias is frozen

    def setup(self, run) -> None:
        whiten = getattr(run.model, "whiten", None)
        if not isinstance(whiten, nn.Conv2d) or whiten.bias is None:
            raise ConfigError(f"--whiten-bias-epochs needs a model with a whitening conv that has a bias "
                              f"(model.whiten, as airbench94 has); {run.cfg.model} has none: drop the option")
        self.bias = whiten.bias

    def on_epoch_start(self, run, epoch: int) -> None:
        if epoch >= self.epochs and self.hook is None:
            self.hook = self.bias.register_hook(zero_gradient)

    def on_before_optimizer_step(self, run, optimizer) -> None:
        if run.epoch >= self.epochs:
            self.bias.grad = None

    def on_fit_end(self, run) -> None:
        if self.hook is not None:  # the model outlives the run (the Python API returns it)
            self.hook.remove()
            self.hook = None
