"""Leaving a model as it was: a block that changes modes or buffers (a probe, a measurement) undoes it."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


@contextlib.contextmanager
def model_state_kept(model: nn.Module):
    """Every module's train/eval flag and every buffer (BatchNorm statistics, online-norm state) are as
    before when the block ends, however it ends."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
