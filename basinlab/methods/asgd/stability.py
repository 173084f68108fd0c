"""Linear stability of delayed (asynchronous) SGD at a minimum.

Near a minimum whose top Hessian eigenvalue is ``a = lambda_max`` the component of the
error along the top eigenvector follows a linear recurrence.  With a gradient delay of
``tau`` server steps, learning rate ``eta`` and momentum ``gamma`` (see
``shared/specs/02-async-sgd.md``) the characteristic polynomials are, with ``x = eta * a``:

==================  =====================================================  =============================================
kind                update                                                 characteristic polynomial
==================  =====================================================  =============================================
no momentum         u[t+1] = u[t] - x u[t-tau]                             z^(tau+1) - z^tau + x
``"standard"``      u[t+1] = u[t] - x u[t-tau] + g (u[t] - u[t-1])          z^(tau+2) - (1+g) z^(tau+1) + g z^tau + x z
``"shifted"``       u[t+1] = u[t] - x u[t-tau] + g (u[t-tau] - u[t-tau-1])  z^(tau+2) - z^(tau+1) + (x - g) z + g
==================  =====================================================  =============================================

The dynamics are stable when every root lies strictly inside the unit circle.  With
``momentum == 0`` both momentum kinds reduce to the no-momentum polynomial (times ``z``).

Which quantity is returned
--------------------------
:func:`stability_threshold` returns **x* = eta * lambda_max**, the largest ``eta * a`` for
which the linearised dynamics are stable: a run with ``eta * lambda_max < x*`` can stay at
the minimum.  The spec's momentum table is instead expressed in the *effective* learning
rate ``eta / (1 - gamma)``, i.e. it lists ``x* / (1 - gamma)``; pass ``effective=True`` (or
call :func:`effective_stability_threshold`) to get that form.  :func:`stability_table`
reports the effective form by default, so it reproduces the spec's table.

How it is computed
------------------
``x*`` is the *first* loss of stability when ``x`` grows from 0 (for ``x -> 0+`` the dynamics
are stable: the root at ``z = 1`` moves inwards).  The stable set need not be an interval, so
:func:`stability_threshold` first scans a fine geometric grid of ``x`` from ``1e-7`` upwards,
testing each point with :func:`numpy.roots`, stops at the first unstable grid point, and
then bisects between it and the previous (stable) grid point down to ``rtol``.  Only an
unstable window narrower than one grid step (a factor ``grid_ratio``, 2 % by default) lying
below the first unstable grid point could be missed.  For ``momentum == 0`` the closed form
``2 sin(pi / (2 (2 tau + 1)))``
(:func:`closed_form_threshold`) agrees with the root-based value.  Delays above ``ROOTS_UP_TO``
(64), where each root finding costs O(tau^3), use the boundary locus instead: the smallest
``x > 0`` that puts a root on the unit circle, found in one O(tau) scan of the circle
(``_threshold_by_boundary``); delays up to 4096 answer in seconds.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from functools import lru_cache

import numpy as np

from basinlab.errors import ConfigError

__all__ = [
    "StabilityInputError",
    "KINDS",
    "characteristic_polynomial",
    "spectral_radius",
    "is_stable",
    "closed_form_threshold",
    "stability_threshold",
    "effective_stability_threshold",
    "adjusted_lr",
    "stability_table",
]

KINDS = ("standard", "shifted")

# Largest x ever scanned.  For every polynomial above the product of the roots (or of the
# roots of p(z)/z) has modulus >= x - 1 once x > 1 + gamma, and at tau = 0 the exact
# threshold is 2 (1 + gamma) <= 4: the scan is therefore bounded by 4 (+ margin).
_X_MAX = 4.5
_X_MIN = 1e-7


class StabilityInputError(ConfigError, ValueError):
    """Invalid delay / momentum / kind (a :class:`ConfigError` that is also a ``ValueError``)."""


# ----------------------------------------------------------------------------- validation
def _check_delay(delay, name: str = "delay") -> int:
    if isinstance(delay, bool) or not isinstance(delay, numbers.Integral):
        if isinstance(delay, numbers.Real) and not isinstance(delay, bool) and float(delay).is_integer():
            delay = int(delay)
        else:
            raise StabilityInputError(f"{name} must be a non-negative integer number of server steps, got {delay!r}")
    delay = int(delay)
    if delay < 0:
        raise StabilityInputError(f"{name} must be a non-negative integer number of server steps, got {delay}")
    return delay


def _check_momentum(momentum) -> float:
    if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
        raise StabilityInputError(f"momentum must be a real number in [0, 1), got {momentum!r}")
    momentum = float(momentum)
    if not (0.0 <= momentum < 1.0):
        raise StabilityInputError(f"momentum must be in [0, 1), got {momentum}")
    return momentum


def _check_kind(kind) -> str:
    if kind not in KINDS:
        raise StabilityInputError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    return kind


# ----------------------------------------------------------------------------- polynomials
def characteristic_polynomial(x: float, delay: int, momentum: float = 0.0, kind: str = "standard") -> np.ndarray:
    """Coefficients (highest power first, as :func:`numpy.roots` wants) for ``x = eta * a``."""
    tau = _check_delay(delay)
    g = _check_momentum(momentum)
    _check_kind(kind)
    x = float(x)
    if g == 0.0:
        c = np.zeros(tau + 2)
        c[0], c[1] = 1.0, -1.0
        c[-1] += x
        return c
    c = np.zeros(tau + 3)
    if kind == "standard":  # z^(tau+2) - (1+g) z^(tau+1) + g z^tau + x z
        c[0] = 1.0
        c[1] += -(1.0 + g)
        c[2] += g
        c[-2] += x
    else:  # shifted: z^(tau+2) - z^(tau+1) + (x - g) z + g
        c[0] = 1.0
        c[1] += -1.0
        c[-2] += x - g
        c[-1] += g
    return c


def spectral_radius(x: float, delay: int, momentum: float = 0.0, kind: str = "standard") -> float:
    """Largest root modulus of the characteristic polynomial (``< 1`` means stable)."""
    roots = np.roots(characteristic_polynomial(x, delay, momentum, kind))
    return float(np.max(np.abs(roots))) if roots.size else 0.0


def is_stable(x: float, delay: int, momentum: float = 0.0, kind: str = "standard") -> bool:
    """True when all roots lie strictly inside the unit circle."""
    return spectral_radius(x, delay, momentum, kind) < 1.0


def closed_form_threshold(delay: int) -> float:
    """No-momentum threshold on ``eta * a``: ``2 sin(pi / (2 (2 tau + 1)))``."""
    tau = _check_delay(delay)
    return 2.0 * math.sin(math.pi / (2.0 * (2.0 * tau + 1.0)))


# ----------------------------------------------------------------------------- thresholds
ROOTS_UP_TO = 64  # delays up to this use the root scan; longer ones the boundary locus (one O(tau) pass)


def _boundary_x(theta: np.ndarray, tau: int, g: float, kind: str) -> np.ndarray:
    """The x = eta*a that puts a root of the characteristic polynomial at z = exp(i theta)."""
    z = np.exp(1j * theta)
    if g == 0.0:                       # z^(tau+1) - z^tau + x = 0
        return z ** tau * (1.0 - z)
    if kind == "standard":             # z^(tau+2) - (1+g) z^(tau+1) + g z^tau + x z = 0
        return -(z ** (tau - 1)) * (z - 1.0) * (z - g)
    return -(z ** (tau + 1)) + z ** tau + g - g / z   # shifted: ... + (x - g) z + g = 0


def _threshold_by_boundary(tau: int, g: float, kind: str) -> float:
    """The smallest x > 0 at which a root reaches the unit circle (boundary locus / D-decomposition).

    Roots move continuously with x and the dynamics are stable for x -> 0+, so stability is first
    lost at the smallest real x(theta) > 0; theta is scanned on (0, pi] at 64 points per oscillation
    of z^tau, each sign change of Im x(theta) refined by bisection. O(tau) work instead of O(tau^3)
    root finding per tested x; agrees with the root scan (tests/test_stability.py).
    """
    theta = np.linspace(0.0, math.pi, 64 * (tau + 2) + 1)[1:]
    im = _boundary_x(theta, tau, g, kind).imag
    candidates = [_boundary_x(np.array([math.pi]), tau, g, kind).real[0]]  # z = -1: x(pi) is real
    for i in np.nonzero(np.sign(im[:-1]) * np.sign(im[1:]) < 0)[0]:
        lo, hi = theta[i], theta[i + 1]
        for _ in range(60):  # bisection on the sign of Im x
            mid = 0.5 * (lo + hi)
            if np.sign(_boundary_x(np.array([mid]), tau, g, kind).imag[0]) == np.sign(im[i]):
                lo = mid
            else:
                hi = mid
        candidates.append(_boundary_x(np.array([0.5 * (lo + hi)]), tau, g, kind).real[0])
    positive = [float(c) for c in candidates if c > 0]
    if not positive:  # pragma: no cover - a real positive crossing always exists for these dynamics
        raise RuntimeError(f"no loss of stability found (tau={tau}, gamma={g}, {kind})")
    return min(positive)


@lru_cache(maxsize=4096)
def _threshold(tau: int, g: float, kind: str, grid_ratio: float, rtol: float) -> float:
    if tau > ROOTS_UP_TO:
        return _threshold_by_boundary(tau, g, kind)

    def stable(x: float) -> bool:
        return spectral_radius(x, tau, g, kind) < 1.0

    n = int(math.ceil(math.log(_X_MAX / _X_MIN) / math.log(grid_ratio))) + 1
    grid = _X_MIN * grid_ratio ** np.arange(n)
    if not stable(grid[0]):  # pragma: no cover - theory says x -> 0+ is stable
        raise RuntimeError(f"dynamics unstable already at eta*a = {grid[0]:g} (tau={tau}, gamma={g}, {kind})")
    lo = float(grid[0])
    hi = None
    for x in grid[1:]:
        if stable(float(x)):
            lo = float(x)
        else:
            hi = float(x)
            break
    if hi is None:  # pragma: no cover - excluded by the bound behind _X_MAX
        raise RuntimeError(f"no loss of stability found up to eta*a = {_X_MAX} (tau={tau}, gamma={g}, {kind})")
    # Bisection between the last stable and the first unstable grid point.
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if stable(mid):
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def stability_threshold(
    delay: int,
    momentum: float = 0.0,
    kind: str = "standard",
    *,
    effective: bool = False,
    grid_ratio: float = 1.02,
    rtol: float = 1e-10,
) -> float:
    """Largest ``eta * lambda_max`` for which the linearised delayed dynamics are stable.

    Parameters
    ----------
    delay:
        Gradient delay ``tau`` in server updates (``0`` = synchronous SGD).
    momentum:
        Server momentum ``gamma`` in ``[0, 1)``.
    kind:
        ``"standard"`` (momentum at the server, heavy ball on current weights) or
        ``"shifted"`` (per-worker momentum buffers: the momentum term is delayed too).
        Ignored when ``momentum == 0``.
    effective:
        ``False`` (default): return ``x* = eta * lambda_max`` at the edge of stability.
        ``True``: return ``x* / (1 - gamma)``, the threshold on ``eta_eff * lambda_max`` with
        the effective learning rate ``eta / (1 - gamma)``: the form of the spec's table.
    grid_ratio, rtol:
        Geometric step of the initial scan and relative tolerance of the bisection.

    Raises
    ------
    StabilityInputError (a ConfigError and a ValueError) for a negative or non-integer
    delay, momentum outside ``[0, 1)`` or an unknown kind.
    """
    tau = _check_delay(delay)
    g = _check_momentum(momentum)
    _check_kind(kind)
    if not (isinstance(grid_ratio, numbers.Real) and 1.0 < float(grid_ratio) <= 2.0):
        raise StabilityInputError(f"grid_ratio must be in (1, 2], got {grid_ratio!r}")
    if not (isinstance(rtol, numbers.Real) and 0.0 < float(rtol) < 0.1):
        raise StabilityInputError(f"rtol must be in (0, 0.1), got {rtol!r}")
    x = _threshold(tau, g, "standard" if g == 0.0 else kind, float(grid_ratio), float(rtol))
    return x / (1.0 - g) if effective else x


def effective_stability_threshold(delay: int, momentum: float = 0.0, kind: str = "standard") -> float:
    """``stability_threshold(...) / (1 - momentum)``: the threshold on ``eta/(1-gamma) * lambda_max``."""
    return stability_threshold(delay, momentum, kind, effective=True)


def adjusted_lr(lr: float, delay: int, from_delay: int = 0) -> float:
    """Learning rate that keeps the same minima stable when the delay changes.

    ``eta_2 = eta_1 * sin(pi / (4 d_2 + 2)) / sin(pi / (4 d_1 + 2))`` with ``d_1 = from_delay``
    (default 0: synchronous training, so ``eta_tau = eta_0 sin(pi / (4 tau + 2))``) and
    ``d_2 = delay``.  Equivalently ``lr * closed_form_threshold(delay) / closed_form_threshold(from_delay)``.
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(float(lr)) or float(lr) <= 0:
        raise StabilityInputError(f"lr must be a positive finite number, got {lr!r}")
    d2 = _check_delay(delay)
    d1 = _check_delay(from_delay, "from_delay")
    return float(lr) * math.sin(math.pi / (4 * d2 + 2)) / math.sin(math.pi / (4 * d1 + 2))


def stability_table(
    delays: Iterable[int],
    momenta: Sequence[float],
    kinds: Sequence[str] = KINDS,
    *,
    effective: bool = True,
):
    """Thresholds as a :class:`pandas.DataFrame` laid out like the spec's table.

    Rows: one per delay (index named ``"delay"``).  Columns: a two-level
    :class:`pandas.MultiIndex` ``(kind, momentum)``; a momentum of 0 gives a single column
    ``("none", 0.0)`` (both kinds coincide there), every other momentum one column per kind,
    ordered ``none``, then all ``standard`` columns, then all ``shifted`` ones, as in the spec.
    Values are ``eta * lambda_max / (1 - gamma)`` thresholds (``effective=True``, the spec's
    form) or ``eta * lambda_max`` thresholds (``effective=False``).

    ``stability_table([1, 4, 16, 32], [0, 0.5, 0.9, 0.99])`` reproduces the spec's table.
    """
    import pandas as pd

    delays = [_check_delay(d) for d in delays]
    momenta = [_check_momentum(m) for m in momenta]
    kinds = [_check_kind(k) for k in kinds]
    if not delays or not momenta:
        raise StabilityInputError("stability_table needs at least one delay and one momentum")
    columns = []
    if any(m == 0.0 for m in momenta):
        columns.append(("none", 0.0))
    for kind in kinds:
        for m in momenta:
            if m != 0.0 and (kind, m) not in columns:
                columns.append((kind, m))
    data = [
        [stability_threshold(d, m, "standard" if k == "none" else k, effective=effective) for k, m in columns]
        for d in delays
    ]
    index = pd.Index(delays, name="delay")
    cols = pd.MultiIndex.from_tuples(columns, names=["kind", "momentum"])
    return pd.DataFrame(data, index=index, columns=cols)
