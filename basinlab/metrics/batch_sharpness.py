"""Batch sharpness: the curvature of each mini-batch loss along its own gradient, averaged over batches.

    batch_sharpness = mean over batches B of  g_B^T H_B g_B / ||g_B||^2,   g_B = grad L_B, H_B = hess L_B

(Andreyev & Beneventano 2024, "Edge of Stochastic Stability": for mini-batch SGD it is this quantity, not the
full-batch lambda_max, that rises to 2/lr and hovers there). Each batch is one sample of the mini-batch the
optimizer sees, so pass batches of the run's batch size; the mean is unweighted. One Hessian-vector product per
batch (the gradient with its graph, then one backward). Conventions (model, criterion, batches; eval/train mode;
model state restored): basinlab.metrics.hessian.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from basinlab.metrics.hessian import _Batches, _measurement_mode, _prepare

__all__ = ["BatchSharpness", "batch_sharpness"]


@dataclass
class BatchSharpness:
    """``value``: the mean over batches; ``per_batch``: each batch's Rayleigh quotient; ``hvp_count``."""

    value: float
    per_batch: list
    hvp_count: int


def batch_sharpness(model: nn.Module, criterion: Callable, batches, *, params=None,
                    mode: str = "train") -> BatchSharpness:
    """The mean of ``g_B^T H_B g_B / ||g_B||^2`` over ``batches`` (a batch with a zero gradient counts 0)."""
    ps = _prepare(model, criterion, params)
    quotients = []
    with _measurement_mode(model, mode), torch.enable_grad():
        for x, y, _ in _Batches(batches, ps[0].device, ps[0].dtype):
            grads = torch.autograd.grad(criterion(model(x), y), ps, create_graph=True, allow_unused=True)
            pairs = [(g, p) for g, p in zip(grads, ps) if g is not None and g.requires_grad]  # else no curvature
            flat = [g.detach() for g, _ in pairs]
            squared = sum(float(g.double().pow(2).sum()) for g in flat)
            hg = torch.autograd.grad([g for g, _ in pairs], [p for _, p in pairs], grad_outputs=flat,
                                     allow_unused=True)
            curvature = sum(float((h.double() * g.double()).sum()) for h, g in zip(hg, flat) if h is not None)
            quotients.append(curvature / squared if squared > 0 else 0.0)
    return BatchSharpness(sum(quotients) / len(quotients), quotients, len(quotients))
