"""Stability thresholds of delayed SGD (spec 02-async-sgd.md): the math only."""
import math

import numpy as np
import pytest

from basinlab.errors import ConfigError
from basinlab.methods.asgd.stability import (
    StabilityInputError,
    adjusted_lr,
    closed_form_threshold,
    effective_stability_threshold,
    is_stable,
    stability_table,
    stability_threshold,
)


def sig3(x: float) -> float:
    """Round to 3 significant digits."""
    return float(f"{x:.3g}")


# The spec's no-momentum list: eta*a* by tau.
NO_MOMENTUM = {0: 2, 1: 1, 2: 0.618, 3: 0.445, 4: 0.347, 7: 0.209, 8: 0.185, 15: 0.1013,
               16: 0.0952, 31: 0.0499, 32: 0.0483, 63: 0.0247}

# The spec's table: thresholds on eta*a/(1-gamma).
MOMENTA = (0.5, 0.9, 0.99)
TABLE = {
    #     gamma=0   standard 0.5/0.9/0.99         shifted 0.5/0.9/0.99
    1: (1.000, (1.000, 1.000, 1.000), (1.50, 1.90, 1.99)),
    4: (0.347, (0.312, 0.265, 0.252), (0.432, 0.487, 0.499)),
    16: (0.0952, (0.0905, 0.0749, 0.0641), (0.112, 0.123, 0.125)),
    32: (0.0483, (0.0470, 0.0406, 0.0328), (0.0563, 0.0614, 0.0624)),
}


@pytest.mark.parametrize("tau,expected", sorted(NO_MOMENTUM.items()))
def test_no_momentum_list(tau, expected):
    got = stability_threshold(tau)
    assert sig3(got) == pytest.approx(sig3(expected)), (tau, got, expected)
    assert got == pytest.approx(expected, rel=5e-3)


@pytest.mark.parametrize("tau", sorted(TABLE))
def test_momentum_table(tau):
    zero, standard, shifted = TABLE[tau]
    assert sig3(stability_threshold(tau, effective=True)) == pytest.approx(zero)
    for gamma, want_std, want_sh in zip(MOMENTA, standard, shifted):
        got_std = stability_threshold(tau, gamma, "standard", effective=True)
        got_sh = stability_threshold(tau, gamma, "shifted", effective=True)
        assert sig3(got_std) == pytest.approx(want_std), ("standard", tau, gamma, got_std)
        assert sig3(got_sh) == pytest.approx(want_sh), ("shifted", tau, gamma, got_sh)
        # the two spellings of the effective threshold agree with the raw eta*a one
        raw = stability_threshold(tau, gamma, "standard")
        assert got_std == pytest.approx(raw / (1 - gamma), rel=1e-12)
        assert effective_stability_threshold(tau, gamma, "shifted") == pytest.approx(got_sh, rel=1e-12)


def test_table_layout_matches_spec():
    df = stability_table([1, 4, 16, 32], [0, 0.5, 0.9, 0.99])
    assert list(df.index) == [1, 4, 16, 32]
    assert df.index.name == "delay"
    assert list(df.columns) == [("none", 0.0)] + [("standard", g) for g in MOMENTA] + [("shifted", g) for g in MOMENTA]
    for tau, (zero, standard, shifted) in TABLE.items():
        row = [zero, *standard, *shifted]
        assert [sig3(v) for v in df.loc[tau]] == pytest.approx(row)
    raw = stability_table([4], [0.9], effective=False)
    assert raw.loc[4, ("standard", 0.9)] == pytest.approx(0.1 * df.loc[4, ("standard", 0.9)], rel=1e-9)


@pytest.mark.parametrize("tau", list(range(0, 21)) + [40, 63])
def test_closed_form_equals_roots(tau):
    assert stability_threshold(tau) == pytest.approx(closed_form_threshold(tau), rel=1e-8)
    assert closed_form_threshold(tau) == pytest.approx(2 * math.sin(math.pi / (4 * tau + 2)))


def test_zero_delay_is_heavy_ball_bound():
    # tau = 0: z^2 - (1 + g - x) z + g, stable iff x < 2 (1 + g) (both kinds coincide).
    for g in (0.0, 0.5, 0.9):
        for kind in ("standard", "shifted"):
            assert stability_threshold(0, g, kind) == pytest.approx(2 * (1 + g), rel=1e-8)


def test_zero_momentum_kinds_coincide():
    for tau in (1, 5, 17):
        assert stability_threshold(tau, 0.0, "shifted") == stability_threshold(tau, 0.0, "standard")


def test_momentum_shrinks_standard_and_enlarges_shifted():
    for tau in (4, 16):
        base = stability_threshold(tau)
        std = [stability_threshold(tau, g, "standard", effective=True) for g in MOMENTA]
        sh = [stability_threshold(tau, g, "shifted", effective=True) for g in MOMENTA]
        assert base > std[0] > std[1] > std[2]
        assert base < sh[0] < sh[1] < sh[2]


def _simulate(x, tau, gamma, kind, steps):
    """Iterate the linear recurrence written in the spec; return max |u| at the start and end."""
    u = [1.0] * (tau + 2)  # constant history
    for _ in range(steps):
        cur, prev = u[-1], u[-2]
        old, older = u[-1 - tau], u[-2 - tau]
        if kind == "standard":
            nxt = cur - x * old + gamma * (cur - prev)
        else:
            nxt = cur - x * old + gamma * (old - older)
        u.append(nxt)
    u = np.abs(np.array(u))
    return u[: 5 * (tau + 2)].max(), u[-5 * (tau + 2):].max()


@pytest.mark.parametrize("tau,gamma,kind",
                         [(3, 0.0, "standard"), (4, 0.5, "standard"), (4, 0.9, "shifted"), (8, 0.5, "shifted")])
def test_polynomials_describe_the_spec_updates(tau, gamma, kind):
    x_star = stability_threshold(tau, gamma, kind)
    head, tail = _simulate(0.9 * x_star, tau, gamma, kind, 20000)
    assert tail < 1e-2 * head
    head, tail = _simulate(1.1 * x_star, tau, gamma, kind, 20000)
    assert tail > 1e2 * head
    assert is_stable(0.99 * x_star, tau, gamma, kind) and not is_stable(1.01 * x_star, tau, gamma, kind)


def test_adjusted_lr_identities():
    assert adjusted_lr(0.1, 0) == pytest.approx(0.1)
    for d in (0, 1, 4, 31):
        assert adjusted_lr(0.37, d, d) == pytest.approx(0.37)
        # eta_tau = eta_0 sin(pi / (4 tau + 2))
        assert adjusted_lr(0.1, d) == pytest.approx(0.1 * math.sin(math.pi / (4 * d + 2)))
        # eta * threshold is preserved: the same minima stay reachable
        assert adjusted_lr(0.2, d, 3) / closed_form_threshold(d) == pytest.approx(0.2 / closed_form_threshold(3))
    # composition and inverse
    assert adjusted_lr(adjusted_lr(0.1, 7, 2), 15, 7) == pytest.approx(adjusted_lr(0.1, 15, 2))
    assert adjusted_lr(adjusted_lr(0.1, 7, 2), 2, 7) == pytest.approx(0.1)
    assert adjusted_lr(1.0, 1) == pytest.approx(0.5)  # sin(pi/6)
    # large delay: ~ pi / (4 tau + 2), i.e. eta proportional to 1 / tau
    assert adjusted_lr(1.0, 1000) == pytest.approx(math.pi / 4002, rel=1e-6)


@pytest.mark.parametrize("call", [
    lambda: stability_threshold(-1),
    lambda: stability_threshold(2.5),
    lambda: stability_threshold(True),
    lambda: stability_threshold("3"),
    lambda: stability_threshold(3, 1.0),
    lambda: stability_threshold(3, -0.1),
    lambda: stability_threshold(3, 0.5, "nesterov"),
    lambda: adjusted_lr(0.0, 3),
    lambda: adjusted_lr(0.1, -2),
    lambda: adjusted_lr(0.1, 2, from_delay=-1),
    lambda: stability_table([], [0.5]),
])
def test_invalid_input(call):
    with pytest.raises(ConfigError):
        call()
    with pytest.raises(ValueError):
        call()


def test_error_message_is_clear():
    with pytest.raises(StabilityInputError, match="kind must be one of 'standard', 'shifted'"):
        stability_threshold(3, 0.5, "nesterov")
    with pytest.raises(StabilityInputError, match=r"momentum must be in \[0, 1\)"):
        stability_threshold(3, 1.5)


def test_integer_valued_float_delay_accepted():
    assert stability_threshold(4.0) == stability_threshold(4)


@pytest.mark.parametrize("tau", [0, 1, 8, 32, 64])
@pytest.mark.parametrize("gamma,kind", [(0.0, "standard"), (0.5, "standard"), (0.9, "standard"), (0.5, "shifted"),
                                        (0.9, "shifted"), (0.99, "shifted")])
def test_boundary_locus_agrees_with_the_root_scan(tau, gamma, kind):
    """Long delays use the boundary locus; where both run, it equals the root-based scan."""
    from basinlab.methods.asgd.stability import _threshold, _threshold_by_boundary
    by_roots = _threshold.__wrapped__(tau, gamma, kind, 1.02, 1e-10)
    assert _threshold_by_boundary(tau, gamma, kind) == pytest.approx(by_roots, rel=1e-8)


def test_long_delays_answer_and_match_the_closed_form():
    # 4096: the boundary locus (np.roots would need a 4098 x 4098 eigenproblem per tested x)
    assert stability_threshold(4096, 0.0) == pytest.approx(closed_form_threshold(4096), rel=1e-9)
    x = stability_threshold(4096, 0.9, "shifted")
    assert 0 < x < stability_threshold(4096, 0.0)  # delayed momentum only shrinks the stable region
