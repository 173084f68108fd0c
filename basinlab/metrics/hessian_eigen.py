"""Top Hessian eigenvalues: Lanczos with full reorthogonalisation, or power iteration with deflation
(PyHessian style). Conventions (model, criterion, batches; eval mode; seeded): basinlab.metrics.hessian."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from basinlab.metrics.hessian import (
    SharpnessInputError,
    _check_int,
    _check_positive,
    _flat_dtype,
    _flatten,
    _gaussian,
    _HessianOperator,
    _measurement_mode,
    _prepare,
    _unflatten,
    check_tolerance,
)

__all__ = ["HessianEigen", "hessian_eigenvalues", "lambda_max"]


# =============================================================================== results
@dataclass
class HessianEigen:
    """Result of :func:`hessian_eigenvalues`.

    ``values``: the eigenvalues, largest first (``which="LA"``: algebraically; ``"LM"``: in
    magnitude).  ``vectors``: for each value the unit eigenvector as a list of tensors shaped like
    the parameters (``None`` when ``return_vectors=False``).  ``hvp_count``: Hessian-vector
    products used.  ``converged``: every value met the tolerance before the iteration limit.
    ``history``: the estimate of ``values[0]`` after each HVP (length ``hvp_count``).

    Unpacks like a 3-tuple: ``values, vectors, hvp_count = hessian_eigenvalues(...)``.
    """

    values: list
    vectors: list | None
    hvp_count: int
    converged: bool = True
    method: str = "lanczos"
    history: list = field(default_factory=list, repr=False)

    def __iter__(self):
        return iter((self.values, self.vectors, self.hvp_count))


# =============================================================================== Lanczos core
def _lanczos(matvec, v0: Tensor, max_steps: int, *, stop=None, restart_gen=None):
    """Lanczos tridiagonalisation with full reorthogonalisation (Gram-Schmidt applied twice).

    Returns ``(alphas, betas, Q)``: ``T`` has diagonal ``alphas`` (length m) and off-diagonal
    ``betas`` (length m-1); ``Q`` (m x n) holds the orthonormal Lanczos vectors.  After each step
    ``stop(alphas, betas, beta_next, block_start)`` may end the iteration by returning True.
    On breakdown (an invariant subspace was found) the iteration ends or, when ``restart_gen``
    is given, restarts with a random vector orthogonal to ``Q`` (a zero off-diagonal entry in
    ``T``; ``block_start`` is the index of the first step of the current block); ``stop`` cannot
    end the iteration at a breakdown that restarts, since the complement may still hold copies
    of eigenvalues already found.
    """
    n = v0.numel()
    m_max = min(int(max_steps), n)
    eps = torch.finfo(v0.dtype).eps
    cap = min(m_max, 8)
    Q = torch.empty((cap, n), dtype=v0.dtype, device=v0.device)
    Q[0] = v0 / torch.linalg.vector_norm(v0)
    alphas: list[float] = []
    betas: list[float] = []
    scale = 0.0
    beta_prev = 0.0
    block_start = 0
    for j in range(m_max):
        w = matvec(Q[j])
        alpha = float(torch.dot(Q[j], w))
        w = w - alpha * Q[j]
        if j > block_start:
            w = w - beta_prev * Q[j - 1]
        basis = Q[: j + 1]
        for _ in range(2):
            w = w - basis.t().mv(basis.mv(w))
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        scale = max(scale, abs(alpha), beta)
        last = j + 1 == m_max
        breakdown = beta <= 100.0 * eps * max(scale, 1e-300) * math.sqrt(j + 1)
        restart = breakdown and not last and restart_gen is not None
        if stop is not None and stop(alphas, betas, 0.0 if breakdown else beta, block_start) and not restart:
            break
        if last or (breakdown and not restart):
            break
        if j + 1 >= cap:
            newcap = min(2 * cap, m_max)
            Q = torch.cat([Q, torch.empty((newcap - cap, n), dtype=Q.dtype, device=Q.device)])
            cap = newcap
        if breakdown:
            w = _gaussian(restart_gen, n, v0.dtype, v0.device)
            for _ in range(2):
                w = w - basis.t().mv(basis.mv(w))
            beta = 0.0
            block_start = j + 1
            w = w / torch.linalg.vector_norm(w)
        else:
            w = w / beta
        Q[j + 1] = w
        betas.append(beta)
        beta_prev = beta
    return alphas, betas, Q[: len(alphas)]


def _tridiag_eigh(alphas, betas):
    m = len(alphas)
    T = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        b = np.asarray(betas[: m - 1], dtype=np.float64)
        T += np.diag(b, 1) + np.diag(b, -1)
    return np.linalg.eigh(T)


def _select(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    key = -theta if which == "LA" else -np.abs(theta)
    return np.argsort(key, kind="stable")[:k]


# =============================================================================== eigenvalues
def hessian_eigenvalues(model: nn.Module, criterion: Callable, batches, top_k: int = 1, max_iter: int = 100,
                        tol: float = 1e-4, seed: int = 0, method: str = "lanczos", *, which: str = "LA",
                        params=None, return_vectors: bool = True, cache_graph: bool | None = None,
                        mode: str = "eval", start=None, scale=None) -> HessianEigen:
    """Top-``top_k`` eigenvalues (and eigenvectors) of the loss Hessian.

    ``which="LA"`` (default): the largest *algebraic* eigenvalues (lambda_max first, what
    sharpness and the stability threshold use).  ``which="LM"``: largest in magnitude (what plain
    power iteration, e.g. PyHessian's, converges to).

    ``method="lanczos"``: Lanczos with full reorthogonalisation from a Gaussian start vector;
    ``max_iter`` bounds the total number of HVPs; all Lanczos vectors are kept (memory
    ``max_iter x n_params``).  A Ritz value ``theta`` with residual ``r = |beta_m s_m|`` and
    gap ``g`` to the other Ritz values is accepted when ``r <= tol |theta|`` (rigorous: an
    eigenvalue lies within ``r``) or when ``min(r, r^2/g) <= tol |theta|`` and ``theta`` moved by
    at most ``tol |theta|`` in the last step.  A single-vector Lanczos sees an exactly repeated
    eigenvalue once until its Krylov space becomes invariant (breakdown); it then restarts in the
    orthogonal complement and finds the copies (small problems).  In large models a multiple top
    eigenvalue can be reported once: use ``method="power"`` if exact multiplicities are expected.

    ``method="power"``: power iteration with deflation (each new vector is orthogonalised
    against the eigenvectors already found), ``max_iter`` HVPs at most *per eigenvalue*.  An
    eigenvalue is accepted when its residual ``||Hv - theta v|| <= tol |theta|`` or when the
    geometric (Aitken) extrapolation of the Rayleigh-quotient changes, ``|d_t| / (1 - q)`` with
    ``q = d_t / d_{t-1}``, is ``<= tol |theta|``.  For ``which="LA"``, if the dominant eigenvalue
    found is negative the iteration is restarted on ``H - sigma I`` with ``sigma`` just below it,
    whose dominant eigenvalues are the largest algebraic ones of ``H``.

    ``start``: tensors shaped like the parameters, the first vector instead of a random one (a warm start: the
    eigenvector of an earlier measurement converges in a few products when the Hessian moved little; the
    first eigenvalue's start only).  ``scale``: positive tensors ``d`` shaped like the parameters: the
    eigenvalues of ``D H D`` with ``D = diag(d)``, which are those of ``D^2 H`` (with ``d = P^{-1/2}``, a
    preconditioned Hessian ``P^{-1} H``: Adam's, Cohen et al. 2022); its vectors are ``D H D``'s.

    Returns a :class:`HessianEigen` (``values, vectors, hvp_count = ...`` unpacks it).
    """
    ps = _prepare(model, criterion, params)
    top_k = _check_int(top_k, "top_k")
    max_iter = _check_int(max_iter, "max_iter")
    tol = check_tolerance(_check_positive(tol, "tol", allow_zero=True), ps)
    seed = _check_int(seed, "seed", minimum=0)
    if method not in ("lanczos", "power"):
        raise SharpnessInputError(f"method must be 'lanczos' or 'power', got {method!r}")
    if which not in ("LA", "LM"):
        raise SharpnessInputError(f"which must be 'LA' (largest algebraic) or 'LM' (largest magnitude), got {which!r}")
    n = sum(p.numel() for p in ps)
    if top_k > n:
        raise SharpnessInputError(f"top_k={top_k} exceeds the number of parameters ({n})")
    if method == "lanczos" and max_iter < top_k:
        raise SharpnessInputError(f"Lanczos needs max_iter >= top_k, got max_iter={max_iter} < top_k={top_k}")
    gen = torch.Generator().manual_seed(seed)
    with _measurement_mode(model, mode):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        solve = _Scaled(op, _flat_like(scale, ps, "scale")) if scale is not None else op
        first = _flat_like(start, ps, "start") if start is not None else None
        if method == "lanczos":
            values, vecs, converged, history = _eig_lanczos(solve, top_k, max_iter, tol, gen, which,
                                                            return_vectors, first)
        else:
            values, vecs, converged, history = _eig_power(solve, top_k, max_iter, tol, gen, which,
                                                          return_vectors, first)
        count = op.count
    vectors = [_unflatten(v, ps) for v in vecs] if return_vectors else None
    return HessianEigen(values=values, vectors=vectors, hvp_count=count, converged=converged, method=method,
                        history=history)


class _Scaled:
    """``v -> D H D v``: the operator the eigen-solvers see for a scaled (preconditioned) Hessian."""

    def __init__(self, op: _HessianOperator, d: Tensor):
        self.op, self.d = op, d
        self.numel, self.dtype, self.device = op.numel, op.dtype, op.device

    def matvec(self, flat: Tensor) -> Tensor:
        return self.d * self.op.matvec(self.d * flat)


def _flat_like(tensors, params, name: str) -> Tensor:
    """``tensors`` (shaped like ``params``) as one flat vector in the solvers' dtype; refused when the shapes
    differ or nothing is finite and non-zero (a start vector must have a direction)."""
    tensors = list(tensors)
    if len(tensors) != len(params) or any(tuple(t.shape) != tuple(p.shape) for t, p in zip(tensors, params)):
        raise SharpnessInputError(f"{name} must be tensors with the shapes of the parameters")
    flat = _flatten([t.detach().to(params[0].device) for t in tensors], _flat_dtype(params))
    if not bool(torch.isfinite(flat).all()) or float(torch.linalg.vector_norm(flat)) == 0.0:
        raise SharpnessInputError(f"{name} must be finite and not all zero")
    if name == "scale" and bool((flat <= 0).any()):
        raise SharpnessInputError("scale must be positive (D = diag(scale) in D H D)")
    return flat


def _start_vector(gen, op, start: Tensor | None) -> Tensor:
    v0 = _gaussian(gen, op.numel, op.dtype, op.device) if start is None else start
    return v0 / torch.linalg.vector_norm(v0)


def _eig_lanczos(op: _HessianOperator, k, max_iter, tol, gen, which, return_vectors, start=None):
    history: list[float] = []
    state = {"prev": None, "converged": False}

    def accepted(theta, S, idx, beta_next, prev):
        sel = theta[idx]
        res = np.abs(beta_next * S[-1, idx])
        if len(theta) > 1:
            gaps = np.array([np.min(np.abs(np.delete(theta, i) - theta[i])) for i in idx])
        else:
            gaps = np.full(len(idx), np.inf)
        with np.errstate(divide="ignore", invalid="ignore"):
            quad = np.where(gaps > 0, res * res / gaps, res)
        err = np.minimum(res, quad)
        scale = np.maximum(np.abs(sel), 1e-300)
        change = np.abs(sel - prev) if prev is not None and len(prev) == len(sel) else np.full(len(sel), np.inf)
        return bool(np.all((res <= tol * scale) | ((err <= tol * scale) & (change <= tol * scale)))), sel

    def stop(alphas, betas, beta_next, block_start):
        theta, S = _tridiag_eigh(alphas, betas)
        idx = _select(theta, k, which)
        history.append(float(theta[idx[0]]))
        ok, state["prev"] = accepted(theta, S, idx, beta_next, state["prev"])
        if block_start > 0:
            # after a restart the top Ritz value of the new block (the top of the complement of
            # the spectrum found so far) must be converged as well
            tb, Sb = _tridiag_eigh(alphas[block_start:], betas[block_start:])
            ib = _select(tb, 1, which)
            ok_b, state["prev_block"] = accepted(tb, Sb, ib, beta_next, state.get("prev_block"))
            ok = ok and ok_b
        state["converged"] = ok and len(alphas) >= k
        return state["converged"]

    v0 = _start_vector(gen, op, start)
    alphas, betas, Q = _lanczos(op.matvec, v0, max_iter, stop=stop, restart_gen=gen)
    theta, S = _tridiag_eigh(alphas, betas)
    idx = _select(theta, k, which)
    if len(idx) < k:  # fewer Lanczos steps than k (max_iter < k)
        state["converged"] = False
    values = [float(theta[i]) for i in idx]
    vecs = []
    if return_vectors:
        coeffs = torch.as_tensor(S[:, idx], dtype=Q.dtype, device=Q.device)
        for c in range(coeffs.shape[1]):
            v = Q.t().mv(coeffs[:, c])
            vecs.append(v / torch.linalg.vector_norm(v))
    # the number of full Lanczos steps is bounded by n: with m == n the Ritz values are exact
    if len(alphas) == op.numel:
        state["converged"] = True
    return values, vecs, state["converged"], history


def _orthogonalise(w: Tensor, basis: list[Tensor]) -> Tensor:
    for _ in range(2):
        for u in basis:
            w = w - torch.dot(u, w) * u
    return w


def _eig_power(op: _HessianOperator, k, max_iter, tol, gen, which, return_vectors, start=None):
    values: list[float] = []
    vecs: list[Tensor] = []
    history: list[float] = []
    converged_all = True
    shift = 0.0
    shifted_once = False
    while len(values) < k:
        first = start if start is not None and not values and not shifted_once else None
        v = _orthogonalise(_start_vector(gen, op, first), vecs)
        v = v / torch.linalg.vector_norm(v)
        theta = 0.0
        prev_theta = None
        prev_delta = None
        converged = False
        for it in range(max_iter):
            hv = op.matvec(v)
            theta = float(torch.dot(v, hv))
            res = float(torch.linalg.vector_norm(hv - theta * v))
            history.append(theta if not values else values[0])
            scale = max(abs(theta), 1e-30)
            if res <= tol * scale:
                converged = True
            elif prev_theta is not None:
                delta = abs(theta - prev_theta)
                if delta == 0.0:
                    est = 0.0
                elif prev_delta is not None and delta < prev_delta:
                    est = delta / (1.0 - delta / prev_delta)  # geometric tail of the remaining changes
                else:
                    est = math.inf  # not (yet) contracting
                if it >= 2 and est <= tol * scale:
                    converged = True
                prev_delta = delta
            prev_theta = theta
            if converged:
                break
            w = _orthogonalise(hv - shift * v if shift else hv, vecs)
            nrm = float(torch.linalg.vector_norm(w))
            if nrm == 0.0:  # H v = shift v on the complement: v is an eigenvector
                converged = True
                break
            v = w / nrm
        if which == "LA" and not shifted_once and theta < 0 and len(values) < k:
            # the dominant eigenvalue left is negative, hence (close to) the smallest one:
            # restart on H - sigma I, positive semi-definite on the complement.
            shift = theta - 0.01 * abs(theta)
            shifted_once = True
            continue
        converged_all = converged_all and converged
        values.append(theta)
        vecs.append(v)
    order = _select(np.asarray(values), k, which)
    values = [values[i] for i in order]
    vecs = [vecs[i] for i in order] if return_vectors else []
    return values, vecs, converged_all, history


def lambda_max(model: nn.Module, criterion: Callable, batches, *, max_iter: int = 100, tol: float = 1e-4,
               seed: int = 0, method: str = "lanczos", params=None, mode: str = "eval") -> float:
    """The largest (algebraic) Hessian eigenvalue, e.g. for comparing ``eta * lambda_max`` with
    :func:`basinlab.methods.asgd.stability_threshold` (use ``mode="train"``: the Hessian training sees)."""
    res = hessian_eigenvalues(model, criterion, batches, top_k=1, max_iter=max_iter, tol=tol, seed=seed,
                              method=method, params=params, return_vectors=False, mode=mode)
    return float(res.values[0])
