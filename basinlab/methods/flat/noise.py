"""Weight noise shared by SmoothOut training and evaluation under noise (Wen et al. 2018).

A noise model of strength A, scaled by a coefficient c (the training schedule; 1 in evaluation):

    uniform, adapt none    tau_i ~ U(-A c, A c)
    normal,  adapt none    tau_i ~ N(0, (A c)^2)
    adapt weight           tau_i = u_i * A * |w_i| * c,   u_i ~ U(-1, 1) (or N(0, 1))
    adapt filter           tau_j = A c ||w_j|| u_j / ||u_j|| per output filter j (row j along dim 0;
                           AdaSmoothOut): each filter moves by exactly A c times its own norm

Noise is drawn with a local generator on the parameters' device into one flat buffer per dtype (one
kernel per draw, not one per parameter), added with `torch._foreach_add_`, and removed by copying the
saved clean weights back, so that the weights after `restore()` are bit-identical to those before.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from basinlab.choices import NOISE_SCALES, NOISE_TYPES
from basinlab.errors import ConfigError
from basinlab.nn.norms import is_norm_module

EVALUATION_FLAGS = ("--noise", "--noise-type", "--noise-adapt")
ADAPT_MODES = NOISE_SCALES
_TINY = 1e-30  # guards the division by a random direction's norm (zero only with probability 0)


@dataclass(frozen=True)
class NoiseModel:
    """Strength A, distribution and scaling of weight noise (validated on creation)."""

    strength: float
    kind: str = "uniform"
    adapt: str = "none"
    # how the user spelled strength, type and adapt (training or evaluation flags), for error messages
    flags: tuple = ("--smoothout", "--smoothout-noise", "--smoothout-adapt")

    def __post_init__(self):
        strength_flag, type_flag, adapt_flag = self.flags
        if isinstance(self.strength, bool) or not isinstance(self.strength, (int, float)) \
                or not math.isfinite(self.strength) or self.strength < 0:
            raise ConfigError(f"{strength_flag} must be a finite number >= 0 (the noise strength A), "
                              f"got {self.strength!r}")
        if self.kind not in NOISE_TYPES:
            raise ConfigError(f"{type_flag} must be one of {', '.join(NOISE_TYPES)}; got {self.kind!r}")
        if self.adapt not in ADAPT_MODES:
            raise ConfigError(f"{adapt_flag} must be one of {', '.join(ADAPT_MODES)} "
                              f"(filter = AdaSmoothOut); got {self.adapt!r}")

    def describe(self) -> str:
        scale = {"none": "absolute", "weight": "relative to |w|", "filter": "relative to filter norms"}[self.adapt]
        return f"A={self.strength:g} {self.kind} noise, {scale}"


def perturbed_parameters(model: nn.Module, include_norm: bool = False) -> list[nn.Parameter]:
    """Trainable parameters that receive noise; normalisation layers' affine ones only with include_norm.

    The reference's final code excluded BatchNorm affine parameters; we exclude every normalisation
    layer's (batch, group, layer, instance, online), whose gamma/beta play the same role. A model may
    also list parameter names never to perturb in `model.quiet_parameters` (as in the reference).
    """
    quiet = set(getattr(model, "quiet_parameters", ()) or ())
    skip: set[int] = {id(p) for name, p in model.named_parameters() if name in quiet}
    if not include_norm:
        for module in model.modules():
            if is_norm_module(module):
                skip.update(id(p) for p in module.parameters(recurse=False))
    seen: set[int] = set()
    chosen = []
    for p in model.parameters():
        if p.requires_grad and id(p) not in skip and id(p) not in seen:
            seen.add(id(p))
            chosen.append(p)
    return chosen


def noise_generator(params, seed: int) -> torch.Generator:
    """A generator on the parameters' device, seeded (all perturbed parameters share one device)."""
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ConfigError(f"weight noise needs all parameters on one device, found {sorted(map(str, devices))}")
    device = devices.pop() if devices else torch.device("cpu")
    return torch.Generator(device=device).manual_seed(int(seed))


class WeightNoise:
    """Draws, adds and removes noise for a fixed list of parameters, reusing its buffers."""

    def __init__(self, params: list[nn.Parameter], model: NoiseModel, generator: torch.Generator):
        self.params, self.model, self.generator = list(params), model, generator
        self._groups = self._make_groups(self.params)
        self._clean = None  # saved weights while perturbed

    @staticmethod
    def _make_groups(params):
        """{dtype: (flat buffer, [(param, view of the buffer shaped like it)])}."""
        by_dtype: dict[torch.dtype, list] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        groups = {}
        for dtype, members in by_dtype.items():
            flat = torch.empty(sum(p.numel() for p in members), dtype=dtype, device=members[0].device)
            views, offset = [], 0
            for p in members:
                views.append((p, flat[offset:offset + p.numel()].view(p.shape)))
                offset += p.numel()
            groups[dtype] = (flat, views)
        return groups

    @torch.no_grad()
    def draw(self, coef: float = 1.0) -> list[torch.Tensor]:
        """Fresh noise for every parameter (in parameter order); views into reused buffers."""
        scale = self.model.strength * coef
        out = {}
        for flat, views in self._groups.values():
            if self.model.kind == "uniform":
                flat.uniform_(-1.0, 1.0, generator=self.generator)
            else:
                flat.normal_(generator=self.generator)
            self._scale(flat, views, scale)
            out.update({id(p): v for p, v in views})
        return [out[id(p)] for p in self.params]

    def _scale(self, flat, views, scale: float) -> None:
        if self.model.adapt == "filter":
            for p, u in views:
                _to_filter_norms_(u, p.detach(), scale)
            return
        if self.model.adapt == "weight":
            torch._foreach_mul_([u for _, u in views], torch._foreach_abs([p.detach() for p, _ in views]))
        flat.mul_(scale)

    @torch.no_grad()
    def perturb(self, coef: float = 1.0, keep_clean: bool = True) -> list[torch.Tensor]:
        """Add fresh noise to the weights (saving the clean ones first unless keep_clean is False)."""
        if keep_clean:
            if self._clean is None:
                self._clean = [torch.empty_like(p) for p in self.params]
            torch._foreach_copy_(self._clean, [p.detach() for p in self.params])
        noise = self.draw(coef)
        torch._foreach_add_([p.detach() for p in self.params], noise)
        return noise

    @torch.no_grad()
    def restore(self) -> None:
        """Put the clean weights saved by perturb() back, exactly."""
        torch._foreach_copy_([p.detach() for p in self.params], self._clean)

    @contextlib.contextmanager
    def perturbed(self, coef: float = 1.0):
        self.perturb(coef)
        try:
            yield
        finally:
            self.restore()


def _to_filter_norms_(u: torch.Tensor, weight: torch.Tensor, scale: float) -> None:
    """Rescale each row u_j (dim 0) in place to norm scale * ||w_j||; a 1-D tensor has one-element rows."""
    rows = weight.shape[0] if weight.dim() > 0 else 1
    u2 = u.view(rows, -1)
    target = weight.reshape(rows, -1).norm(dim=1).mul_(scale)
    u2.mul_((target / u2.norm(dim=1).clamp_min_(_TINY)).unsqueeze(1))


# ---------------------------------------------------------------------------------------------- evaluation
class _NoisyForward(nn.Module):
    """Runs the wrapped model with fresh noise added for each forward and removed right after."""

    def __init__(self, model: nn.Module, noise: WeightNoise | None):
        super().__init__()
        self.inner, self.noise = model, noise

    def forward(self, x):
        if self.noise is None:
            return self.inner(x)
        with self.noise.perturbed():
            return self.inner(x)


def evaluate_under_noise(model: nn.Module, loader, criterion, noise: NoiseModel, *, samples: int = 1,
                         seed: int = 0, include_norm: bool = False) -> dict:
    """Loss and top-1/top-5 with fresh weight noise per batch (eval mode), over `samples` draws.

    Returns the mean over draws of each metric (`loss`, `acc1`, `acc5`), their spread across draws
    (`loss_std`, ... : sample standard deviation, 0 for one draw), `count`, `samples` and the
    per-draw results (`draws`). Strength 0 touches no weight: the result equals plain evaluation.
    """
    from basinlab.engine.evaluate import evaluate
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"--noise-samples must be an integer >= 1, got {samples!r}")
    params = perturbed_parameters(model, include_norm)
    weight_noise = None
    if noise.strength > 0 and params:
        weight_noise = WeightNoise(params, noise, noise_generator(params, seed))
    wrapped = _NoisyForward(model, weight_noise)
    if weight_noise is None:  # nothing random: one evaluation is every draw
        return summarise_draws([evaluate(wrapped, loader, criterion)] * samples)
    return summarise_draws([evaluate(wrapped, loader, criterion) for _ in range(samples)])


def summarise_draws(draws: list[dict]) -> dict:
    result = {"count": draws[0]["count"], "samples": len(draws), "draws": draws}
    for key in ("loss", "acc1", "acc5"):
        values = torch.tensor([d[key] for d in draws], dtype=torch.float64)
        if bool((values == values[0]).all()):  # keep identical draws exact (a mean may round)
            result[key], result[f"{key}_std"] = draws[0][key], 0.0
            continue
        result[key] = float(values.mean())
        result[f"{key}_std"] = float(values.std())
    return result
