"""Batch Renormalization (Ioffe 2017, Algorithm 1), with the paper's r_max / d_max warm-up.

Training, per channel, with the batch mean mu_B and sigma_B = sqrt(biased batch variance + eps):

    r = stop_gradient(clip(sigma_B / sigma, 1 / r_max, r_max))
    d = stop_gradient(clip((mu_B - mu) / sigma, -d_max, d_max))
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta
    mu += momentum * (mu_B - mu);  sigma += momentum * (sigma_B - sigma)

Inference: y = gamma * (x - mu) / sigma + beta. The moving averages are of the mean and of sigma itself, as
the paper's algorithm writes them (not of the variance, as batch norm's).

Warm-up (the paper's ImageNet setting, section 4): r_max = 1 and d_max = 0 (plain batch norm) for the first 5000
steps, then relaxed linearly to r_max = 3 at step 40k and d_max = 5 at step 25k (the paper says "gradually";
linear is our reading). Steps are the layer's training forward passes, counted in its `num_batches_tracked`
buffer, so a checkpoint carries the schedule and a resumed run continues it exactly.
"""

from __future__ import annotations

import torch
from torch import nn

from basinlab.nn.batch_free import refuse_one_value_per_channel, wide
from basinlab.nn.batch_stats import batch_var_mean

# (first step of relaxation, step at which the final value is reached, start value, final value)
R_MAX_SCHEDULE = (5_000, 40_000, 1.0, 3.0)
D_MAX_SCHEDULE = (5_000, 25_000, 0.0, 5.0)
BATCH_RENORM_MOMENTUM = 0.1   # torch's batch norm default, as basinlab's batch mode (the paper gives none)


def ramp(step: int, schedule: tuple[float, float, float, float]) -> float:
    """The schedule's value at ``step``: its start value until `begin`, linear to its final value at `end`."""
    begin, end, start, final = schedule
    if step <= begin:
        return start
    if step >= end:
        return final
    return start + (final - start) * (step - begin) / (end - begin)


class BatchRenorm(nn.Module):
    """Batch Renormalization over (N, C, H, W) or (N, C) inputs; float32 statistics, also under autocast."""

    uses_batch_statistics = True  # training normalises with the batch's statistics (engine checks, Hessian modes)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = BATCH_RENORM_MOMENTUM,
                 r_max_schedule=R_MAX_SCHEDULE, d_max_schedule=D_MAX_SCHEDULE):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.r_max_schedule, self.d_max_schedule = tuple(r_max_schedule), tuple(d_max_schedule)
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_std", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.sync_batch_statistics = False  # --sync-bn: statistics over every process's batch

    def limits(self) -> tuple[float, float]:
        """(r_max, d_max) for the next training step."""
        step = int(self.num_batches_tracked)
        return ramp(step, self.r_max_schedule), ramp(step, self.d_max_schedule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(f"BatchRenorm expects (N, {self.num_features}) or (N, {self.num_features}, H, W) "
                             f"inputs, got shape {tuple(x.shape)}")
        shape = (1, -1) + (1,) * (x.dim() - 2)
        xf = wide(x)
        if self.training:
            scale, shift = self._train_scale_shift(xf)
        else:
            scale = 1 / self.running_std
            shift = -self.running_mean * scale
        # gamma * ((x - mu) / sigma * r + d) + beta = x * scale' + shift': one pass over x, not six (the gradient
        # still flows through the batch mean and sigma_B inside scale and shift).
        scale, shift = scale * self.weight, shift * self.weight + self.bias
        return torch.addcmul(shift.view(shape), xf, scale.view(shape)).to(x.dtype)

    def _train_scale_shift(self, xf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per channel (r / sigma_B, d - mu_B r / sigma_B) of Algorithm 1, and the moving averages updated."""
        refuse_one_value_per_channel(self, xf)
        batch_var, batch_mean, _ = batch_var_mean(xf, self.sync_batch_statistics)
        batch_std = (batch_var + self.eps).sqrt()
        r_max, d_max = self.limits()
        with torch.no_grad():
            r = (batch_std / self.running_std).clamp(1 / r_max, r_max)
            d = ((batch_mean - self.running_mean) / self.running_std).clamp(-d_max, d_max)
            self.running_mean.add_(self.momentum * (batch_mean - self.running_mean))
            self.running_std.add_(self.momentum * (batch_std - self.running_std))
            self.num_batches_tracked.add_(1)
        scale = r / batch_std
        return scale, d - batch_mean * scale

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, " \
               f"r_max={self.r_max_schedule}, d_max={self.d_max_schedule}"
