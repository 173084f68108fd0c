"""The edges: where each optimizer's quadratic model stops being stable, as a bound on a sharpness.

On a quadratic with curvature lambda along an eigenvector, an update is stable while lambda stays below
  * SGD                         2 / lr                                  (gradient descent, Cohen et al. 2021)
  * SGD, momentum b (heavy ball, PyTorch's form v = b v + (1 - d) g, w -= lr v)
                                (2 + 2b) / ((1 - d) lr)
  * SGD, Nesterov momentum b    (2 + 2b) / ((1 + 2b) lr)
  * Adam / AdamW, beta1 b1      (2 + 2 b1) / ((1 - b1) lr) on the *preconditioned* sharpness
                                lambda_max(P^-1 H), P = (1 - b1^t) (sqrt(v_t / (1 - b2^t)) + eps)
                                (Cohen et al. 2022: 38 / lr at b1 = 0.9)
  * a parameter-server run      the strategy's delayed threshold on lr x lambda (At Stability's Edge; its
                                stability_threshold(optimizer)), divided by lr
Param groups with different lrs (a model's lr_scale groups, e.g. airbench94's BatchNorm biases at 64x) make the
update w -= lr_0 S v with S = diag(lr_g / lr_0): its edge is group 0's, on the sharpness of S^1/2 H S^1/2 (for Adam,
S^1/2 P^-1/2 H P^-1/2 S^1/2); lambda_max alone is then no longer what the edge bounds. Groups that differ in momentum,
dampening, Nesterov or betas have no common edge (NaN).
Weight decay adds wd to every eigenvalue of the update's curvature; the sharpness here is the loss's alone, as
in the papers (lr x wd is ~5e-5 in the presets: below what a measurement resolves).
"""
from __future__ import annotations

import math

import torch

ADAM_FAMILY = (torch.optim.Adam, torch.optim.AdamW)


def is_adam(optimizer) -> bool:
    return isinstance(optimizer, ADAM_FAMILY)


def sgd_threshold(group: dict) -> float:
    """The sharpness at which (momentum) SGD with this param group's settings stops being stable."""
    lr, momentum = group["lr"], group.get("momentum", 0.0) or 0.0
    if lr <= 0:
        return math.inf
    if momentum and group.get("nesterov"):
        return (2 + 2 * momentum) / ((1 + 2 * momentum) * lr)
    dampening = group.get("dampening", 0.0) if momentum else 0.0
    return (2 + 2 * momentum) / ((1 - dampening) * lr) if dampening < 1 else math.inf


def adam_threshold(group: dict) -> float:
    """The bound on Adam's preconditioned sharpness: (2 + 2 beta1) / ((1 - beta1) lr)."""
    beta1, lr = group["betas"][0], group["lr"]
    return (2 + 2 * beta1) / ((1 - beta1) * lr) if lr > 0 and beta1 < 1 else math.inf


def adam_scale(optimizer, params) -> list | None:
    """P^{-1/2} for each parameter (P as above), or None before Adam's first step (no second moments yet)."""
    group = optimizer.param_groups[0]
    beta1, beta2 = group["betas"]
    scale = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            return None
        step = float(state["step"])
        second = state["max_exp_avg_sq"] if group.get("amsgrad") else state["exp_avg_sq"]
        denominator = (second / (1 - beta2 ** step)).sqrt().add_(group["eps"]) * (1 - beta1 ** step)
        scale.append(denominator.rsqrt())
    return scale


def has_lr_groups(optimizer) -> bool:
    """Whether the groups holding trainable parameters have different lrs (then the edge bounds the lr-scaled
    sharpness): a model's lr_scale groups, AdaS's per-layer lrs."""
    moving = [group for group in optimizer.param_groups if any(p.requires_grad for p in group["params"])]
    return len({group["lr"] for group in moving}) > 1


def is_preconditioned(optimizer) -> bool:
    """Whether the run's edge bounds a preconditioned sharpness (Adam's, or lr groups') rather than lambda_max."""
    return is_adam(optimizer) or (isinstance(optimizer, torch.optim.SGD) and has_lr_groups(optimizer))


def lr_group_scale(optimizer, params) -> list | None:
    """S^{1/2} = sqrt(lr_g / lr_0) for each parameter (as tensors shaped like it), or None where a parameter is in
    no group or its group's lr is 0 (it does not move: no direction of the update's curvature)."""
    reference = optimizer.param_groups[0]["lr"]
    ratio = {id(p): group["lr"] / reference for group in optimizer.param_groups for p in group["params"]} \
        if reference > 0 else {}
    if any(ratio.get(id(p), 0.0) <= 0 for p in params):
        return None
    return [torch.full_like(p, math.sqrt(ratio[id(p)])) for p in params]


def preconditioner_scale(optimizer, params) -> list | None:
    """D such that the run's edge bounds lambda_max(D H D): Adam's P^{-1/2}, times S^{1/2} with lr groups; None
    where the edge bounds lambda_max itself, or where D is not known yet (before Adam's first step)."""
    if not is_preconditioned(optimizer):
        return None
    factors = ([adam_scale(optimizer, params)] if is_adam(optimizer) else []) + \
        ([lr_group_scale(optimizer, params)] if has_lr_groups(optimizer) else [])
    if any(factor is None for factor in factors):
        return None
    return factors[0] if len(factors) == 1 else [a * b for a, b in zip(*factors)]


def _shared_settings(optimizer, keys: tuple[str, ...]) -> bool:
    """Whether every param group has group 0's value for each key (else the groups have no common edge)."""
    first = optimizer.param_groups[0]
    return all(group.get(key) == first.get(key) for group in optimizer.param_groups for key in keys)


def threshold(optimizer, strategy) -> float:
    """The edge for this run's update on the sharpness it is compared with (NaN for an optimizer without a
    known one, or param groups without a common one). AdaS is an SGD: its per-layer lrs are lr groups."""
    group = optimizer.param_groups[0]
    if not _shared_settings(optimizer, ("momentum", "dampening", "nesterov", "betas")):
        return math.nan
    delayed = getattr(strategy, "stability_threshold", None)
    if delayed is not None:
        return delayed(optimizer) / group["lr"] if group["lr"] > 0 else math.inf
    if is_adam(optimizer):
        return adam_threshold(group)
    if isinstance(optimizer, torch.optim.SGD):
        return sgd_threshold(group)
    return math.nan
