"""The learning-rate range test (Smith), independent of the training engine.

An exponential lr sweep from ``start_lr`` to ``end_lr`` over ``num_steps`` optimizer steps records
the training loss, smooths it (exponential moving average, bias-corrected as in fastai and
Lightning), stops when the smoothed loss exceeds ``diverge_factor`` x its best (or is not finite),
and suggests learning rates by three public rules, all on the smoothed curve:

- ``'steepest'`` (Lightning ``lr_find``): the lr where the smoothed loss falls fastest, i.e. the
  minimum of ``d loss / d ln(lr)`` (``np.gradient``; Lightning differentiates w.r.t. the step
  index, which is the same point on an exponential sweep);
- ``'valley'`` (fastai's default ``valley``, developed by ESRI): ``lds[i]`` = length of the longest
  strictly decreasing subsequence ending at point i; the valley ends at the first point with the
  largest ``lds`` (``end``) and ``start = end - lds[end]`` (fastai's convention: one point before
  the valley); with ``sections = (end - start)/3`` the pick is ``start + int(sections) +
  int(sections/2)``, which is about half way into the valley although fastai's documentation says
  "roughly 2/3" (fastai's double loop can record ``start`` from an intermediate ``lds`` value; we
  use the final one, which differs only when ``lds`` at the maximising point jumps by more than 1);
- ``'min_div_10'`` (fastai's ``minimum``): the lr of the smallest smoothed loss, divided by 10.

Before applying them the curve is trimmed as both libraries do: ``skip_start`` points at the
start (default ``num_steps // 10``: fastai's ``num_it//10``, Lightning's 10 at 100 steps) and
``skip_end`` at the end (default 5: fastai; Lightning uses 1); when that leaves fewer than 3 points
less is trimmed.

The model (parameters, buffers such as BatchNorm statistics, gradients, train/eval mode), the
optimizer (state and param groups, via a deep copy of ``state_dict()``) and the RNG states
(torch CPU, every initialised CUDA device, numpy, ``random``) are restored afterwards, also when
the sweep raises. Parameters are restored in place, so the optimizer keeps pointing at them.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from basinlab.errors import ConfigError
from basinlab.utils.figures import new_figure, save_png

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: only the table needs it
    import pandas as pd

__all__ = [
    "LRRangeResult",
    "lr_range_test",
    "plot_lr_range",
    "smooth_losses",
    "suggest_steepest",
    "suggest_valley",
    "suggest_min_div_10",
    "suggest_lrs",
    "SUGGESTION_NAMES",
]

SUGGESTION_NAMES = ("steepest", "valley", "min_div_10")


@dataclass
class LRRangeResult:
    """Curve and suggestions of one range test. ``lrs``/``losses``/``smoothed`` are aligned."""

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestions: dict[str, float]
    stop_reason: str = "completed"  # 'completed', 'diverged', 'non-finite', 'data-exhausted'
    trimmed: tuple[int, int] = (0, 0)  # (skip_start, skip_end) used for the suggestions
    indices: dict[str, int] = field(default_factory=dict)  # index into lrs of each suggestion point

    @property
    def stopped_early(self) -> bool:
        return self.stop_reason != "completed"

    def to_dataframe(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame({"lr": self.lrs, "loss": self.losses, "smoothed": self.smoothed})


# --------------------------------------------------------------------------------------------
# Pure curve rules
# --------------------------------------------------------------------------------------------

def smooth_losses(losses, smooth: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average: ``avg_i = smooth avg_{i-1} + (1-smooth) loss_i``,
    reported as ``avg_i / (1 - smooth**(i+1))``."""
    losses = np.asarray(losses, dtype=np.float64)
    out = np.empty_like(losses)
    avg = 0.0
    for i, x in enumerate(losses):
        avg = smooth * avg + (1.0 - smooth) * x
        out[i] = avg / (1.0 - smooth ** (i + 1))
    return out


def _curve(lrs, losses) -> tuple[np.ndarray, np.ndarray]:
    lrs = np.asarray(lrs, dtype=np.float64)
    losses = np.asarray(losses, dtype=np.float64)
    if lrs.shape != losses.shape or lrs.ndim != 1:
        raise ValueError("lrs and losses must be 1-D and of equal length")
    if lrs.size == 0:
        raise ValueError("an empty curve has no suggestion")
    return lrs, losses


def _finite(lrs, losses) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.isfinite(losses)
    return lrs[keep], losses[keep], np.flatnonzero(keep)


def suggest_steepest(lrs, losses) -> tuple[float, int]:
    """(lr, index) of the most negative slope of ``losses`` w.r.t. ``ln(lr)``."""
    lrs, losses = _curve(lrs, losses)
    flrs, flosses, where = _finite(lrs, losses)
    if flosses.size < 2:
        return math.nan, -1
    grad = np.gradient(flosses, np.log(flrs))
    k = int(np.argmin(grad))
    return float(flrs[k]), int(where[k])


def suggest_valley(lrs, losses) -> tuple[float, int]:
    """(lr, index) by fastai's valley rule (see the module docstring)."""
    lrs, losses = _curve(lrs, losses)
    flrs, flosses, where = _finite(lrs, losses)
    n = flosses.size
    if n == 0:
        return math.nan, -1
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):
        higher = flosses[:i] > flosses[i]
        if higher.any():
            lds[i] = int(lds[:i][higher].max()) + 1
    end = int(np.argmax(lds))  # first index of the largest lds
    start = end - int(lds[end])
    sections = (end - start) / 3
    k = start + int(sections) + int(sections / 2)
    k = min(max(k, 0), n - 1)
    return float(flrs[k]), int(where[k])


def suggest_min_div_10(lrs, losses) -> tuple[float, int]:
    """(lr / 10, index of the minimum) at the smallest loss."""
    lrs, losses = _curve(lrs, losses)
    flrs, flosses, where = _finite(lrs, losses)
    if flosses.size == 0:
        return math.nan, -1
    k = int(np.argmin(flosses))
    return float(flrs[k]) / 10.0, int(where[k])


def _trim(n: int, skip_start: int, skip_end: int) -> tuple[int, int]:
    skip_start, skip_end = max(0, skip_start), max(0, skip_end)
    while n - skip_start - skip_end < 3 and (skip_start or skip_end):
        if skip_start >= skip_end and skip_start:
            skip_start -= 1
        else:
            skip_end -= 1
    return skip_start, skip_end


def suggest_lrs(lrs, smoothed, skip_start: int = 0,
                skip_end: int = 0) -> tuple[dict[str, float], dict[str, int], tuple]:
    """All three suggestions on a (trimmed) smoothed curve: (suggestions, indices into the
    untrimmed curve, (skip_start, skip_end) actually used)."""
    lrs, smoothed = _curve(lrs, smoothed)
    a, b = _trim(lrs.size, skip_start, skip_end)
    sl = slice(a, lrs.size - b)
    out, idx = {}, {}
    for name, rule in (("steepest", suggest_steepest), ("valley", suggest_valley), ("min_div_10", suggest_min_div_10)):
        lr, k = rule(lrs[sl], smoothed[sl])
        out[name] = lr
        idx[name] = k + a if k >= 0 else -1
    return out, idx, (a, b)


# --------------------------------------------------------------------------------------------
# State capture / restore
# --------------------------------------------------------------------------------------------

class _Snapshot:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        with torch.no_grad():
            self.tensors = {("p", n): t.detach().clone() for n, t in model.named_parameters(remove_duplicate=False)}
            self.tensors.update({("b", n): t.detach().clone() for n, t in model.named_buffers(remove_duplicate=False)
                                 if t is not None})
            self.grads = {n: (None if p.grad is None else p.grad.detach().clone())
                          for n, p in model.named_parameters(remove_duplicate=False)}
        self.modes = {n: m.training for n, m in model.named_modules(remove_duplicate=False)}
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.torch_rng = torch.get_rng_state()
        cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self.cuda_rng = torch.cuda.get_rng_state_all() if cuda else None
        self.np_rng = np.random.get_state()
        self.py_rng = random.getstate()

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for n, p in model.named_parameters(remove_duplicate=False):
                p.copy_(self.tensors[("p", n)])
                g = self.grads[n]
                p.grad = None if g is None else g.clone()
            for n, b in model.named_buffers(remove_duplicate=False):
                if b is not None and ("b", n) in self.tensors:
                    b.copy_(self.tensors[("b", n)])
        for n, m in model.named_modules(remove_duplicate=False):
            if n in self.modes:
                m.training = self.modes[n]
        optimizer.load_state_dict(self.optimizer_state)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        np.random.set_state(self.np_rng)
        random.setstate(self.py_rng)


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------

def _to_device(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    return x


def _default_step(criterion):
    def step(model, optimizer, batch):
        if not isinstance(batch, (list, tuple)) or len(batch) < 2:
            raise TypeError("lr_range_test: the default step needs (inputs, targets) batches; pass step_fn otherwise")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        inputs, targets = _to_device(batch[0], device), _to_device(batch[1], device)
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(inputs), targets)
        loss.backward()
        optimizer.step()
        return loss
    return step


def _batches(batches_iter: Iterable):
    """Yield batches forever when the source can be iterated again (a DataLoader, a list), else
    until it is exhausted."""
    restartable = not isinstance(batches_iter, Iterator)
    while True:
        got = False
        for b in batches_iter:
            got = True
            yield b
        if not restartable or not got:
            return


def lr_range_test(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Callable | None,
    batches_iter: Iterable,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    smooth: float = 0.98,
    diverge_factor: float = 4.0,
    step_fn: Callable | None = None,
    skip_start: int | None = None,
    skip_end: int = 5,
) -> LRRangeResult:
    """Run the sweep and return the curve with its suggestions; model and optimizer are restored.

    ``lr_i = start_lr (end_lr/start_lr)**(i/(num_steps-1))``, ``i = 0..num_steps-1``, set on every
    param group before step i. ``batches_iter``: an iterable of batches, iterated again when
    exhausted (a DataLoader, a list); a one-shot iterator that runs dry ends the sweep
    ('data-exhausted'). Default step: ``(inputs, targets)`` moved to the model's device,
    ``zero_grad``, ``criterion(model(inputs), targets).backward()``, ``optimizer.step()``.
    ``step_fn(model, optimizer, batch) -> loss`` replaces it (it must do the whole step: e.g. the
    engine's own train step with AMP or clipping); the loss may be a tensor or a float.

    The sweep stops after the first point whose smoothed loss exceeds ``diverge_factor`` x the
    best smoothed loss so far (from the second point on; only while that best is positive) or
    whose loss is not finite; that point is kept in the curve.
    """
    start_lr, end_lr = float(start_lr), float(end_lr)
    if not (math.isfinite(start_lr) and math.isfinite(end_lr) and 0 < start_lr < end_lr):
        raise ConfigError(f"the lr range test needs 0 < start_lr < end_lr, got {start_lr} and {end_lr}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(f"num_steps must be an integer >= 2, got {num_steps!r}")
    if not 0.0 <= smooth < 1.0:
        raise ConfigError(f"smooth must lie in [0, 1), got {smooth}")
    if not diverge_factor > 1.0:
        raise ConfigError(f"diverge_factor must be > 1, got {diverge_factor}")
    if step_fn is None:
        if criterion is None:
            raise ConfigError("lr_range_test needs a criterion or a step_fn")
        step_fn = _default_step(criterion)
    if skip_start is None:
        skip_start = num_steps // 10

    schedule = start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / (num_steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    reason = "completed"
    snap = _Snapshot(model, optimizer)
    try:
        model.train()
        source = _batches(batches_iter)
        avg, best = 0.0, math.inf
        for i, lr in enumerate(schedule):
            try:
                batch = next(source)
            except StopIteration:
                reason = "data-exhausted"
                break
            for group in optimizer.param_groups:  # a group's lr_scale (a model's own groups) holds in the sweep too
                group["lr"] = float(lr) * group.get("lr_scale", 1.0)
            loss = step_fn(model, optimizer, batch)
            loss = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
            lrs.append(float(lr))
            losses.append(loss)
            if not math.isfinite(loss):
                smoothed.append(math.nan)
                reason = "non-finite"
                break
            avg = smooth * avg + (1.0 - smooth) * loss
            sm = avg / (1.0 - smooth ** (i + 1))
            smoothed.append(sm)
            if i > 0 and best > 0 and sm > diverge_factor * best:
                reason = "diverged"
                break
            best = min(best, sm)
    finally:
        snap.restore(model, optimizer)

    lrs_a, losses_a, sm_a = np.array(lrs), np.array(losses), np.array(smoothed)
    if lrs_a.size == 0:
        raise ConfigError("lr_range_test: no batch to run (the batch source is empty)")
    suggestions, indices, trimmed = suggest_lrs(lrs_a, sm_a, skip_start, skip_end)
    return LRRangeResult(lrs=lrs_a, losses=losses_a, smoothed=sm_a, suggestions=suggestions,
                         stop_reason=reason, trimmed=trimmed, indices=indices)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------

_MARKERS = {"steepest": ("o", "tab:red"), "valley": ("s", "tab:green"), "min_div_10": ("^", "tab:purple")}


def plot_lr_range(result: LRRangeResult, path) -> Path:
    """One PNG: raw and smoothed loss against lr (log axis), the three suggestions marked (a
    marker on the curve at the suggested lr and a dashed vertical line). Uses matplotlib's Agg
    canvas directly (no pyplot, no global backend change). Returns the path written."""
    fig, ax = new_figure(figsize=(7, 4.5))
    lrs, sm = result.lrs, result.smoothed
    ax.plot(lrs, result.losses, color="0.7", lw=0.8, label="loss")
    ax.plot(lrs, sm, color="tab:blue", lw=1.6, label="smoothed loss")
    finite = sm[np.isfinite(sm)]
    if finite.size:
        lo, first = float(finite.min()), float(finite[0])
        hi = float(finite.max())
        if first > lo:
            hi = min(hi, first + 1.5 * (first - lo))
        pad = 0.05 * max(hi - lo, abs(lo) * 1e-3, 1e-12)
        ax.set_ylim(lo - pad, hi + pad)
    log_l = np.log(lrs)
    for name, lr in result.suggestions.items():
        if not (isinstance(lr, float) and math.isfinite(lr) and lr > 0):
            continue
        marker, color = _MARKERS.get(name, ("x", "black"))
        y = float(np.interp(math.log(lr), log_l, np.where(np.isfinite(sm), sm, np.nanmax(sm) if finite.size else 0)))
        ax.axvline(lr, color=color, ls="--", lw=0.8)
        ax.plot([lr], [y], marker=marker, color=color, ms=8, ls="none", label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({len(lrs)} steps, {result.stop_reason})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_png(fig, path)
