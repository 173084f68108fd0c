"""Low-rank metrics of conv weights: EVBMF, knowledge gain and mapping condition (AdaS / autoHyper).

EVBMF (empirical variational Bayes matrix factorisation; Nakajima et al., JMLR 2013, "Global analytic
solution of fully-observed variational Bayesian matrix factorization") separates a matrix
``Y = low-rank + Gaussian noise`` and returns the singular values of the low-rank part. AdaS
(Hosseini & Plataniotis) and autoHyper (Tuli, Hosseini & Plataniotis) apply it to two unfoldings
of every conv weight ``W`` of shape ``[C_out, C_in, k, k]``:

- mode-3 ("in"):  ``W.permute(1, 0, 2, 3).reshape(C_in, C_out*k*k)``, normalised by ``N = C_in``;
- mode-4 ("out"): ``W.reshape(C_out, C_in*k*k)``, normalised by ``N = C_out``.

With ``d`` the kept (low-rank) singular values in descending order, ``pos = len(d)`` and
``v = d**p`` (``p`` in {1, 2}):

- ``rank = pos / N``;
- knowledge gain ``S = sum(v / max(v)) / N``;
- mapping condition ``cond = v[0] / v[-1]``;
- ``S = cond = 0`` when nothing is kept (``pos == 0``); a freshly initialised layer is pure noise
  and gives rank 0, ``S = 0``.

EVBMF, for ``Y`` of shape ``L x M`` with ``L <= M`` (a taller matrix is transposed first: the
singular values do not change, and the reference, which did not transpose, raised on 1x1 convs
with ``C_in > C_out`` and then silently reused the previous epoch's values), ``H = L``:

- ``s`` = singular values of ``Y``, ``alpha = L/M``, ``tau_bar = 2.5129 sqrt(alpha)``,
  ``x_bar = (1 + tau_bar)(1 + alpha/tau_bar)``; the residual is 0 since ``H = L``;
- ``sigma^2`` = argmin over ``[lower, upper]`` of
  ``sum_{x <= x_bar} (x - ln x) + sum_{x > x_bar} [x - tau(x) + ln((tau(x)+1)/x) + alpha ln(tau(x)/alpha + 1)]``
  with ``x = s^2 / (M sigma^2)``, ``tau(x) = (x - (1+alpha) + sqrt((x-1-alpha)^2 - 4 alpha)) / 2``;
  ``e = min(ceil(L/(1+alpha)) - 1, H) - 1``, ``upper = sum(s^2)/(L M)``,
  ``lower = max(s[e+1]^2 / (M x_bar), mean(s[e+1:]^2) / M)`` (0-based indices, as the reference);
- kept: ``s_h > sqrt(M sigma^2 x_bar)``, with value
  ``d_h = (s_h/2) [1 - (L+M) sigma^2/s_h^2 + sqrt((1 - (L+M) sigma^2/s_h^2)^2 - 4 L M sigma^4/s_h^4)]``.

Implementation notes (choices where the reference is fragile):

- Every term ``x - ln x`` contains ``-ln s_h^2``, a constant in ``sigma^2``. We minimise the
  objective without it, which has the same argmin and stays finite when some singular values are
  exactly 0 (dead filters, exactly low-rank matrices), where the reference's objective is ``+inf``
  everywhere. ``lower`` is floored at ``1e-12 * upper`` for the same reason.
- The minimisation runs over ``t = ln sigma^2`` (so its tolerance is relative, whatever the weight
  scale: the reference's absolute ``xatol = 1e-5`` on ``sigma^2`` is coarse for small weights):
  the objective is evaluated on a 48-point log grid spanning ``[lower, upper]`` (vectorised), then
  ``scipy.optimize.minimize_scalar(method='bounded')`` refines inside the bracket around the best
  grid point. This is the global argmin up to the grid resolution, where plain bounded Brent on
  the whole interval may stop in a local minimum.
- ``lower >= upper`` (all singular values equal, or rounding) gives ``sigma^2 = upper`` (the
  mathematics guarantees ``lower <= upper``); an all-zero matrix keeps nothing; a 1xN or Nx1
  matrix has ``lower == upper`` and keeps nothing (one row cannot be told from noise).
- SVDs use ``torch.linalg.svdvals`` on the tall orientation (``M x L``): with MKL on CPU that is
  10-30x faster than the wide one for the same singular values. Matrices of one shape are stacked
  into one batched call. float16/bfloat16 weights are promoted to float32; the EVBMF arithmetic
  itself is float64 numpy.
- Non-finite weights give NaN metrics for that layer (with a warning), never an exception and
  never stale values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from basinlab.errors import ConfigError

if TYPE_CHECKING:  # pandas takes ~0.2 s to import: loaded where a table is built
    import pandas as pd

__all__ = [
    "EVBMFFit",
    "evbmf",
    "evbmf_fit",
    "evbmf_batched",
    "unfoldings",
    "metrics_from_values",
    "layer_metrics",
    "weights_metrics",
    "model_metrics",
    "metric_layers",
    "knowledge_gain_zero_fraction",
    "METRIC_COLUMNS",
]

TAU_BAR_COEF = 2.5129  # Nakajima et al.: tau_bar = 2.5129 sqrt(alpha)
_GRID_POINTS = 48
_LOWER_FLOOR = 1e-12  # lower bound floor, relative to upper
_XATOL_LOG = 1e-9  # tolerance of the bounded minimisation, in ln(sigma^2)

METRIC_COLUMNS = ("rank_in", "rank_out", "S_in", "S_out", "cond_in", "cond_out", "kept_in", "kept_out")


class EVBMFFit(NamedTuple):
    """Result of :func:`evbmf_fit`. ``values``: kept singular values (descending, float64 CPU)."""

    values: Tensor
    sigma2: float  # estimated noise variance (0.0 for an all-zero matrix, nan for non-finite input)
    lower: float  # bounds the minimisation searched over
    upper: float
    shape: tuple  # (L, M) after transposition, L <= M

    @property
    def rank(self) -> int:
        return int(self.values.numel())


# --------------------------------------------------------------------------------------------
# EVBMF core (numpy float64, one matrix given its singular values)
# --------------------------------------------------------------------------------------------

def _tau(x: np.ndarray, alpha: float) -> np.ndarray:
    b = x - (1.0 + alpha)
    return 0.5 * (b + np.sqrt(np.maximum(b * b - 4.0 * alpha, 0.0)))


def _objective_log(t: np.ndarray, s2: np.ndarray, L: int, M: int, x_bar: float) -> np.ndarray:
    """EVBMF objective (minus the sigma-independent constant sum(-ln s_h^2)) at ln(sigma^2) = t.

    ``t`` has any shape; the result has the same shape. ``s2``: squared singular values [H].
    """
    alpha = L / M
    t = np.asarray(t, dtype=np.float64)
    sigma2 = np.exp(t)[..., None]
    x = s2 / (M * sigma2)  # [..., H]
    big = x > x_bar
    tau = _tau(np.where(big, x, x_bar), alpha)
    extra = np.where(big, -tau + np.log1p(tau) + alpha * np.log1p(tau / alpha), 0.0)
    H = s2.shape[-1]
    # sum_h (x_h - ln x_h) = sum_h x_h + H ln(M sigma^2) - sum_h ln s_h^2 ; the last sum is dropped.
    # (L - H) ln sigma^2 and residual/(M sigma^2) vanish: H = L, residual = 0.
    return x.sum(-1) + extra.sum(-1) + H * (math.log(M) + t)


def _evbmf_from_svals(s: np.ndarray, L: int, M: int) -> tuple[np.ndarray, float, float, float]:
    """Kept values, sigma^2, lower, upper for singular values ``s`` (descending, length L) of an
    L x M matrix with L <= M."""
    s = np.asarray(s, dtype=np.float64)
    if not np.all(np.isfinite(s)):
        return np.full(0, np.nan), math.nan, math.nan, math.nan
    s = np.sort(np.maximum(s, 0.0))[::-1]
    H = L
    s2 = s * s
    total = float(s2.sum())
    if total <= 0.0 or s[0] <= 0.0:
        return np.zeros(0), 0.0, 0.0, 0.0
    alpha = L / M
    tau_bar = TAU_BAR_COEF * math.sqrt(alpha)
    x_bar = (1.0 + tau_bar) * (1.0 + alpha / tau_bar)
    # e = min(ceil(L/(1+alpha)) - 1, H) - 1 with L/(1+alpha) = L*M/(L+M), in exact integers.
    e = min(-(-(L * M) // (L + M)) - 1, H) - 1
    upper = total / (L * M)
    tail = s2[e + 1:]
    lower = max(float(tail[0]) / (M * x_bar), float(tail.mean()) / M)
    lower = max(lower, upper * _LOWER_FLOOR)
    if not lower < upper:
        sigma2 = upper
    else:
        sigma2 = _minimise_sigma2(s2, L, M, x_bar, lower, upper)
    keep = s2 > M * sigma2 * x_bar
    sk = s[keep]
    if sk.size == 0:
        return np.zeros(0), sigma2, lower, upper
    r = (L + M) * sigma2 / (sk * sk)
    disc = np.maximum((1.0 - r) ** 2 - 4.0 * L * M * sigma2 * sigma2 / sk ** 4, 0.0)
    d = 0.5 * sk * (1.0 - r + np.sqrt(disc))
    return d, sigma2, lower, upper


def _minimise_sigma2(s2: np.ndarray, L: int, M: int, x_bar: float, lower: float, upper: float) -> float:
    a, b = math.log(lower), math.log(upper)
    grid = np.linspace(a, b, _GRID_POINTS)
    values = _objective_log(grid, s2, L, M, x_bar)
    k = int(np.argmin(values))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, _GRID_POINTS - 1)]
    best_t, best_f = float(grid[k]), float(values[k])
    if hi > lo:
        from scipy.optimize import minimize_scalar  # 0.3 s to import: only when a fit needs it
        res = minimize_scalar(lambda t: float(_objective_log(t, s2, L, M, x_bar)), bounds=(lo, hi),
                              method="bounded", options={"xatol": _XATOL_LOG})
        if np.isfinite(res.fun) and res.fun <= best_f:
            best_t = float(res.x)
    return math.exp(best_t)


# --------------------------------------------------------------------------------------------
# Matrices -> singular values (batched torch SVDs)
# --------------------------------------------------------------------------------------------

def _as_matrix(matrix) -> Tensor:
    if isinstance(matrix, np.ndarray):
        matrix = torch.from_numpy(np.ascontiguousarray(matrix))
    if not isinstance(matrix, Tensor):
        raise TypeError(f"expected a torch.Tensor or numpy.ndarray, got {type(matrix).__name__}")
    if matrix.dim() != 2:
        raise ValueError(f"EVBMF needs a 2-D matrix, got shape {tuple(matrix.shape)}")
    m = matrix.detach()
    if m.is_complex():
        raise TypeError("EVBMF needs a real matrix")
    if m.dtype not in (torch.float32, torch.float64):
        m = m.to(torch.float32)
    if m.shape[0] > m.shape[1]:
        m = m.T  # L <= M
    return m


def _svals_many(mats: Sequence[Tensor]) -> list[np.ndarray | None]:
    """Singular values (float64 numpy, descending) of L x M matrices (L <= M), batched by shape.

    None for matrices with non-finite entries or no entries."""
    out: list[np.ndarray | None] = [None] * len(mats)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        if m.numel() == 0:
            continue
        groups.setdefault((tuple(m.shape), m.dtype, m.device), []).append(i)
    for (_, _, _), idx in groups.items():
        stack = torch.stack([mats[i] for i in idx])  # [B, L, M]
        finite = torch.isfinite(stack).flatten(1).all(1)
        good = [j for j in range(len(idx)) if bool(finite[j])]
        if not good:
            continue
        sub = stack[good] if len(good) < len(idx) else stack
        # The tall orientation [B, M, L] is much faster on CPU (MKL) for the same singular values.
        sv = torch.linalg.svdvals(sub.mT).to("cpu", torch.float64).numpy()
        for row, j in enumerate(good):
            out[idx[j]] = sv[row]
    return out


def evbmf_fit(matrix: Tensor | np.ndarray) -> EVBMFFit:
    """EVBMF of one matrix with its noise estimate; see the module docstring for the formulas."""
    return _fits([_as_matrix(matrix)])[0]


def _fits(mats: Sequence[Tensor]) -> list[EVBMFFit]:
    svals = _svals_many(mats)
    fits = []
    for m, s in zip(mats, svals):
        L, M = int(m.shape[0]), int(m.shape[1])
        if m.numel() == 0:
            fits.append(EVBMFFit(torch.zeros(0, dtype=torch.float64), 0.0, 0.0, 0.0, (L, M)))
            continue
        if s is None:  # non-finite entries
            fits.append(EVBMFFit(torch.full((0,), math.nan, dtype=torch.float64), math.nan, math.nan,
                                 math.nan, (L, M)))
            continue
        d, sigma2, lower, upper = _evbmf_from_svals(s, L, M)
        fits.append(EVBMFFit(torch.from_numpy(np.ascontiguousarray(d)), sigma2, lower, upper, (L, M)))
    return fits


def evbmf(matrix: Tensor | np.ndarray) -> Tensor:
    """Kept singular values ``d_h`` (descending, float64 CPU tensor) of the EVBMF low-rank part.

    Any 2-D shape (1xN, Nx1, tall or wide: a tall matrix is transposed, so ``evbmf(Y)`` equals
    ``evbmf(Y.T)``). Empty for an all-zero matrix or pure noise. Raises ValueError on non-finite
    entries.
    """
    fit = evbmf_fit(matrix)
    if math.isnan(fit.sigma2):
        raise ValueError("EVBMF: the matrix has non-finite entries")
    return fit.values


def evbmf_batched(matrices: Iterable[Tensor | np.ndarray]) -> list[Tensor]:
    """:func:`evbmf` of many matrices; the SVDs of matrices of one shape run as one batched call.

    Unlike :func:`evbmf`, a matrix with non-finite entries gives a tensor holding one NaN instead
    of raising (so that one diverged layer does not stop a whole model's evaluation).
    """
    fits = _fits([_as_matrix(m) for m in matrices])
    return [f.values if not math.isnan(f.sigma2) else torch.full((1,), math.nan, dtype=torch.float64)
            for f in fits]


# --------------------------------------------------------------------------------------------
# Layer metrics
# --------------------------------------------------------------------------------------------

def unfoldings(weight: Tensor) -> tuple[Tensor, int, Tensor, int]:
    """(mode-3 unfolding, N_in, mode-4 unfolding, N_out) of a conv or linear weight.

    4-D ``[C_out, C_in, k_h, k_w]``: mode-3 ``C_in x C_out*k_h*k_w``, mode-4 ``C_out x C_in*k_h*k_w``.
    2-D linear ``[out, in]`` is treated as a 1x1 conv: mode-3 is ``W.T`` (in x out), mode-4 is ``W``.
    For grouped convs the weight's own shape is used (``C_in`` is the per-group input count).
    """
    if not isinstance(weight, Tensor):
        weight = torch.as_tensor(weight)
    w = weight.detach()
    if w.dim() == 2:
        w = w[:, :, None, None]
    if w.dim() != 4:
        raise ValueError(f"low-rank metrics need a 4-D conv or 2-D linear weight, got shape {tuple(weight.shape)}")
    c_out, c_in = int(w.shape[0]), int(w.shape[1])
    mode3 = w.permute(1, 0, 2, 3).reshape(c_in, -1)
    mode4 = w.reshape(c_out, -1)
    return mode3, c_in, mode4, c_out


def metrics_from_values(d, n: int, p: float = 1) -> dict:
    """rank, S, cond (and the kept count) of one unfolding from its kept values ``d``.

    ``{'rank': pos/N, 'S': sum(d^p/max d^p)/N, 'cond': d_1^p/d_pos^p, 'kept': pos}``; all 0 when
    nothing is kept; NaN when ``d`` holds NaN (non-finite weights).
    """
    d = np.asarray(d.numpy() if isinstance(d, Tensor) else d, dtype=np.float64)
    if d.size and not np.all(np.isfinite(d)):
        return {"rank": math.nan, "S": math.nan, "cond": math.nan, "kept": math.nan}
    pos = int(d.size)
    if pos == 0:
        return {"rank": 0.0, "S": 0.0, "cond": 0.0, "kept": 0}
    v = np.sort(d)[::-1] ** p
    vmax = float(v[0])
    if vmax <= 0.0:
        return {"rank": pos / n, "S": 0.0, "cond": 0.0, "kept": pos}
    return {"rank": pos / n, "S": float(np.sum(v / vmax)) / n, "cond": vmax / float(v[-1]), "kept": pos}


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p <= 0:
        raise ConfigError(f"p (power of the singular values in S and cond) must be a positive number, got {p!r}")
    return p


def _fit_metrics(fit: EVBMFFit, n: int, p: float) -> dict:
    if math.isnan(fit.sigma2):
        return {"rank": math.nan, "S": math.nan, "cond": math.nan, "kept": math.nan}
    return metrics_from_values(fit.values, n, p)


def weights_metrics(weights: Sequence[Tensor], p: float = 1) -> list[dict]:
    """:func:`layer_metrics` of many weights with batched SVDs (one call per distinct shape)."""
    p = _check_p(p)
    mats, ns = [], []
    for w in weights:
        m3, n3, m4, n4 = unfoldings(w)
        mats += [_as_matrix(m3), _as_matrix(m4)]
        ns += [n3, n4]
    fits = _fits(mats)
    out = []
    bad = 0
    for i in range(0, len(fits), 2):
        mi, mo = _fit_metrics(fits[i], ns[i], p), _fit_metrics(fits[i + 1], ns[i + 1], p)
        if math.isnan(fits[i].sigma2) or math.isnan(fits[i + 1].sigma2):
            bad += 1
        out.append({"rank_in": mi["rank"], "rank_out": mo["rank"], "S_in": mi["S"], "S_out": mo["S"],
                    "cond_in": mi["cond"], "cond_out": mo["cond"], "kept_in": mi["kept"], "kept_out": mo["kept"]})
    if bad:
        warnings.warn(f"low-rank metrics: {bad} layer(s) have non-finite weights; their metrics are NaN",
                      RuntimeWarning, stacklevel=3)
    return out


def layer_metrics(weight: Tensor, p: float = 1) -> dict:
    """Low-rank metrics of one layer weight.

    ``weight``: conv ``[C_out, C_in, k, k]`` (also non-square kernels), or a 2-D linear weight
    ``[out, in]`` treated as a 1x1 conv. Returns ``{'rank_in', 'rank_out', 'S_in', 'S_out',
    'cond_in', 'cond_out', 'kept_in', 'kept_out'}`` (``*_in`` from the mode-3 unfolding normalised
    by C_in, ``*_out`` from mode-4 normalised by C_out; ``kept_*`` are the EVBMF kept counts).
    """
    return weights_metrics([weight], p)[0]


def metric_layers(model: nn.Module, include_linear: bool = False) -> list[tuple[str, str, nn.Module]]:
    """(name, kind, module) of the layers :func:`model_metrics` reports, in ``named_modules`` order.

    ``nn.Conv2d`` modules (kind 'conv'); with ``include_linear`` also ``nn.Linear`` (kind 'linear').
    A module shared at several places is reported once (as ``named_modules`` does).
    """
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and isinstance(getattr(module, "weight", None), Tensor):
            layers.append((name, "conv", module))
        elif include_linear and isinstance(module, nn.Linear):
            layers.append((name, "linear", module))
    return layers


def model_metrics(model: nn.Module, p: float = 1, include_linear: bool = False) -> pd.DataFrame:
    """One row per conv layer (``nn.Conv2d``, in ``named_modules`` order) with its low-rank metrics.

    Columns: ``layer`` (module name), ``kind`` ('conv' or 'linear'), ``shape`` (e.g. '64x3x3x3'),
    then ``rank_in, rank_out, S_in, S_out, cond_in, cond_out, kept_in, kept_out``.
    Linear layers (as 1x1 convs) are added with ``include_linear=True``; autoHyper's Z and AdaS
    use the conv rows only. Cost: two SVDs per layer, batched over layers of equal shape.
    """
    layers = metric_layers(model, include_linear)
    with torch.no_grad():
        rows = weights_metrics([m.weight for _, _, m in layers], p)
    records = []
    for (name, kind, m), r in zip(layers, rows):
        records.append({"layer": name, "kind": kind, "shape": "x".join(str(int(s)) for s in m.weight.shape), **r})
    import pandas as pd

    return pd.DataFrame.from_records(records, columns=["layer", "kind", "shape", *METRIC_COLUMNS])


def knowledge_gain_zero_fraction(df: pd.DataFrame, tol: float = 1e-8) -> float:
    """autoHyper's Z_e: the fraction of conv-layer unfoldings whose knowledge gain S is 0 (within ``tol``).

    The reference joins the per-layer input-channel and output-channel gain lists
    (``input_channel_S + output_channel_S``, Python lists) and takes the mean of ``np.isclose(S, 0)``
    over the joined list: each layer counts twice, once per unfolding, so a layer that has learned in
    one unfolding but not the other counts 1/2. Uses the rows of kind 'conv' when the frame has a
    ``kind`` column. A nonzero S is at least ``1/N`` (N = channel count), so any ``tol`` far below
    ``1/4096`` separates the cases (the reference: atol 1e-8). NaN metrics (non-finite weights: a
    diverged trial) count as not zero. ConfigError when there is no conv layer.
    """
    if "kind" in df.columns:
        df = df[df["kind"] == "conv"]
    if len(df) == 0:
        raise ConfigError("autoHyper's knowledge-gain response needs a model with at least one conv layer")
    gains = np.concatenate([df["S_in"].to_numpy(dtype=np.float64), df["S_out"].to_numpy(dtype=np.float64)])
    return float(np.mean(np.abs(gains) <= tol))
