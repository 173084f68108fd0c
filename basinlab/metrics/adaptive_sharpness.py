"""Worst-case and average-case (adaptive) m-sharpness of Andriushchenko, Croce, Mueller, Hein and Flammarion,
"A Modern Look at the Relationship between Sharpness and Generalization" (ICML 2023).

Conventions (model, criterion, batches; eval/train mode; seeded local generator; model left as it was):
basinlab.metrics.hessian.  The algorithm is the authors' own, step for step: ``eval_APGD_sharpness`` and
``eval_average_sharpness`` of tml-epfl/sharpness-vs-generalization, sharpness.py, commit
6d73be94eb88dae6d3096647bb24b92244fae18f (docs/measuring-minima.md lists what differs and why).

For every batch B (of size m: *m-sharpness*) separately, with ``c = |w|`` (adaptive) or ``c = 1`` (plain)
taken elementwise at the measured weights ``w``:

* worst case: ``max_{||delta / c||_p <= rho} L_B(w + delta) - L_B(w)``, sought by their Auto-PGD-style
  ascent (momentum 0.75, step 2 rho halved at Auto-PGD's checkpoints, restart from the best point, the
  largest loss seen counts);
* average case: ``E_xi L_B(w + rho c xi) - L_B(w)`` with ``xi ~ N(0, I)`` (l2) or ``U[-1, 1]^n`` (linf),
  estimated with ``samples`` draws.

The value is the plain mean over batches (the authors' ``(sum worst - sum base) / n_batches``).
Every parameter that requires grad is perturbed (BatchNorm weights and biases too, as the authors did).

Options of the authors' evaluation script: ``normalize_logits`` (their ``--normalize_logits``, the
LogitNormalizationWrapper of models.py: logits centred and scaled to unit l2 norm before the loss, which removes
their scale), and ``random_start`` / ``restarts`` (their ``--sharpness_rand_init`` / ``--n_restarts``: each
restart starts the ascent from a random point of the perturbation set, the largest loss over restarts counts).
Their random start is ``random_init_lw``'s draw, rho c xi with xi ~ U[-1, 1] (linf) or N(0, I) (l2); for l2 that
draw has norm about rho sqrt(n), far outside the ball, so here it is projected onto the ball first (their code
never ran it: ``init_fn`` is a one-element tuple there).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from basinlab.metrics.hessian import (
    SharpnessInputError,
    _Batches,
    _check_int,
    _check_positive,
    _measurement_mode,
    _prepare,
)

__all__ = ["KINDS", "NORMS", "DEFAULT_RHO", "AdaptiveSharpness", "adaptive_sharpness", "apgd_checkpoints"]

KINDS = ("worst", "average")
NORMS = ("linf", "l2")
# rho by (kind, adaptive, norm): the second value of each CIFAR-10 ResNet-18 grid of the authors'
# sh/eval_sharpness_final.sh (their rhos differ by orders of magnitude between definitions)
DEFAULT_RHO = {
    ("worst", True, "linf"): 0.002, ("worst", False, "linf"): 0.001,
    ("worst", True, "l2"): 0.5, ("worst", False, "l2"): 0.5,
    ("average", True, "linf"): 0.2, ("average", False, "linf"): 0.2,
    ("average", True, "l2"): 0.1, ("average", False, "l2"): 0.1,
}
MOMENTUM = 0.75            # weight of the new point in the authors' averaging step
MIN_UPDATE_RATIO = 0.75    # Auto-PGD: halve the step when fewer iterations than this improved the loss
STEP_SIZE_SCALER = 0.5
_ELLIPSOID_TOL = 1e-5      # the authors' bisection stops when | ||delta / c|| - rho | <= this
# bounds of our own (their loop has none and never ends once 1e-5 is below the dtype's resolution at rho):
# a tolerance of a few ulp of rho (1e-5 still rules for rho < ~10 in float32) and a step budget
_ELLIPSOID_ULPS = 8
_ELLIPSOID_MAX_STEPS = 1000


@dataclass(frozen=True)
class AdaptiveSharpness:
    """One measurement: the mean loss increase over batches and what it cost."""

    value: float                  # mean over batches of (perturbed loss - base loss)
    per_batch: tuple[float, ...]  # each batch's own increase (m-sharpness before averaging)
    base_loss: float              # mean over batches of the unperturbed batch loss
    kind: str
    adaptive: bool
    norm: str
    rho: float
    iterations: int               # worst: ascent steps per batch; average: noise samples per batch
    gradients: int                # forward-backward passes
    forwards: int                 # forward-only passes

    @property
    def std_error(self) -> float:
        """Standard error of the mean over batches (NaN with one batch)."""
        n = len(self.per_batch)
        if n < 2:
            return math.nan
        mean = sum(self.per_batch) / n
        return math.sqrt(sum((v - mean) ** 2 for v in self.per_batch) / (n - 1) / n)


def apgd_checkpoints(iterations: int) -> list[int]:
    """The iterations at which Auto-PGD may halve its step (the authors' ``w`` list, first entry dropped)."""
    p = [0, 0.22]
    w = [0, math.ceil(iterations * 0.22)]
    while w[-1] < iterations and w[-1] != w[-2]:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
        w.append(math.ceil(p[-1] * iterations))
    return w[1:]


def _check_settings(kind, adaptive, norm, rho, step_size):
    if kind not in KINDS:
        raise SharpnessInputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if norm not in NORMS:
        raise SharpnessInputError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if not isinstance(adaptive, bool):
        raise SharpnessInputError(f"adaptive must be True or False, got {adaptive!r}")
    rho = DEFAULT_RHO[(kind, adaptive, norm)] if rho is None else _check_positive(rho, "rho")
    step_size = 2.0 * rho if step_size is None else _check_positive(step_size, "step_size")
    return rho, step_size


def _check_restarts(kind, normalize_logits, random_start, restarts) -> int:
    for name, value in (("normalize_logits", normalize_logits), ("random_start", random_start)):
        if not isinstance(value, bool):
            raise SharpnessInputError(f"{name} must be True or False, got {value!r}")
    restarts = _check_int(restarts, "restarts")
    if restarts > 1 and not random_start:
        raise SharpnessInputError(f"restarts={restarts} repeats the same ascent from delta = 0: set random_start "
                                  f"(the authors' rule: restarts need a random start), or restarts=1")
    if kind == "average" and (random_start or restarts > 1):
        raise SharpnessInputError("random_start and restarts apply to the worst case (its ascent); the average "
                                  "case draws its own noise")
    return restarts


def logits_normalized(logits: Tensor) -> Tensor:
    """Centred logits scaled to unit l2 norm per example (the authors' LogitNormalizationWrapper)."""
    centred = logits - logits.mean(dim=-1, keepdim=True)
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-10)


def adaptive_sharpness(model: nn.Module, criterion: Callable, batches, *, kind: str = "worst",
                       adaptive: bool = True, norm: str = "linf", rho: float | None = None, iterations: int = 20,
                       step_size: float | None = None, samples: int = 20, seed: int = 0, mode: str = "eval",
                       params=None, normalize_logits: bool = False, random_start: bool = False,
                       restarts: int = 1) -> AdaptiveSharpness:
    """Worst-case (``kind="worst"``) or average-case (``"average"``) sharpness, adaptive or plain, in an
    ``l2`` or ``linf`` ball of radius ``rho`` (default: ``DEFAULT_RHO``), per batch and averaged.

    ``iterations``: ascent steps per batch (worst case; the authors' 20); ``step_size``: the first ascent
    step (default ``2 rho``, theirs); ``samples``: noise draws per batch (average case; their 20).
    ``seed`` drives the noise and the random starts (a local CPU generator; by default the worst case starts at
    ``delta = 0``, as theirs, and draws nothing).  ``normalize_logits``: the loss of centred, unit-norm logits
    (both the base and the perturbed loss).  ``random_start``: each ascent starts at a random point of the set;
    ``restarts``: ascents per batch, the largest loss counts (more than one needs ``random_start``).
    The weights, modes, buffers and ``.grad`` are left as they were.
    """
    ps = _prepare(model, criterion, params)
    rho, step_size = _check_settings(kind, adaptive, norm, rho, step_size)
    iterations = _check_int(iterations, "iterations")
    samples = _check_int(samples, "samples")
    seed = _check_int(seed, "seed", minimum=0)
    restarts = _check_restarts(kind, normalize_logits, random_start, restarts)
    run = _Perturbation(model, criterion, ps, adaptive, norm, rho, normalize_logits)
    data = _Batches(batches, ps[0].device, ps[0].dtype)
    gen = torch.Generator().manual_seed(seed)
    bases, perturbed = [], []
    try:
        with _measurement_mode(model, mode):
            for x, y, _ in data:
                run.restore()
                base = run.loss(x, y)
                if kind == "worst":
                    top = max(run.worst_case(x, y, base, iterations, step_size, gen if random_start else None)
                              for _ in range(restarts))
                else:
                    top = run.average_case(x, y, samples, gen)
                bases.append(base)
                perturbed.append(top)
    finally:
        run.restore()
    value = (sum(perturbed) - sum(bases)) / len(bases)  # the authors' order of operations
    if run.non_finite or not math.isfinite(value):  # the authors would skip a NaN point silently
        raise SharpnessInputError(f"{kind}-case sharpness ({'adaptive' if adaptive else 'plain'} {norm}, rho "
                                  f"{rho:g}): the loss is not finite at a perturbed point (it overflows inside "
                                  f"the perturbation set); use a smaller rho")
    steps = iterations * restarts if kind == "worst" else samples
    return AdaptiveSharpness(value=value, per_batch=tuple(t - b for t, b in zip(perturbed, bases)),
                             base_loss=sum(bases) / len(bases), kind=kind, adaptive=adaptive, norm=norm, rho=rho,
                             iterations=steps, gradients=run.gradients, forwards=run.forwards)


class _Perturbation:
    """The weights ``w0 + delta`` of one measurement, the authors' ascent and noise on them, and counters."""

    def __init__(self, model, criterion, params, adaptive, norm, rho, normalize_logits=False):
        self.model, self.criterion, self.params = model, criterion, params
        self.norm, self.rho, self.adaptive, self.normalize_logits = norm, rho, adaptive, normalize_logits
        self.origin = [p.detach().clone() for p in params]
        self.scale = [w.abs() for w in self.origin] if adaptive else [1] * len(params)
        # the weighted norm ||delta / c||: coordinates with w = 0 never move (their steps are scaled by 0)
        self.divisor = [torch.where(s > 0, s, torch.ones_like(s)) for s in self.scale] if adaptive else self.scale
        self.gradients = self.forwards = 0
        self.non_finite = False

    # ------------------------------------------------------------------ weights and losses
    def set_weights(self, weights) -> None:
        with torch.no_grad():
            for p, w in zip(self.params, weights):
                p.copy_(w)

    def set_delta(self, delta) -> None:
        self.set_weights([w0 + d for w0, d in zip(self.origin, delta)])

    def restore(self) -> None:
        self.set_weights(self.origin)

    def _criterion(self, x, y) -> Tensor:
        logits = self.model(x)
        loss = self.criterion(logits_normalized(logits) if self.normalize_logits else logits, y)
        if loss.dim() != 0:
            raise SharpnessInputError("criterion must return a scalar (mean) loss")
        return loss

    def loss(self, x, y) -> float:
        self.forwards += 1
        with torch.no_grad():
            value = float(self._criterion(x, y))
        self.non_finite = self.non_finite or not math.isfinite(value)
        return value

    def gradient(self, x, y) -> list[Tensor]:
        self.gradients += 1
        with torch.enable_grad():
            grads = torch.autograd.grad(self._criterion(x, y), self.params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    # ------------------------------------------------------------------ average case
    def draw(self, gen: torch.Generator) -> list[Tensor]:
        """``rho c xi``, xi ~ N(0, I) (l2) or U[-1, 1] (linf): the authors' ``random_init_lw``."""
        delta = []
        for w0, s in zip(self.origin, self.scale):
            if self.norm == "l2":
                xi = torch.randn(w0.shape, generator=gen, dtype=w0.dtype)
            else:
                xi = 2 * torch.rand(w0.shape, generator=gen, dtype=w0.dtype) - 1
            delta.append(xi.to(w0.device) * (self.rho * s))
        return delta

    def average_case(self, x, y, samples: int, gen: torch.Generator) -> float:
        """Mean loss over `samples` draws of ``w0 + rho c xi``."""
        total = 0.0
        for _ in range(samples):
            self.set_delta(self.draw(gen))
            total += self.loss(x, y)
        return total / samples

    # ------------------------------------------------------------------ worst case
    def worst_case(self, x, y, base: float, iterations: int, step_size: float, gen=None) -> float:
        """The largest loss seen by the authors' Auto-PGD ascent, from ``delta = 0`` (their default) or, given a
        generator, from a random point of the set (a draw projected onto it; for linf the draw is inside)."""
        checkpoints = set(apgd_checkpoints(iterations))
        delta = [torch.zeros_like(w) for w in self.origin] if gen is None else self._project(self.draw(gen))
        self.set_delta(delta)   # the first gradient is taken at the start (w0 itself without a random start)
        previous = [d.clone() for d in delta]
        # a halving with no better point yet goes back to the start (theirs: worst_model_dict taken after it)
        worst, worst_weights = base, [p.detach().clone() for p in self.params]
        step, last_step, last_worst, last_checkpoint, updates = step_size, step_size, base, 0, 0
        for i in range(iterations):
            backup = [d.clone() for d in delta]
            with torch.no_grad():
                delta = self._project(self._ascend(delta, self.gradient(x, y), step))
                delta = [MOMENTUM * d + (1 - MOMENTUM) * p for d, p in zip(delta, previous)]
            previous = backup
            self.set_delta(delta)
            current = self.loss(x, y)
            if current > worst:
                worst, worst_weights, updates = current, [p.detach().clone() for p in self.params], updates + 1
            if i in checkpoints:
                too_few = updates < MIN_UPDATE_RATIO * (i - last_checkpoint)
                stalled = last_step == step and last_worst == worst
                last_step, last_worst, last_checkpoint, updates = step, worst, i, 0
                if too_few or stalled:
                    step *= STEP_SIZE_SCALER
                    self.set_weights(worst_weights)  # as theirs: the next gradient is taken there, delta kept
        return worst

    def _ascend(self, delta, grads, step: float) -> list[Tensor]:
        if self.norm == "l2":
            grad_norm = sum(g.norm() ** 2 for g in grads) ** 0.5
            return [d + step / (grad_norm + 1e-12) * g * s for d, g, s in zip(delta, grads, self.scale)]
        return [d + step * g.sign() * s for d, g, s in zip(delta, grads, self.scale)]

    def _project(self, delta) -> list[Tensor]:
        if self.norm == "linf":
            bounds = [s * self.rho if self.adaptive else torch.ones_like(d) * self.rho
                      for d, s in zip(delta, self.scale)]
            return [torch.max(torch.min(d, b), -1.0 * b) for d, b in zip(delta, bounds)]
        norm = self._weighted_norm(delta)
        if not torch.isfinite(norm):  # overflowed: their rescaling by rho / inf would silently zero delta
            self.non_finite = True
        if not self.adaptive:
            return [d * (self.rho / norm) for d in delta] if norm > self.rho else delta
        return self._onto_ellipsoid(delta) if norm > self.rho else delta

    def _weighted_norm(self, delta) -> Tensor:
        return sum(((d / c) ** 2).sum() for d, c in zip(delta, self.divisor)) ** 0.5

    def _onto_ellipsoid(self, delta) -> list[Tensor]:
        """The authors' bisection on the Lagrange multiplier of ``||delta / |w| ||_2 <= rho``."""
        lmbd, low, high, high_limit = 0.1, 0.0, 10.0, 10.0
        inverse_sq = [(1 / s) ** 2 for s in self.scale]
        shrunk, new_norm = delta, self._weighted_norm(delta)
        tol = max(_ELLIPSOID_TOL, _ELLIPSOID_ULPS * torch.finfo(new_norm.dtype).eps * self.rho)
        for _ in range(_ELLIPSOID_MAX_STEPS):
            if not (new_norm - self.rho).abs() > tol:
                break
            shrunk = [d / (1 + 2 * lmbd * q) for d, q in zip(delta, inverse_sq)]
            new_norm = self._weighted_norm(shrunk)
            if new_norm > self.rho:
                lmbd, low = (lmbd + high) / 2, lmbd
            else:
                lmbd, high = (low + lmbd) / 2, lmbd
            if (high_limit - high) < 1e-2:
                high_limit, high = high_limit * 2, high * 2
        return shrunk
