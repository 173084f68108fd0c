"""autoHyper's learning-rate search (and its joint lr / weight-decay trust-region form) as pure,
deterministic state machines, independent of training.

The caller supplies ``trial(lr) -> Z`` (or ``trial(lr, wd) -> Z``): train a freshly initialised
network for a few epochs (autoHyper: 5) at that setting and return :func:`response_Z` of the
per-epoch zero-knowledge-gain fractions (``basinlab.metrics.lowrank.knowledge_gain_zero_fraction``).
``Z = 1`` means no conv layer has learned anything (lr too small), ``Z -> 0`` as lr grows. The
search itself draws no random numbers; seeding trials is the caller's business (a trial seeded
from its lr makes the whole search reproducible).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from basinlab.errors import ConfigError
from basinlab.utils.checks import check_number

__all__ = [
    "SearchStep",
    "SearchBudgetExceeded",
    "response_Z",
    "autohyper_search",
    "autohyper_search_lr_wd",
    "shrink_scale",
]

# Tolerance for "Z ~= 0" and "Z ~= 1". Z is a mean of fractions k/n_layers over the trial's
# epochs, so distinct values differ by far more than this.
_Z_TOL = 1e-6
# The search gives up when it has to look above LR_CEILING (Z ~= 1 there: nothing learns at any usable
# lr) or below LR_FLOOR (Z < early_cross even there): the reference loops forever in both cases.
LR_CEILING = 1e3
LR_FLOOR = 1e-12


class SearchBudgetExceeded(ConfigError):
    """The search used ``max_trials`` trials (or ran away) without meeting its exit rule."""


@dataclass
class SearchStep:
    """One entry of a search history.

    ``decision`` is what the state machine did after this point (see :func:`autohyper_search`).
    Entries that are not trials (grid extended, exit) carry ``Z = nan``. ``trial`` counts real
    trial calls (None where the result came from the cache or there was no trial).
    """

    lr: float
    Z: float
    decision: str
    zeta: float = math.nan  # (prod of Z since the last reset) ** power after this point
    window: tuple = (math.nan, math.nan)  # (min_lr, max_lr) of the grid this point belongs to
    trial: int | None = None
    cached: bool = False
    wd: float | None = None  # joint search only

    def as_dict(self) -> dict:
        lo, hi = self.window
        return {"lr": self.lr, "wd": self.wd, "Z": self.Z, "zeta": self.zeta, "decision": self.decision,
                "window_lo": lo, "window_hi": hi, "trial": self.trial, "cached": self.cached}


def response_Z(per_epoch_zero_fractions: Sequence[float]) -> float:
    """autoHyper's response of one trial: the mean over its epochs of Z_e (the fraction of conv
    layers with zero knowledge gain after epoch e)."""
    z = np.asarray(list(per_epoch_zero_fractions), dtype=np.float64)
    if z.size == 0:
        raise ValueError("response_Z needs at least one epoch's zero fraction")
    if not np.all(np.isfinite(z)) or np.any(z < 0) or np.any(z > 1):
        raise ValueError(f"zero fractions must lie in [0, 1], got {z.tolist()}")
    return float(z.mean())


def _check_Z(Z, where: str) -> float:
    try:
        Z = float(Z)
    except (TypeError, ValueError):
        raise TypeError(f"{where}: the trial must return a number Z in [0, 1], got {Z!r}") from None
    if not (math.isfinite(Z) and 0.0 <= Z <= 1.0):
        raise ValueError(f"{where}: the trial returned Z = {Z!r}; Z must be a fraction in [0, 1]")
    return Z


def autohyper_search(
    trial: Callable[[float], float],
    *,
    min_lr: float = 1e-4,
    max_lr: float = 0.1,
    num_points: int = 20,
    exit_window_rel: float = 0.02,
    exit_window_abs: float = 3e-5,
    zeta_threshold: float = 5e-3,
    power: float = 0.8,
    exit_patience: int = 6,
    early_cross: float = 0.5,
    max_trials: int = 250,
    cache: bool = True,
    log: Callable[[SearchStep], None] | None = None,
) -> tuple[float, list[SearchStep]]:
    """autoHyper's initial-lr search (reference ``master`` branch, ``init_lr: 'auto'``).

    Returns ``(chosen_lr, history)``: the upper edge of the final window and every step taken.

    State: a grid ``lrs = geomspace(min_lr, max_lr, num_points)`` scanned upward from ``idx = 0``,
    the Z values since the last reset, an exit counter, and a ``first_run`` flag (true until the
    first point at ``idx > 0`` is tried). Each iteration, in this order (the order of the public
    reference code, which the spec's list leaves open):

    1. ``idx`` past the grid's end -> ``'grid-extended'``: grid ``geomspace(lrs[-2], 1.5 lrs[-1])``,
       ``idx = 0``; the Z history is kept (as in the reference).
    2. window narrower than ``exit_window_rel`` (relative, see below) -> ``'exit-window'``: stop.
    3. try ``lr = lrs[idx]``: ``Z = trial(lr)``; ``zeta = (prod of Z since the last reset)**power``.
    4. ``Z ~= 1`` (at any idx) -> ``'raise-min-lr'``: ``min_lr *= 5`` (and ``max_lr = 1.5 min_lr``
       when that passes it), rebuild the grid, reset the Z history, ``idx = 0``.
    5. at ``idx == 0``: if ``first_run`` and ``Z < early_cross`` -> ``'lower-min-lr'``:
       ``min_lr /= 10``, rebuild, reset the history; otherwise go on (``'next'``).
    6. at ``idx > 0`` (``first_run`` becomes false):

       - ``Z ~= 0`` -> ``'zero-reached'``: window ``[lrs[idx-2], lrs[idx-1]]`` (at ``idx == 1``:
         ``[lrs[0], (lrs[0]+lrs[1])/2]``, as the reference), rebuild, reset, ``idx = 0``;
       - else ``zeta < zeta_threshold`` -> ``'plateau'``: window ``[lrs[idx-2], lrs[idx]]``
         (clamped at 0), rebuild, reset, ``idx = 0``, exit counter + 1; when the counter exceeds
         ``exit_patience`` -> ``'exit-counter'``: stop (the reference tests ``counter > 6``, so
         the 7th plateau ends the search: 6 plateau refinements are tolerated).
    7. otherwise ``'next'``: ``idx += 1``.

    Exit width: the reference stops when ``max_lr - min_lr < 3e-5`` (absolute), which is a 30%
    window for lr ~ 1e-4 but a 0.03% one for lr ~ 0.1, so at large lr it refines long past any
    difference that changes a training result. We stop when the window is narrower than
    ``max(exit_window_abs, exit_window_rel * max_lr)`` (defaults 3e-5 and 2%): the reference's rule
    where it is the looser one (small lr: the same lr as the reference), 2% elsewhere. Since every
    decision before the exit is the reference's, the search stops no later than the reference does,
    converges wherever it converges, with at most its trials (``exit_window_rel=0``: the reference
    exactly). A plateau shrinks the window's log-width by ``2/(num_points-1)``, a zero-reached by
    ``1/(num_points-1)``.

    Cache: with ``cache=True`` a point already tried (grids share their end points with the
    windows they refine) is not trained again; its Z is reused (``SearchStep.cached``). The
    decisions are exactly those of re-running a deterministic trial; only the count of trainings
    drops. ``max_trials`` (250, twice the most the reference was seen to need) bounds real trial
    calls; SearchBudgetExceeded (a ConfigError) when it is reached, and at once when Z stays ~= 1 up
    to lr ``LR_CEILING`` or below ``early_cross`` down to ``LR_FLOOR`` (the reference loops forever
    there).

    ``log(step)`` is called with every history entry as it is made.
    """
    min_lr = check_number(min_lr, "min_lr")
    max_lr = check_number(max_lr, "max_lr")
    if not min_lr < max_lr:
        raise ConfigError(f"autoHyper needs min_lr < max_lr, got {min_lr} and {max_lr}")
    if isinstance(num_points, bool) or not isinstance(num_points, int) or num_points < 3:
        raise ConfigError(f"num_points must be an integer >= 3, got {num_points!r}")
    exit_window_rel = check_number(exit_window_rel, "exit_window_rel", allow_zero=True)
    exit_window_abs = check_number(exit_window_abs, "exit_window_abs", allow_zero=True)
    if exit_window_rel >= 1:
        raise ConfigError(f"exit_window_rel must be < 1, got {exit_window_rel}")
    zeta_threshold = check_number(zeta_threshold, "zeta_threshold")
    power = check_number(power, "power")
    if isinstance(exit_patience, bool) or not isinstance(exit_patience, int) or exit_patience < 0:
        raise ConfigError(f"exit_patience must be a non-negative integer, got {exit_patience!r}")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(f"max_trials must be a positive integer, got {max_trials!r}")

    history: list[SearchStep] = []
    memo: dict[float, float] = {}
    n_trials = 0
    steps = 0
    max_steps = 50 * max_trials + 1000  # cached points cost no trial; this bounds them too

    def record(step: SearchStep) -> None:
        history.append(step)
        if log is not None:
            log(step)

    def grid(lo: float, hi: float) -> np.ndarray:
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise SearchBudgetExceeded(f"autoHyper: the lr window [{lo}, {hi}] left the positive numbers")
        return np.geomspace(lo, hi, num_points)

    def budget_error(reason: str) -> SearchBudgetExceeded:
        tail = ", ".join(f"{s.lr:.3g}:{s.Z:.3f}:{s.decision}" for s in history[-6:] if not math.isnan(s.Z))
        return SearchBudgetExceeded(
            f"autoHyper did not converge: {reason} (window [{min_lr:.4g}, {max_lr:.4g}]; last steps lr:Z:decision "
            f"{tail}). Check that Z falls from 1 to 0 as lr grows, or raise max_trials.")

    lrs = grid(min_lr, max_lr)
    idx = 0
    exit_counter = 0
    first_run = True
    zs: list[float] = []
    while True:
        steps += 1
        if steps > max_steps:
            raise budget_error(f"{max_steps} steps")
        if idx == len(lrs):
            min_lr, max_lr = float(lrs[-2]), float(lrs[-1]) * 1.5
            lrs = grid(min_lr, max_lr)
            idx = 0
            record(SearchStep(lr=max_lr, Z=math.nan, decision="grid-extended", window=(min_lr, max_lr)))
            continue
        if max_lr - min_lr < max(exit_window_abs, exit_window_rel * max_lr):
            record(SearchStep(lr=max_lr, Z=math.nan, decision="exit-window", window=(min_lr, max_lr)))
            return max_lr, history
        lr = float(lrs[idx])
        window = (min_lr, max_lr)
        if cache and lr in memo:
            Z, trial_no, cached = memo[lr], None, True
        else:
            if n_trials >= max_trials:
                raise budget_error(f"max_trials={max_trials} trials used")
            n_trials += 1
            Z = _check_Z(trial(lr), f"autoHyper trial at lr={lr:g}")
            memo[lr] = Z
            trial_no, cached = n_trials, False
        zs.append(Z)
        zeta = float(np.prod(zs)) ** power

        def step(decision: str) -> None:  # called within this iteration only, so the names are current
            record(SearchStep(lr=lr, Z=Z, decision=decision, zeta=zeta, window=window,  # noqa: B023
                              trial=trial_no, cached=cached))  # noqa: B023

        if abs(Z - 1.0) <= _Z_TOL:
            step("raise-min-lr")
            if min_lr * 5.0 > LR_CEILING:
                raise budget_error(f"Z stays 1 (nothing learned) up to lr {lr:.3g}")
            min_lr *= 5.0
            if min_lr > max_lr:
                max_lr = min_lr * 1.5
            lrs, zs, idx = grid(min_lr, max_lr), [], 0
            continue
        if idx == 0:
            if first_run and Z < early_cross:
                step("lower-min-lr")
                if min_lr / 10.0 < LR_FLOOR:
                    raise budget_error(f"Z is below {early_cross} already at lr {lr:.3g}")
                min_lr /= 10.0
                lrs, zs = grid(min_lr, max_lr), []
                continue
        else:
            first_run = False
            if abs(Z) <= _Z_TOL:
                step("zero-reached")
                lo = float(lrs[max(idx - 2, 0)])
                hi = float(lrs[idx - 1])
                if hi == lo:
                    hi = (lo + float(lrs[idx])) / 2.0
                min_lr, max_lr = lo, hi
                lrs, zs, idx = grid(min_lr, max_lr), [], 0
                continue
            if zeta < zeta_threshold:
                step("plateau")
                exit_counter += 1
                min_lr, max_lr = float(lrs[max(idx - 2, 0)]), float(lrs[idx])
                lrs, zs, idx = grid(min_lr, max_lr), [], 0
                if exit_counter > exit_patience:
                    record(SearchStep(lr=max_lr, Z=math.nan, decision="exit-counter", window=(min_lr, max_lr)))
                    return max_lr, history
                continue
        step("next")
        idx += 1


# --------------------------------------------------------------------------------------------
# Joint (lr, weight decay) trust-region search (reference `main` branch, arXiv 2111.14056)
# --------------------------------------------------------------------------------------------

def shrink_scale(scale: float) -> float:
    """The trust region's scale shrink once zeta is small: ``(scale - 1) e^{-2.5} + 1``."""
    return (scale - 1.0) * math.exp(-2.5) + 1.0


def _scaled(current: float, scale: float, power: int, zero_step: float) -> float:
    if power == 1 and current == 0.0:
        return zero_step
    return current * scale ** power


def autohyper_search_lr_wd(
    trial: Callable[[float, float], float],
    *,
    lr: float = 1e-4,
    lr_scale: float = 1.45,
    lr_minimum: float = 1e-6,
    wd: float = 0.0,
    wd_scale: float = 2.0,
    wd_minimum: float = 0.0,
    zero_step: float = 1e-7,
    zeta_threshold: float = 5e-3,
    scale_tol: float = 5e-3,
    power: float = 0.8,
    establish_threshold: float = 0.85,
    max_trials: int = 300,
    cache: bool = True,
    log: Callable[[SearchStep], None] | None = None,
) -> tuple[tuple[float, float], list[SearchStep]]:
    """autoHyper's joint (lr, weight decay) search with a 3x3 trust region.

    Returns ``((lr, wd), history)``. Facts from the public reference (``autohyper.optimize`` on the
    ``main`` branch; defaults from its ``HyperParameters``: lr 1e-4, scale 1.45, minimum 1e-6;
    weight decay 0, scale 2.0, minimum 0):

    - The trust region is the 3x3 set ``(lr * lr_scale**i, wd * wd_scale**j)``, ``i, j in
      {-1, 0, 1}``; scaling a zero value up gives ``zero_step`` (1e-7), so weight decay can leave 0.
      Every point of the region whose Z is unknown is tried (row-major: lr outer, wd inner).
    - Establishing the start (until it first fails): while every Z of the region is below
      ``establish_threshold`` (0.85: everything already learns) and the current values are at or
      above their minimums, move to the point of largest Z (the first one in row-major order;
      the centre itself means "move to (-1, -1)"): the search walks down until some point learns
      little. After that, always move to the point of smallest Z (the last one in row-major order,
      so ties prefer larger lr and weight decay; the centre means "move to (+1, +1)") and append
      that smallest Z to the history.
    - The region is re-centred on the chosen point; Z values of points still inside it are reused.
    - ``zeta = (prod of the history)**power``; once ``zeta < zeta_threshold`` every iteration shrinks
      each scale to ``(scale - 1) e^{-2.5} + 1``; a hyper-parameter whose scale was already within
      ``scale_tol`` of 1 before the shrink is done; the search ends when both are done (with the
      defaults: lr after its 3rd shrink, weight decay after its 4th). The result is the centre.

    Deliberate differences from the reference:

    - After a scale shrink the reference keeps the Z values of the re-centred region although its
      points moved (they were measured at the old scale); here only the centre (whose values do not
      change) is kept and the others are tried anew.
    - When the establishing move leaves the centre where it is (a weight decay of 0 scaled down is
      still 0 and the lr was not the one to move), the reference loops forever; here establishing
      ends at that point.
    - ``max_trials`` bounds real trials (SearchBudgetExceeded); with ``cache=True`` a setting tried
      before (the regions overlap; with wd = 0 the rows for wd * 2^-1 and wd coincide) is not
      trained again.
    """
    lr = check_number(lr, "lr")
    wd = check_number(wd, "wd", allow_zero=True)
    for name, v in (("lr_scale", lr_scale), ("wd_scale", wd_scale)):
        if check_number(v, name) <= 1.0:
            raise ConfigError(f"{name} must be > 1, got {v}")
    lr_minimum = check_number(lr_minimum, "lr_minimum", allow_zero=True)
    wd_minimum = check_number(wd_minimum, "wd_minimum", allow_zero=True)
    zero_step = check_number(zero_step, "zero_step")
    zeta_threshold = check_number(zeta_threshold, "zeta_threshold")
    scale_tol = check_number(scale_tol, "scale_tol")
    power = check_number(power, "power")
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ConfigError(f"max_trials must be a positive integer, got {max_trials!r}")

    current = [lr, wd]
    scale = [float(lr_scale), float(wd_scale)]
    minimum = [lr_minimum, wd_minimum]
    stop = [False, False]
    buffer = np.full((3, 3), np.nan)  # Z of the region; nan = unknown
    history: list[SearchStep] = []
    memo: dict[tuple[float, float], float] = {}
    mins: list[float] = []
    establishing = True
    n_trials = 0
    iterations = 0
    max_iterations = 10 * max_trials + 100

    def record(step: SearchStep) -> None:
        history.append(step)
        if log is not None:
            log(step)

    def point(i: int, j: int) -> tuple[float, float]:
        return (_scaled(current[0], scale[0], i - 1, zero_step), _scaled(current[1], scale[1], j - 1, zero_step))

    while True:
        iterations += 1
        if iterations > max_iterations:
            raise SearchBudgetExceeded(f"autoHyper (lr, wd) search ran {max_iterations} iterations without converging")
        zeta_now = float(np.prod(mins)) ** power if mins else math.nan
        for i, j in itertools.product(range(3), range(3)):
            if not np.isnan(buffer[i, j]):
                continue
            plr, pwd = point(i, j)
            key = (plr, pwd)
            if cache and key in memo:
                Z, trial_no, cached = memo[key], None, True
            else:
                if n_trials >= max_trials:
                    raise SearchBudgetExceeded(
                        f"autoHyper (lr, wd) search used max_trials={max_trials} trials without converging "
                        f"(centre lr={current[0]:.4g}, wd={current[1]:.4g}, scales {scale[0]:.4g}, {scale[1]:.4g})")
                n_trials += 1
                Z = _check_Z(trial(plr, pwd), f"autoHyper trial at lr={plr:g}, wd={pwd:g}")
                memo[key] = Z
                trial_no, cached = n_trials, False
            buffer[i, j] = Z
            record(SearchStep(lr=plr, wd=pwd, Z=Z, decision="trial", zeta=zeta_now, trial=trial_no, cached=cached,
                              window=(point(0, 0)[0], point(2, 2)[0])))
        if establishing and bool(np.all(buffer < establish_threshold)) and \
                current[0] >= minimum[0] and current[1] >= minimum[1]:
            flat = int(np.argmax(buffer))  # first occurrence
            index = divmod(flat, 3)
            if index == (1, 1):
                index = (0, 0)
            decision = "establish-down"
        else:
            establishing = False
            flat = 8 - int(np.argmin(buffer[::-1, ::-1]))  # last occurrence in row-major order
            index = divmod(flat, 3)
            mins.append(float(buffer[index]))
            if index == (1, 1):
                index = (2, 2)
            decision = "move"
        new_current = list(point(*index))
        # Re-centre: what stays inside the region keeps its Z; the rest is unknown.
        di, dj = index[0] - 1, index[1] - 1
        shifted = np.full((3, 3), np.nan)
        for i, j in itertools.product(range(3), range(3)):
            si, sj = i + di, j + dj
            if 0 <= si < 3 and 0 <= sj < 3:
                shifted[i, j] = buffer[si, sj]
        if new_current == current and decision == "establish-down":
            establishing = False  # cannot move further down (see docstring)
            decision = "establish-end"
        current = new_current
        buffer = shifted
        zeta = float(np.prod(mins)) ** power if mins else math.nan
        if decision == "move" and zeta < zeta_threshold:
            for k in range(2):
                if abs(scale[k] - 1.0) <= scale_tol:
                    stop[k] = True
                scale[k] = shrink_scale(scale[k])
            centre = buffer[1, 1]
            buffer = np.full((3, 3), np.nan)
            buffer[1, 1] = centre
            decision = "shrink"
        record(SearchStep(lr=current[0], wd=current[1], Z=float(buffer[1, 1]), decision=decision, zeta=zeta,
                          window=(point(0, 0)[0], point(2, 2)[0])))
        if all(stop):
            record(SearchStep(lr=current[0], wd=current[1], Z=float(buffer[1, 1]), decision="exit", zeta=zeta,
                              window=(point(0, 0)[0], point(2, 2)[0])))
            return (current[0], current[1]), history
