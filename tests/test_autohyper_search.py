"""autoHyper's search state machines (basinlab.tuning.search) on synthetic responses Z(lr)."""

import math

import numpy as np
import pytest

from basinlab.errors import ConfigError
from basinlab.tuning.search import (
    SearchBudgetExceeded,
    autohyper_search,
    autohyper_search_lr_wd,
    response_Z,
    shrink_scale,
)


def linear_Z(lr0, width):
    """Z = 1 below lr0, falls linearly in ln(lr), reaches 0 at lr0 * e^width."""
    return lambda lr: float(np.clip(1.0 - math.log(lr / lr0) / width, 0.0, 1.0))


def sigmoid_Z(centre, width):
    return lambda lr: 1.0 / (1.0 + math.exp((math.log(lr) - math.log(centre)) / width))


class Counting:
    def __init__(self, f):
        self.f, self.calls = f, []

    def __call__(self, *args):
        self.calls.append(args)
        return self.f(*args)


@pytest.mark.parametrize("lr0,width", [(1e-3, 3.0), (1e-2, 2.0), (1e-5, 3.0), (2e-4, 1.5)])
def test_search_ends_in_the_falling_part_of_a_linear_response(lr0, width):
    f = Counting(linear_Z(lr0, width))
    lr, history = autohyper_search(f)
    zero_at = lr0 * math.exp(width)
    # The search stops where the cumulative product of Z falls below 5e-3: inside the falling
    # part, below the point where Z reaches 0 and within a factor 3 of it.
    assert zero_at / 3 < lr < zero_at
    assert 0.0 < f.f(lr) < 0.5
    assert history[-1].decision in ("exit-window", "exit-counter")
    assert history[-1].lr == lr
    final_lo, final_hi = history[-1].window
    assert final_hi == lr and (final_hi - final_lo) < max(3e-5, 0.02 * final_hi)
    assert len(f.calls) <= 40
    assert len(set(f.calls)) == len(f.calls)  # the cache never re-trains a point


@pytest.mark.parametrize("centre,width", [(3e-3, 0.5), (0.05, 0.3), (2e-4, 0.8)])
def test_search_on_a_sigmoid_response(centre, width):
    f = sigmoid_Z(centre, width)
    lr, history = autohyper_search(f)
    assert centre / 3 < lr < centre * 3
    assert 0.0 < f(lr) < 0.5


def test_deterministic_history():
    f = linear_Z(1e-3, 3.0)
    lr1, h1 = autohyper_search(f)
    lr2, h2 = autohyper_search(f)
    assert lr1 == lr2 and [s.as_dict() for s in h1] == [s.as_dict() for s in h2]
    logged = []
    lr3, h3 = autohyper_search(f, log=logged.append)
    assert logged == h3


def test_cache_changes_cost_not_decisions():
    f = linear_Z(1e-3, 3.0)
    a, b = Counting(f), Counting(f)
    lr1, h1 = autohyper_search(a, cache=True)
    lr2, h2 = autohyper_search(b, cache=False)
    assert lr1 == lr2
    assert [(s.lr, s.Z, s.decision) for s in h1] == [(s.lr, s.Z, s.decision) for s in h2]
    assert len(a.calls) < len(b.calls)
    assert sum(s.cached for s in h1) == len(b.calls) - len(a.calls)


def test_all_ones_at_start_raises_min_lr():
    f = Counting(linear_Z(0.01, 2.0))  # Z = 1 up to 0.01
    lr, history = autohyper_search(f)
    first = history[0]
    assert first.lr == pytest.approx(1e-4) and first.Z == 1.0 and first.decision == "raise-min-lr"
    assert history[1].lr == pytest.approx(5e-4)  # min_lr *= 5, grid rebuilt, idx 0
    raised = [s for s in history if s.decision == "raise-min-lr"]
    assert [s.lr for s in raised] == pytest.approx([1e-4, 5e-4, 2.5e-3])


def test_raise_min_lr_lifts_max_lr_when_passed():
    seen = []

    def f(lr):
        seen.append(lr)
        return 1.0 if lr < 0.3 else 0.4

    history = []
    with pytest.raises(SearchBudgetExceeded):
        autohyper_search(f, min_lr=0.05, max_lr=0.1, max_trials=4, log=history.append)
    # 0.05 -> 0.25 > max_lr 0.1: the window becomes [0.25, 0.375]; then [1.25, 1.875].
    assert seen[:3] == pytest.approx([0.05, 0.25, 1.25])
    assert history[1].window == pytest.approx((0.25, 0.375))
    assert history[2].window == pytest.approx((1.25, 1.875))


def test_first_point_below_half_lowers_min_lr():
    f = Counting(linear_Z(1e-5, 3.0))  # Z(1e-4) = 0.23 < 0.5
    lr, history = autohyper_search(f)
    assert history[0].decision == "lower-min-lr" and history[0].lr == pytest.approx(1e-4)
    assert history[1].lr == pytest.approx(1e-5)  # min_lr /= 10, same max_lr
    assert history[1].window == pytest.approx((1e-5, 0.1))
    assert 1e-5 * math.exp(3) / 3 < lr < 1e-5 * math.exp(3)


def test_zero_reached_window_rule():
    # Z falls from 1 to exactly 0 between two grid points: window [lr[idx-2], lr[idx-1]].
    grid = np.geomspace(1e-4, 0.1, 20)

    def f(lr):
        if lr < grid[3] * 0.999:
            return 0.9
        if lr < grid[5] * 0.999:
            return 0.8
        return 0.0

    lr, history = autohyper_search(f, max_trials=200)
    zero = [s for s in history if s.decision == "zero-reached"][0]
    assert zero.lr == pytest.approx(grid[5])
    nxt = history[history.index(zero) + 1]
    assert nxt.window == pytest.approx((grid[3], grid[4]))


def test_plateau_window_and_exit_counter():
    # A constant Z = 0.3: zeta falls below 5e-3 after 6 points (0.3^(0.8*6) = 3e-3), at idx 5.
    f = Counting(lambda lr: 0.3)
    lr, history = autohyper_search(f, exit_window_rel=1e-12, exit_window_abs=0, exit_patience=6, early_cross=0.2)
    plateaus = [s for s in history if s.decision == "plateau"]
    assert len(plateaus) == 7 and history[-1].decision == "exit-counter"
    first = plateaus[0]
    grid = np.geomspace(1e-4, 0.1, 20)
    assert first.lr == pytest.approx(grid[5])
    after = history[history.index(first) + 1]
    assert after.window == pytest.approx((grid[3], grid[5]))
    assert lr == pytest.approx(history[-1].window[1])
    # exit_patience=0 stops at the first plateau.
    lr0, h0 = autohyper_search(lambda lr: 0.3, exit_window_rel=1e-12, exit_window_abs=0, exit_patience=0,
                               early_cross=0.2)
    assert [s.decision for s in h0].count("plateau") == 1 and lr0 == pytest.approx(grid[5])


def test_grid_extension():
    # Z decreases too slowly to plateau within the first grid: the grid is extended upward.
    lr, history = autohyper_search(linear_Z(1e-5, 40.0), max_trials=200)
    ext = [s for s in history if s.decision == "grid-extended"]
    assert ext and ext[0].window == pytest.approx((np.geomspace(1e-4, 0.1, 20)[-2], 0.15))


def test_max_trials_guard_and_validation():
    with pytest.raises(SearchBudgetExceeded, match="max_trials=5"):
        autohyper_search(lambda lr: 1.0, max_trials=5)  # nothing ever learns
    with pytest.raises(SearchBudgetExceeded):
        autohyper_search(lambda lr: 0.1, max_trials=10)  # Z < 0.5 everywhere: min_lr falls forever
    assert issubclass(SearchBudgetExceeded, ConfigError)
    with pytest.raises(ConfigError):
        autohyper_search(lambda lr: 0.5, min_lr=0.1, max_lr=0.01)
    with pytest.raises(ValueError):
        autohyper_search(lambda lr: 1.5)
    with pytest.raises(ValueError):
        autohyper_search(lambda lr: float("nan"))


def test_response_Z():
    assert response_Z([1.0, 0.5, 0.0, 0.5, 0.5]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        response_Z([])
    with pytest.raises(ValueError):
        response_Z([0.2, 1.2])


# ------------------------------------------------------------------------------------------
# Joint (lr, weight decay) trust-region search
# ------------------------------------------------------------------------------------------

def test_shrink_scale():
    assert shrink_scale(1.45) == pytest.approx(0.45 * math.exp(-2.5) + 1)
    assert shrink_scale(1.0) == 1.0


def test_lr_wd_search_on_lr_only_response():
    f = Counting(lambda lr, wd: linear_Z(1e-3, 3.0)(lr))
    (lr, wd), history = autohyper_search_lr_wd(f)
    zero_at = 1e-3 * math.exp(3.0)
    assert zero_at / 3 < lr < zero_at * 1.5
    assert wd > 0  # ties prefer larger weight decay, which leaves 0 via the 1e-7 step
    assert history[-1].decision == "exit"
    shrinks = [s for s in history if s.decision == "shrink"]
    assert len(shrinks) == 4  # lr stops after its 3rd shrink, weight decay after its 4th
    # First region: lr in {1e-4/1.45, 1e-4, 1.45e-4} x wd in {0, 0, 1e-7}; the cache skips the
    # duplicate wd = 0 * 2^-1 = 0 points.
    first = [(round(a, 12), b) for a, b in f.calls[:6]]
    assert first == [(round(1e-4 / 1.45, 12), 0.0), (round(1e-4 / 1.45, 12), 1e-7), (1e-4, 0.0), (1e-4, 1e-7),
                     (round(1.45e-4, 12), 0.0), (round(1.45e-4, 12), 1e-7)]
    assert len(set(f.calls)) == len(f.calls)
    (lr2, wd2), h2 = autohyper_search_lr_wd(f.f)
    assert (lr2, wd2) == (lr, wd) and [s.as_dict() for s in h2] == [s.as_dict() for s in history]


def test_lr_wd_search_establishes_start_downward():
    # Everything already learns at the start (Z < 0.85 on the whole region): walk down first.
    f = lambda lr, wd: linear_Z(1e-6, 6.0)(lr)  # noqa: E731
    (lr, wd), history = autohyper_search_lr_wd(f, lr=1e-3)
    downs = [s for s in history if s.decision == "establish-down"]
    assert downs and downs[0].lr < 1e-3
    assert 0.0 < f(lr, wd) < 0.5


def test_lr_wd_search_uses_weight_decay():
    # Weight decay below 1e-3 speeds up learning a little; above it, it hurts.
    def f(lr, wd):
        return float(np.clip(1 - math.log(lr / 1e-3) / 3 - 50 * min(wd, 1e-3) + 400 * max(wd - 1e-3, 0), 0, 1))

    (lr, wd), history = autohyper_search_lr_wd(f)
    assert wd > 1e-5 and 0.0 <= f(lr, wd) < 0.5


def test_lr_wd_search_guards():
    with pytest.raises(SearchBudgetExceeded):
        autohyper_search_lr_wd(lambda lr, wd: 1.0, max_trials=40)  # nothing learns: zeta stays 1
    with pytest.raises(ConfigError):
        autohyper_search_lr_wd(lambda lr, wd: 0.5, lr_scale=1.0)
    with pytest.raises(ValueError):
        autohyper_search_lr_wd(lambda lr, wd: -0.1)


def reference_search(Z, min_lr=1e-4, max_lr=0.1, n=20):
    """autoHyper's lr search written from the reference's rules (the spec's list, in the code's order): an
    absolute 3e-5 exit window, no cache (every point evaluated is a trial), no budget."""
    grid = lambda lo, hi: np.geomspace(lo, hi, n)  # noqa: E731
    lrs, idx, counter, first, zs, evals = grid(min_lr, max_lr), 0, 0, True, [], 0
    while evals < 10_000:
        if idx == len(lrs):
            min_lr, max_lr = lrs[-2], 1.5 * lrs[-1]
            lrs, idx = grid(min_lr, max_lr), 0
            continue
        if max_lr - min_lr < 3e-5:
            return max_lr, evals
        lr = lrs[idx]
        z = Z(lr)
        evals += 1
        zs.append(z)
        if math.isclose(z, 1):
            min_lr *= 5
            max_lr = 1.5 * min_lr if min_lr > max_lr else max_lr
            lrs, zs, idx = grid(min_lr, max_lr), [], 0
            continue
        if idx == 0 and first and z < 0.5:
            min_lr /= 10
            lrs, zs = grid(min_lr, max_lr), []
            continue
        if idx > 0:
            first = False   # the first point past the grid's start ends the "first run"
        if idx > 0 and abs(z) < 1e-9:
            lo, hi = lrs[idx - 2] if idx >= 2 else lrs[0], lrs[idx - 1]
            min_lr, max_lr = lo, hi if hi != lo else (lo + lrs[idx]) / 2
            lrs, zs, idx = grid(min_lr, max_lr), [], 0
        elif idx > 0 and np.prod(zs) ** 0.8 < 5e-3:
            counter += 1
            min_lr, max_lr = lrs[max(idx - 2, 0)], lrs[idx]
            lrs, zs, idx = grid(min_lr, max_lr), [], 0
            if counter > 6:
                return max_lr, evals
        else:
            idx += 1
    raise AssertionError("the reference did not converge either")


def steps_Z(learns, zero):
    """The coarse Z of a two-conv net: 1 below `learns`, 1/2 up to `zero`, then 0."""
    return lambda lr: 1.0 if lr < learns else (0.5 if lr < zero else 0.0)


CURVES = [linear_Z(1e-6, 3.0), linear_Z(3e-5, 6.0), linear_Z(1e-4, 1.5), linear_Z(1e-3, 3.0),
          linear_Z(1e-2, 6.0), linear_Z(1e-2, 0.5), steps_Z(1e-3, 0.067), steps_Z(2e-4, 2e-3), steps_Z(0.01, 0.02)]


@pytest.mark.parametrize("curve", CURVES)
def test_the_search_converges_wherever_the_reference_does(curve):
    ref_lr, ref_trials = reference_search(curve)
    lr, history = autohyper_search(curve)
    trials = sum(1 for step in history if step.trial is not None)
    assert trials <= ref_trials
    if ref_lr < 3e-5 / 0.02:   # below 1.5e-3 the reference's absolute window is the looser rule: the same lr
        assert lr == ref_lr
    else:
        assert abs(lr / ref_lr - 1) < 0.02
    exact, _ = autohyper_search(curve, exit_window_rel=0)
    assert exact == ref_lr


def test_a_search_that_runs_away_stops_with_a_reason():
    with pytest.raises(SearchBudgetExceeded, match="Z stays 1 .* up to lr"):
        autohyper_search(lambda lr: 1.0)
    with pytest.raises(SearchBudgetExceeded, match="Z is below 0.5 already at lr"):
        autohyper_search(lambda lr: 0.1)
