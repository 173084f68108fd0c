"""Leaving a model as it was: a block that changes modes or buffers (a probe, a measurement) undoes it."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


def uses_batch_statistics(module: nn.Module) -> bool:
    """Whether the layer normalises with the statistics of the batch in training mode: PyTorch's BatchNorm, and
    any layer that says so with a true `uses_batch_statistics` (basinlab's EvoNorm-B0, Batch Renorm)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or bool(getattr(module, "uses_batch_statistics", False))


def random_state_kept(device=None):
    """torch's global random state, and `device`'s where it is a CUDA device, restored when the block ends."""
    device = torch.device(device) if device is not None else None
    return torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else [])


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
