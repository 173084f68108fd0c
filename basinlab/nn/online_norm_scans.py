"""The linear scans behind OnlineNorm: state_t = a_t state_{t-1} + c_t over a batch, exactly, no per-sample loop.

Constant decay (the forward statistics) is one matrix product per chunk of at most _CHUNK samples with a
cached decay matrix; varying decay (the backward control process) is a matrix of products or a log-depth
doubling scan. Both are exact to rounding against the per-sample recursion (tests/test_online_norm.py)."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch

_CHUNK = 256  # longest batch scanned with one matrix; longer batches go chunk by chunk
_CACHE_MAX = 32  # entries per cache: one per (batch length, decay, device, dtype) a model meets


class _LRUCache:
    """Constants built once per key (plain tensors, outside any inference mode), the least recently used
    dropped beyond _CACHE_MAX; a builder returning None is not cached."""

    def __init__(self):
        self._entries: OrderedDict[tuple, object] = OrderedDict()

    def get(self, key: tuple, build):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        with torch.inference_mode(False), torch.no_grad():  # usable inside and outside inference mode
            value = build()
        if value is not None:
            self._entries[key] = value
            while len(self._entries) > _CACHE_MAX:
                self._entries.popitem(last=False)
        return value


_MATRICES = _LRUCache()
_POWERS = _LRUCache()
_CONSTS = _LRUCache()


def _decay_matrix(n: int, alpha: float, scale: float, device, dtype) -> torch.Tensor:
    """(n+1) x (n+1) matrix M with [s_prev; inp_0..inp_{n-1}] -> [state before sample 0..n-1; final].

    Row k (k = 0..n) is the state after k samples of state_t = alpha state_{t-1} + scale inp_t:
    M[k, 0] = alpha^k and M[k, j+1] = scale alpha^(k-1-j) for j < k (0 above the diagonal).
    Built in float64 from non-negative powers only (no alpha^-n), cached per key (LRU).
    """
    def build():
        k = torch.arange(n + 1, dtype=torch.float64)
        expo = k[:, None] - 1.0 - k[None, :n]  # k-1-j
        body = torch.where(expo >= 0, torch.pow(float(alpha), expo.clamp(min=0.0)) * scale, 0.0)
        first = torch.pow(float(alpha), k)[:, None]
        return torch.cat([first, body], dim=1).to(device=device, dtype=dtype)

    return _MATRICES.get((n, alpha, scale, device, dtype), build)


def _exact_matmul(mat: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """mat @ rhs, in float64 when float32 matmuls may run in reduced precision (TF32 / bf16 modes)."""
    if (
        rhs.dtype == torch.float32
        and rhs.device.type != "mps"  # no float64 there
        and (
            torch.get_float32_matmul_precision() != "highest"
            or (rhs.is_cuda and torch.backends.cuda.matmul.allow_tf32)
        )
    ):
        return (mat.double() @ rhs.double()).to(rhs.dtype)
    return mat @ rhs


_PRODUCT_RANGE = (1e-250, 1e250)  # float64 partial products kept well inside the normal range


def _decay_powers(n: int, alpha: float, scale: float, device):
    """Cached float64 columns for the closed-form constant-decay scan, or None if out of range.

    Returns (pext, qext), both [n+1, 1]: pext[k] = alpha^k, qext[0] = 1 and
    qext[j+1] = scale alpha^-(j+1). Used only when alpha^n >= 1e-250, so that the negative powers
    stay below 1e250 (no overflow, no underflow).
    """
    def build():
        if not (alpha > 0.0 and n * math.log(alpha) > math.log(_PRODUCT_RANGE[0])):
            return None
        pext = torch.pow(float(alpha), torch.arange(n + 1, dtype=torch.float64))
        qext = float(scale) / pext
        qext[0] = 1.0
        return pext.unsqueeze(1).to(device), qext.unsqueeze(1).to(device)

    return _POWERS.get((n, alpha, scale, device), build)


def _const_decay_scan(inp: torch.Tensor, s0: torch.Tensor, alpha: float, scale: float):
    """state_t = alpha state_{t-1} + scale inp_t over dim 0 of inp [B, C], state_{-1} = s0 [C].

    Returns (prev [B, C] with prev[t] = state_{t-1}, final state [C]).
    Closed form in float64 on [s0; inp]: state after k samples
    = alpha^k (s0 + sum_{j<k} scale inp_j alpha^-(j+1)), used when alpha^B stays far from
    underflow (every realistic decay and batch); otherwise the cached matrix of non-negative powers.
    Batches longer than ``_CHUNK`` go chunk by chunk, carrying the state.
    """
    n = inp.shape[0]
    if n > _CHUNK:
        prevs = []
        state = s0
        for start in range(0, n, _CHUNK):
            prev, state = _const_decay_scan(inp[start : start + _CHUNK], state, alpha, scale)
            prevs.append(prev)
        return torch.cat(prevs, dim=0), state
    rows = torch.cat([s0.unsqueeze(0), inp], dim=0)  # [n+1, C]
    pw = None if inp.device.type == "mps" else _decay_powers(n, alpha, scale, inp.device)
    if pw is not None:
        pext, qext = pw
        out = torch.cumsum(rows * qext, dim=0).mul_(pext).to(inp.dtype)
    else:
        out = _exact_matmul(_decay_matrix(n, alpha, scale, inp.device, inp.dtype), rows)
    return out[:n], out[n]


def _affine_scan(a: torch.Tensor, c: torch.Tensor, s0: torch.Tensor):
    """state_t = a_t state_{t-1} + c_t over dim 0 of a, c [B, C], state_{-1} = s0 [C].

    Returns (prev [B, C] with prev[t] = state_{t-1}, final state [C]). a_t may be <= 0 or 0.
    On CPU the cheap product form (``_affine_scan_products``) is used when its range check passes,
    otherwise (and on other devices, where the check would synchronise) the log-depth scan.
    Batches longer than ``_CHUNK`` are scanned chunk by chunk, carrying the state.
    """
    n = a.shape[0]
    if n > _CHUNK:
        prevs = []
        state = s0
        for start in range(0, n, _CHUNK):
            prev, state = _affine_scan(a[start : start + _CHUNK], c[start : start + _CHUNK], state)
            prevs.append(prev)
        return torch.cat(prevs, dim=0), state
    if a.device.type == "cpu":
        out = _affine_scan_products(a, c, s0)
        if out is not None:
            return out
    return _affine_scan_doubling(a, c, s0)


def _affine_scan_products(a: torch.Tensor, c: torch.Tensor, s0: torch.Tensor):
    """Closed form in float64: with p_t = a_0 ... a_t, state_t = p_t (s0 + sum_{j<=t} c_j / p_j).

    Only valid while every partial product is a normal float64 far from under/overflow (no zero
    a_t, no long runs of tiny or huge |a_t|): then p_t / p_j carries a relative error of at most
    ~(t + j) 2^-53 and every term keeps the accuracy of the sequential recurrence. Returns None when
    the range check fails (the caller then uses the doubling scan, which has no such limit).
    """
    n = a.shape[0]
    p = torch.cumprod(torch.cat([_ones_row(a), a], dim=0), dim=0)  # [n+1, C] float64, p[0] = 1
    lo, hi = torch.aminmax(p.abs())
    if not (lo.item() > _PRODUCT_RANGE[0] and hi.item() < _PRODUCT_RANGE[1]):
        return None
    rows = torch.cat([s0.unsqueeze(0), c], dim=0)
    out = torch.cumsum(rows / p, dim=0).mul_(p).to(a.dtype)
    return out[:n], out[n]


def _ones_row(like: torch.Tensor) -> torch.Tensor:
    return _zeros_ones(like.shape[1], like.device, torch.float64)[1].unsqueeze(0)


def _affine_scan_doubling(a: torch.Tensor, c: torch.Tensor, s0: torch.Tensor):
    """Hillis-Steele inclusive scan of the affine maps (a, c): after the step with offset k every
    element holds the composition of the (up to 2k) maps ending at it. The initial state is folded
    into element 0 first, so the scanned offsets are the states themselves. Exact up to rounding
    (products and sums only, no logarithms or divisions, any sign or size of a_t); log2(B) steps.
    """
    n = a.shape[0]
    c = c.clone()
    c[0].addcmul_(a[0], s0)
    k = 1
    while k < n:
        new_c = torch.addcmul(c[k:], a[k:], c[:-k])
        if 2 * k < n:  # the multipliers of the last step are never used
            a = torch.cat([a[:k], a[k:] * a[:-k]], dim=0)
        c = torch.cat([c[:k], new_c], dim=0)
        k *= 2
    return torch.cat([s0.unsqueeze(0), c[:-1]], dim=0), c[-1]


def _zeros_ones(n: int, device, dtype):
    """Cached constant (zeros(n), ones(n)) used as unit statistics for F.batch_norm-based ops."""
    return _CONSTS.get((n, device, dtype), lambda: (torch.zeros(n, device=device, dtype=dtype),
                                                     torch.ones(n, device=device, dtype=dtype)))
