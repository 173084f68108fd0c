"""Norm layers that do not depend on the batch (FRN+TLU, EvoNorm-S0, weight-standardised convs) and EvoNorm-B0.

Each layer takes (N, C, H, W) after a conv or (N, C) after a linear layer; on (N, C) the per-sample
statistics over H, W are those of one value. Statistics are computed in float32 (also under autocast), as
timm's layers do. ``apply_act=False`` gives the layer without its nonlinearity, for the norms that a model puts
before a residual sum (where batch norm has no ReLU after it); docs/methods/norms.md states each choice.

Matched against timm 1.0.31 (timm/layers/filter_response_norm.py, evo_norm.py, std_conv.py) on identical inputs
and parameters; tests/test_batch_free_norms.py checks each formula written out independently.
"""

from __future__ import annotations

import torch
from torch import nn

from basinlab.nn.batch_stats import batch_var_mean

# FRN (Singh & Krishnan 2020): eps = 1e-6 + |eps_l|, eps_l one learned scalar per layer starting at 1e-4
# (the paper's learned eps, lower-bounded by the fixed part; TensorFlow Addons' FilterResponseNormalization).
FRN_EPS = 1e-6
FRN_LEARNED_EPS_INIT = 1e-4
EVONORM_S0_EPS = 1e-5        # timm EvoNorm2dS0
EVONORM_B0_EPS = 1e-3        # timm EvoNorm2dB0
EVONORM_B0_MOMENTUM = 0.1    # timm EvoNorm2dB0
WS_EPS = 1e-6                # timm StdConv2d


def _channel_view(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector shaped to broadcast over ``x`` ((N, C) or (N, C, H, W)), in x's dtype."""
    return t.to(x.dtype).view(1, -1, *([1] * (x.dim() - 2)))


def _check_input(layer: nn.Module, x: torch.Tensor) -> None:
    if x.dim() not in (2, 4) or x.shape[1] != layer.num_features:
        raise ValueError(f"{type(layer).__name__} expects (N, {layer.num_features}) or (N, {layer.num_features}, H, W) "
                         f"inputs, got shape {tuple(x.shape)}")


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 at least (statistics of half / bfloat16 inputs), float64 kept."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _spatial_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over H, W (keepdim); on (N, C) features the values themselves (one value per channel)."""
    return values.mean(dim=(2, 3), keepdim=True) if values.dim() == 4 else values


def instance_variance(x: torch.Tensor) -> torch.Tensor:
    """Biased per-sample, per-channel variance over H, W in float32; 0 on (N, C) features."""
    x = wide(x)
    return x.var(dim=(2, 3), unbiased=False, keepdim=True) if x.dim() == 4 else torch.zeros_like(x)


def group_std(x: torch.Tensor, groups: int, eps: float) -> torch.Tensor:
    """sqrt(biased variance + eps) over each sample's group of C / groups channels (and H, W), in float32,
    expanded to x's shape."""
    n, c = x.shape[:2]
    grouped = wide(x).reshape(n, groups, -1)
    std = grouped.var(dim=2, unbiased=False, keepdim=True).add(eps).sqrt()
    return std.expand_as(grouped).reshape(x.shape)


def above_threshold(values: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """max(values, threshold) with the threshold broadcast. torch.maximum's backward splits the gradient at ties
    with full-size eq / where / masked_fill / div passes, 3-5x the forward's cost on a CPU; here the gradient goes
    to ``values`` where they exceed the threshold, else to the threshold (ties are a set of measure zero)."""
    return torch.where(values > threshold, values, threshold)


def refuse_one_value_per_channel(layer: nn.Module, x: torch.Tensor) -> None:
    """Batch statistics need two values per channel: the same rule and message as torch's batch norm, which
    basinlab's start-up probe turns into a one-line refusal."""
    if layer.training and x.numel() // x.shape[1] <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)} "
                         f"({type(layer).__name__} uses batch statistics)")


class FilterResponseNorm(nn.Module):
    """FRN with its TLU: y = gamma * x / sqrt(mean_HW(x^2) + eps + |eps_l|) + beta, then max(y, tau).

    No mean is subtracted; TLU's learned threshold tau (init 0) is the paper's fix for the resulting bias.
    ``learned_eps=False`` keeps eps fixed (timm's FilterResponseNormTlu2d, whose eps default is 1e-5).
    """

    def __init__(self, num_features: int, apply_act: bool = True, eps: float = FRN_EPS, learned_eps: bool = True):
        super().__init__()
        self.num_features, self.eps, self.apply_act = num_features, eps, apply_act
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.tau = nn.Parameter(torch.zeros(num_features)) if apply_act else None
        self.eps_learned = nn.Parameter(torch.tensor([FRN_LEARNED_EPS_INIT])) if learned_eps else None

    def total_eps(self) -> torch.Tensor | float:
        return self.eps if self.eps_learned is None else self.eps + self.eps_learned.abs()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        nu2 = _spatial_mean(wide(x).square())
        # One pass over x: gamma / sqrt(nu2 + eps) is a per-sample, per-channel scale (benchmarks/norms.py).
        scale = torch.rsqrt(nu2 + self.total_eps()) * _channel_view(self.weight, nu2)
        y = torch.addcmul(_channel_view(self.bias, nu2), x, scale).to(x.dtype)
        return above_threshold(y, _channel_view(self.tau, x)) if self.tau is not None else y

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, learned_eps={self.eps_learned is not None}, " \
               f"tlu={self.apply_act}"


class EvoNormS0(nn.Module):
    """EvoNorm-S0: y = x * sigmoid(v * x) / group_std(x) * gamma + beta (v init 1); no batch statistics.

    Without its activation (``apply_act=False``): x / group_std(x) * gamma + beta, timm's EvoNorm2dS0a(apply_act=
    False) (timm's EvoNorm2dS0 without act would skip the normalisation altogether).
    """

    def __init__(self, num_features: int, groups: int, apply_act: bool = True, eps: float = EVONORM_S0_EPS):
        super().__init__()
        if num_features % groups:
            raise ValueError(f"EvoNormS0: {num_features} channels do not split into {groups} groups")
        self.num_features, self.groups, self.eps, self.apply_act = num_features, groups, eps, apply_act
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        std = group_std(x, self.groups, self.eps).to(x.dtype)
        if self.v is not None:
            x = x * torch.sigmoid(x * _channel_view(self.v, x))
        y = x / std
        return y * _channel_view(self.weight, x) + _channel_view(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, groups={self.groups}, eps={self.eps}, act={self.apply_act}"


class EvoNormB0(nn.Module):
    """EvoNorm-B0: y = x / max(sqrt(s_b^2 + eps), v * x + sqrt(s_i^2 + eps)) * gamma + beta (timm EvoNorm2dB0).

    s_b^2: the batch variance over (N, H, W) in training (gradient flows through it), the running variance at
    evaluation; the running variance follows timm: unbiased batch variance, momentum 0.1, init 1. s_i^2: each
    sample's variance over H, W. Without its activation: v = 0 (the formula's denominator without its
    nonlinear term; timm's apply_act=False would drop the normalisation).
    """

    uses_batch_statistics = True  # training normalises with the batch's variance (engine checks, Hessian modes)

    def __init__(self, num_features: int, apply_act: bool = True, eps: float = EVONORM_B0_EPS,
                 momentum: float = EVONORM_B0_MOMENTUM):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.apply_act = num_features, eps, momentum, apply_act
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.v = nn.Parameter(torch.ones(num_features)) if apply_act else None
        self.register_buffer("running_var", torch.ones(num_features))
        self.sync_batch_statistics = False  # --sync-bn: the variance over every process's batch

    def _batch_variance(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.running_var
        refuse_one_value_per_channel(self, x)
        var, _, n = batch_var_mean(wide(x), self.sync_batch_statistics)
        with torch.no_grad():
            self.running_var.mul_(1 - self.momentum).add_(var * (self.momentum * n / (n - 1)))
        return var

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x)
        batch_std = _channel_view(self._batch_variance(x).add(self.eps).sqrt(), x)
        instance_std = instance_variance(x).add(self.eps).sqrt().to(x.dtype)
        denominator = instance_std if self.v is None else x * _channel_view(self.v, x) + instance_std
        y = x / above_threshold(denominator, batch_std)
        return y * _channel_view(self.weight, x) + _channel_view(self.bias, x)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, act={self.apply_act}"


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization (Qiao et al. 2019): each output channel's weights are standardised,
    W_hat = (W - mean) / sqrt(var + eps) (biased variance over in_channels x kh x kw, eps 1e-6: timm's
    StdConv2d), at every forward; the stored weight stays the raw one (same state dict keys as nn.Conv2d)."""

    def __init__(self, *args, eps: float = WS_EPS, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        flat = self.weight.reshape(self.out_channels, -1)
        mean = flat.mean(dim=1, keepdim=True)
        var = flat.var(dim=1, unbiased=False, keepdim=True)
        return ((flat - mean) / torch.sqrt(var + self.eps)).reshape_as(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def batch_free_types() -> tuple[type, ...]:
    """The norm layers of this module (for is_norm_module)."""
    return FilterResponseNorm, EvoNormS0, EvoNormB0


__all__ = ["EvoNormB0", "EvoNormS0", "FilterResponseNorm", "StdConv2d", "batch_free_types", "group_std",
           "above_threshold", "instance_variance", "refuse_one_value_per_channel", "wide"]
