"""Sharpness of a trained model: Hessian spectrum measurements and Keskar's epsilon-sharpness.

All functions take ``(model, criterion, batches)``:

``model``
    any :class:`torch.nn.Module`; computations run on the device and in the dtype of its
    parameters.  During a measurement the whole model is put in **eval mode** (BatchNorm uses
    its running statistics, dropout is off); afterwards every submodule's ``training`` flag and
    every buffer are restored, and no parameter value or ``.grad`` is left changed.
``criterion``
    ``criterion(model(x), y) -> scalar``, the **mean** loss over the batch (e.g.
    ``nn.CrossEntropyLoss()``).  The measured function is the mean loss over all samples,
    ``f = sum_b n_b L_b / sum_b n_b``, i.e. batch losses weighted by batch size ``n_b``.
``batches``
    the data, read several times, so it must be re-iterable.  Accepted:

    * a list/tuple of ``(x, y)`` pairs (a single ``(x, y)`` pair of tensors is also accepted);
    * a callable returning a fresh iterator of ``(x, y)`` pairs on every call;
    * a basinlab ``Loader`` (anything with an ``.epoch(int)`` method): ``loader.epoch(0)`` is used;
    * any other re-iterable (e.g. a ``torch.utils.data.DataLoader``).

    One-shot iterators/generators are refused (``SharpnessInputError``): wrap them in ``list``.
    Tensors are moved to the model's device.

Randomness comes from a local ``torch.Generator(seed)`` on the CPU (vectors are drawn on the
CPU and moved), never from the global RNG: the same seed gives the same result.

One "HVP" (Hessian-vector product) below means the product with the Hessian of ``f`` over *all*
the given batches (one forward and two backward passes per batch; one backward per batch when
the gradient graph is cached, see ``cache_graph``).

Functions
---------
* :func:`hessian_vector_product`: ``H v`` by double back-propagation.
* :func:`hessian_eigenvalues`: top-k eigenvalues by Lanczos (full reorthogonalisation) or by
  power iteration with deflation (PyHessian style), with the number of HVPs used.
* :func:`lambda_max`: the top eigenvalue as a float.
* :func:`hessian_trace`: Hutchinson's estimator with Rademacher vectors and its standard error.
* :func:`hessian_spectrum`: spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).
* :func:`keskar_sharpness`: Keskar et al. (2017) epsilon-sharpness, maximised with L-BFGS-B.

Absolute sharpness is not invariant to reparameterisation (Dinh et al. 2017): report
epsilon-sharpness, lambda_max and the trace side by side.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int, check_number

__all__ = [
    "SharpnessInputError",
    "HessianEigen",
    "HessianTrace",
    "SpectralDensity",
    "hessian_vector_product",
    "hessian_eigenvalues",
    "lambda_max",
    "hessian_trace",
    "hessian_spectrum",
    "slq_density",
    "keskar_sharpness",
]


class SharpnessInputError(ConfigError, ValueError):
    """Bad argument to a sharpness measurement (a ConfigError that is also a ValueError)."""


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


class HessianTrace(NamedTuple):
    """Result of :func:`hessian_trace`: estimate, its standard error, number of Rademacher samples."""

    trace: float
    std_error: float
    n_samples: int


def slq_density(nodes, weights, grid, sigma: float) -> np.ndarray:
    """Gaussian-smoothed spectral density ``sum_j w_j N(t; theta_j, sigma^2)`` on ``grid``.

    ``nodes``/``weights``: one array (or a list of arrays, averaged) of SLQ nodes and weights.
    """
    grid = np.asarray(grid, dtype=np.float64)
    if sigma <= 0:
        raise SharpnessInputError(f"sigma must be positive, got {sigma}")
    if isinstance(nodes, np.ndarray) and nodes.ndim == 1:
        nodes, weights = [nodes], [weights]
    out = np.zeros_like(grid)
    for th, w in zip(nodes, weights):
        th = np.asarray(th, dtype=np.float64)
        w = np.asarray(w, dtype=np.float64)
        z = (grid[:, None] - th[None, :]) / sigma
        out += (np.exp(-0.5 * z * z) * w[None, :]).sum(axis=1)
    return out / (len(nodes) * sigma * math.sqrt(2.0 * math.pi))


@dataclass
class SpectralDensity:
    """Result of :func:`hessian_spectrum` (stochastic Lanczos quadrature).

    ``nodes[i]``/``weights[i]``: Gauss quadrature nodes (Ritz values) and weights (squared first
    components of the Ritz vectors, summing to 1) for start vector ``i``.  The spectral measure
    ``(1/n) sum_k delta(t - lambda_k)`` is estimated by ``mean_i sum_j weights[i][j] delta(t - nodes[i][j])``.
    """

    nodes: list
    weights: list
    n_params: int
    hvp_count: int

    @property
    def mean(self) -> float:
        """Mean of the estimated spectral measure: an unbiased estimate of ``trace(H) / n_params``."""
        return float(np.mean([np.dot(w, t) for t, w in zip(self.nodes, self.weights)]))

    @property
    def trace(self) -> float:
        """``n_params * mean``: a Hutchinson estimate of the trace from the same start vectors."""
        return self.n_params * self.mean

    def default_sigma(self) -> float:
        allnodes = np.concatenate(self.nodes)
        spread = float(allnodes.max() - allnodes.min())
        return max(0.01 * spread, 1e-3 * float(np.abs(allnodes).max()), 1e-12)

    def density(self, grid=None, sigma: float | None = None, num: int = 1000):
        """``(grid, density)`` with Gaussian kernels of width ``sigma``.

        Defaults: ``sigma = 1 %`` of the node spread; ``grid`` = ``num`` points from 6 sigma
        below the smallest node to 6 sigma above the largest, so the density integrates to ~1.
        """
        sigma = self.default_sigma() if sigma is None else float(sigma)
        if grid is None:
            allnodes = np.concatenate(self.nodes)
            grid = np.linspace(allnodes.min() - 6 * sigma, allnodes.max() + 6 * sigma, int(num))
        grid = np.asarray(grid, dtype=np.float64)
        return grid, slq_density(self.nodes, self.weights, grid, sigma)


# =============================================================================== helpers
def _check_int(value, name: str, minimum: int = 1) -> int:
    return check_int(value, name, minimum, error=SharpnessInputError)


def _check_positive(value, name: str, allow_zero: bool = False) -> float:
    return check_number(value, name, allow_zero=allow_zero, error=SharpnessInputError)


def _get_params(model: nn.Module, params) -> list[Tensor]:
    if not isinstance(model, nn.Module):
        raise SharpnessInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if params is None:
        ps = [p for p in model.parameters() if p.requires_grad]
    else:
        ps = list(params)
        for p in ps:
            if not isinstance(p, Tensor) or not p.requires_grad:
                raise SharpnessInputError("params must be tensors that require grad (parameters of the model)")
    if not ps:
        raise SharpnessInputError("the model has no parameter that requires grad")
    return ps


def _is_batch_pair(obj) -> bool:
    return isinstance(obj, (list, tuple)) and len(obj) >= 2 and isinstance(obj[0], Tensor)


class _Batches:
    """Re-iterable view of ``batches`` yielding ``(x, y, n)`` on ``device``."""

    def __init__(self, batches, device):
        self.device = device
        self.single_list = False
        if isinstance(batches, (list, tuple)):
            if len(batches) == 0:
                raise SharpnessInputError("batches is empty")
            items = [tuple(batches)] if _is_batch_pair(batches) else list(batches)
            for b in items:
                if not _is_batch_pair(b):
                    raise SharpnessInputError("each batch must be an (inputs, targets) pair of tensors")
            self.single_list = len(items) == 1
            self._factory = lambda: iter(items)
        elif callable(getattr(batches, "epoch", None)):
            self._factory = lambda: iter(batches.epoch(0))
        elif callable(batches):
            self._factory = lambda: iter(batches())
        elif hasattr(batches, "__iter__") and iter(batches) is not batches:
            self._factory = lambda: iter(batches)
        else:
            raise SharpnessInputError(
                "batches must be re-iterable: a list of (x, y) pairs, a callable returning an iterator, "
                "a Loader with .epoch(), or a DataLoader; a one-shot iterator/generator can only be read "
                "once (wrap it in list(...))")

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, int]]:
        count = 0
        for b in self._factory():
            if not _is_batch_pair(b):
                raise SharpnessInputError("each batch must be an (inputs, targets) pair of tensors")
            x, y = b[0], b[1]
            n = int(x.shape[0]) if x.dim() > 0 else 1
            if n == 0:
                continue
            count += 1
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True), n
        if count == 0:
            raise SharpnessInputError("batches yielded no data")


@contextlib.contextmanager
def _measurement_mode(model: nn.Module):
    """Eval mode during the measurement; restore every module's flag and every buffer afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _flat_dtype(params: Sequence[Tensor]) -> torch.dtype:
    """dtype of the flat vectors (Lanczos basis, random vectors): the parameters' promoted dtype,
    at least float32 (half-precision models still get float32 Lanczos arithmetic)."""
    dtype = torch.float32
    for p in params:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def _flatten(tensors: Sequence[Tensor], dtype) -> Tensor:
    return torch.cat([t.reshape(-1).to(dtype) for t in tensors])


def _unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    out, i = [], 0
    for p in like:
        k = p.numel()
        out.append(flat[i:i + k].view(p.shape).to(p.dtype))
        i += k
    return out


def _rademacher(gen: torch.Generator, n: int, dtype, device) -> Tensor:
    return (torch.randint(0, 2, (n,), generator=gen, dtype=torch.int8) * 2 - 1).to(device=device, dtype=dtype)


def _gaussian(gen: torch.Generator, n: int, dtype, device) -> Tensor:
    return torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)


class _HessianOperator:
    """``v -> H v`` for the mean loss over the batches, with an HVP counter.

    With ``cache_graph`` the per-batch gradients are built once with ``create_graph=True`` and
    kept, so each HVP costs one backward per batch (PyHessian's single-batch mode); otherwise
    every HVP recomputes forward and gradient (constant memory in the number of batches).
    """

    def __init__(self, model, criterion, batches, params, cache_graph):
        self.model = model
        self.criterion = criterion
        self.params = params
        self.device = params[0].device
        self.dtype = _flat_dtype(params)
        self.numel = sum(p.numel() for p in params)
        self.batches = _Batches(batches, self.device)
        if cache_graph is None:
            cache_graph = self.batches.single_list
        self.count = 0
        self._cached = None
        if cache_graph:
            self._cached = list(self._gradients())

    def _gradients(self):
        with torch.enable_grad():
            for x, y, n in self.batches:
                loss = self.criterion(self.model(x), y)
                if loss.dim() != 0:
                    raise SharpnessInputError("criterion must return a scalar (mean) loss")
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                sel = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
                yield n, [grads[i] for i in sel], sel

    def matvec_list(self, vec: Sequence[Tensor]) -> list[Tensor]:
        out = [torch.zeros_like(p) for p in self.params]
        total = 0
        source = self._cached if self._cached is not None else self._gradients()
        with torch.enable_grad():
            for n, grads, sel in source:
                total += n
                if not grads:
                    continue
                outputs = [vec[i].to(grads[k].dtype) for k, i in enumerate(sel)]
                hv = torch.autograd.grad(grads, self.params, grad_outputs=outputs,
                                         retain_graph=self._cached is not None, allow_unused=True)
                for o, h in zip(out, hv):
                    if h is not None:
                        o.add_(h.detach(), alpha=float(n))
        self.count += 1
        return [o / total for o in out]

    def matvec(self, flat: Tensor) -> Tensor:
        return _flatten(self.matvec_list(_unflatten(flat, self.params)), self.dtype)


def _prepare(model, criterion, params) -> list[Tensor]:
    if not callable(criterion):
        raise SharpnessInputError("criterion must be callable: criterion(model(x), y) -> scalar loss")
    return _get_params(model, params)


# =============================================================================== HVP
def hessian_vector_product(model: nn.Module, criterion: Callable, batches, vec: Sequence[Tensor], params=None,
                           *, cache_graph: bool | None = False) -> list[Tensor]:
    """``H v`` for the Hessian of the mean loss over ``batches`` w.r.t. ``params``.

    ``params``: the parameters to differentiate (default: all that require grad, in
    ``model.parameters()`` order); ``vec``: tensors shaped like them.  The model is in eval mode
    during the computation and left exactly as it was.  Computed per batch by double
    back-propagation (``autograd.grad(create_graph=True)``, then a backward with ``v`` as grad
    output) and averaged with batch-size weights.
    """
    ps = _prepare(model, criterion, params)
    vec = list(vec)
    if len(vec) != len(ps) or any(tuple(v.shape) != tuple(p.shape) for v, p in zip(vec, ps)):
        raise SharpnessInputError("vec must be a list of tensors with the shapes of the parameters")
    vec = [v.detach().to(device=p.device, dtype=p.dtype) for v, p in zip(vec, ps)]
    with _measurement_mode(model):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        return op.matvec_list(vec)


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
                        params=None, return_vectors: bool = True, cache_graph: bool | None = None) -> HessianEigen:
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

    Returns a :class:`HessianEigen` (``values, vectors, hvp_count = ...`` unpacks it).
    """
    ps = _prepare(model, criterion, params)
    top_k = _check_int(top_k, "top_k")
    max_iter = _check_int(max_iter, "max_iter")
    tol = _check_positive(tol, "tol", allow_zero=True)
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
    with _measurement_mode(model):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        if method == "lanczos":
            values, vecs, converged, history = _eig_lanczos(op, top_k, max_iter, tol, gen, which, return_vectors)
        else:
            values, vecs, converged, history = _eig_power(op, top_k, max_iter, tol, gen, which, return_vectors)
        count = op.count
    vectors = [_unflatten(v, ps) for v in vecs] if return_vectors else None
    return HessianEigen(values=values, vectors=vectors, hvp_count=count, converged=converged, method=method,
                        history=history)


def _eig_lanczos(op: _HessianOperator, k, max_iter, tol, gen, which, return_vectors):
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

    v0 = _gaussian(gen, op.numel, op.dtype, op.device)
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


def _eig_power(op: _HessianOperator, k, max_iter, tol, gen, which, return_vectors):
    values: list[float] = []
    vecs: list[Tensor] = []
    history: list[float] = []
    converged_all = True
    shift = 0.0
    shifted_once = False
    n = op.numel
    while len(values) < k:
        v = _orthogonalise(_gaussian(gen, n, op.dtype, op.device), vecs)
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
               seed: int = 0, method: str = "lanczos", params=None) -> float:
    """The largest (algebraic) Hessian eigenvalue, e.g. for comparing ``eta * lambda_max`` with
    :func:`basinlab.methods.asgd.stability_threshold`."""
    res = hessian_eigenvalues(model, criterion, batches, top_k=1, max_iter=max_iter, tol=tol, seed=seed,
                              method=method, params=params, return_vectors=False)
    return float(res.values[0])


# =============================================================================== trace
def hessian_trace(model: nn.Module, criterion: Callable, batches, max_iter: int = 100, tol: float = 1e-3,
                  seed: int = 0, *, min_samples: int = 10, params=None,
                  cache_graph: bool | None = None) -> HessianTrace:
    """Hutchinson estimate of ``trace(H)`` with Rademacher vectors ``z``: ``mean(z^T H z)``.

    Draws samples until the standard error ``std(ddof=1) / sqrt(m)`` is at most ``tol * |trace|``
    (after at least ``min_samples``) or ``max_iter`` samples were used; ``tol=0`` always uses
    ``max_iter``.  Returns ``HessianTrace(trace, std_error, n_samples)`` (``std_error`` is
    ``inf`` with a single sample).  The Rademacher vectors are the ones :func:`hessian_spectrum`
    draws with the same seed.
    """
    ps = _prepare(model, criterion, params)
    max_iter = _check_int(max_iter, "max_iter")
    min_samples = _check_int(min_samples, "min_samples", minimum=2)
    tol = _check_positive(tol, "tol", allow_zero=True)
    seed = _check_int(seed, "seed", minimum=0)
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    se = math.inf
    with _measurement_mode(model):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        for _ in range(max_iter):
            z = _rademacher(gen, op.numel, op.dtype, op.device)
            samples.append(float(torch.dot(z, op.matvec(z))))
            m = len(samples)
            if m >= 2:
                se = float(np.std(samples, ddof=1) / math.sqrt(m))
            if m >= min_samples and se <= tol * abs(float(np.mean(samples))):
                break
    return HessianTrace(float(np.mean(samples)), se, len(samples))


# =============================================================================== SLQ
def hessian_spectrum(model: nn.Module, criterion: Callable, batches, iterations: int = 100, n_vectors: int = 1,
                     seed: int = 0, *, params=None, cache_graph: bool | None = None) -> SpectralDensity:
    """Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al. 2019).

    For each of ``n_vectors`` Rademacher start vectors, ``min(iterations, n_params)`` Lanczos
    steps (full reorthogonalisation; fewer on breakdown) give ``T = S diag(theta) S^T``; the
    nodes are ``theta`` and the weights ``S[0, :]**2`` (they sum to 1).  ``result.density(grid,
    sigma)`` returns the Gaussian-smoothed density; ``result.mean * n_params`` is an unbiased
    trace estimate.  Uses ``n_vectors * iterations`` HVPs.
    """
    ps = _prepare(model, criterion, params)
    iterations = _check_int(iterations, "iterations")
    n_vectors = _check_int(n_vectors, "n_vectors")
    seed = _check_int(seed, "seed", minimum=0)
    gen = torch.Generator().manual_seed(seed)
    nodes, weights = [], []
    with _measurement_mode(model):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        for _ in range(n_vectors):
            v = _rademacher(gen, op.numel, op.dtype, op.device)
            alphas, betas, _ = _lanczos(op.matvec, v, iterations)
            theta, S = _tridiag_eigh(alphas, betas)
            nodes.append(theta)
            weights.append(S[0, :] ** 2)
        count = op.count
    return SpectralDensity(nodes=nodes, weights=weights, n_params=op.numel, hvp_count=count)


# =============================================================================== Keskar
def keskar_sharpness(model: nn.Module, criterion: Callable, batches, epsilon: float = 1e-3,
                     subspace_dim: int | None = None, max_iter: int = 10, seed: int = 0, *, params=None,
                     init: str = "auto") -> float:
    """Keskar et al. (2017) epsilon-sharpness in percent.

    ``phi = [max_{y in C_eps} f(x + A y) - f(x)] / (1 + f(x)) * 100`` with ``f`` the mean loss over
    ``batches`` (pass the *training* data, as Keskar did) and ``x`` the current parameters.

    * ``subspace_dim=None``: full space, ``A = I`` and ``C_eps = {|y_i| <= eps (|x_i| + 1)}``.
    * ``subspace_dim=p``: ``A+`` is ``p x n`` with ``U(-1, 1)`` rows scaled to unit norm (seeded),
      ``A = pinv(A+) = A+^T (A+ A+^T)^{-1}`` (never formed: ``A y = A+^T solve(G, y)`` and
      ``A^T g = solve(G, A+ g)`` with ``G = A+ A+^T``), ``C_eps = {|y_i| <= eps (|(A+ x)_i| + 1)}``.

    The maximum is sought with ``scipy.optimize.minimize(method="L-BFGS-B", jac=True)`` on the
    *negated* loss and *negated* gradient, at most ``max_iter`` iterations (scipy's ``maxiter``),
    starting at ``y = 0`` (``init="zero"``) or at a seeded uniform point of the box
    (``init="random"``).  ``init="auto"`` (default) starts at ``y = 0`` unless the gradient there
    is negligible across the box (an exact critical point, from which L-BFGS-B cannot move), and
    then at the random point.  The largest loss seen at any evaluated point counts, so
    ``phi >= 0``.  Eval mode (BatchNorm running statistics) during the search; the weights,
    buffers and modes are restored exactly afterwards.  ``seed`` drives ``A+`` and the random start.
    """
    from scipy.optimize import minimize

    ps = _prepare(model, criterion, params)
    epsilon = _check_positive(epsilon, "epsilon")
    max_iter = _check_int(max_iter, "max_iter")
    seed = _check_int(seed, "seed", minimum=0)
    if init not in ("auto", "zero", "random"):
        raise SharpnessInputError(f"init must be 'auto', 'zero' or 'random', got {init!r}")
    dtype = _flat_dtype(ps)
    device = ps[0].device
    n = sum(p.numel() for p in ps)
    if subspace_dim is not None:
        subspace_dim = _check_int(subspace_dim, "subspace_dim")
        if subspace_dim > n:
            raise SharpnessInputError(f"subspace_dim={subspace_dim} exceeds the number of parameters ({n})")
    data = _Batches(batches, device)
    gen = torch.Generator().manual_seed(seed)
    saved = [p.detach().clone() for p in ps]
    x0 = _flatten(saved, dtype)

    if subspace_dim is None:
        Aplus = None
        G = None
        bound = (epsilon * (x0.abs() + 1.0)).double().cpu().numpy()
    else:
        Aplus = torch.rand((subspace_dim, n), generator=gen, dtype=torch.float64).mul_(2).sub_(1)
        Aplus /= torch.linalg.vector_norm(Aplus, dim=1, keepdim=True)
        Aplus = Aplus.to(device=device, dtype=dtype)
        G = (Aplus @ Aplus.t()).double().cpu()
        bound = (epsilon * ((Aplus.mv(x0)).abs() + 1.0)).double().cpu().numpy()

    def weights_of(y: np.ndarray) -> Tensor:
        yt = torch.from_numpy(y)
        if Aplus is None:
            return x0 + yt.to(device=device, dtype=dtype)
        c = torch.linalg.solve(G, yt).to(device=device, dtype=dtype)
        return x0 + Aplus.t().mv(c)

    def set_weights(flat: Tensor) -> None:
        with torch.no_grad():
            for p, v in zip(ps, _unflatten(flat, ps)):
                p.copy_(v)

    def loss_and_grad(need_grad: bool):
        total, loss_sum = 0, 0.0
        grad = [torch.zeros_like(p) for p in ps] if need_grad else None
        with torch.set_grad_enabled(need_grad):
            for x, y, nb in data:
                loss = criterion(model(x), y)
                if loss.dim() != 0:
                    raise SharpnessInputError("criterion must return a scalar (mean) loss")
                loss_sum += float(loss.detach()) * nb
                total += nb
                if need_grad:
                    gs = torch.autograd.grad(loss, ps, allow_unused=True)
                    for acc, g in zip(grad, gs):
                        if g is not None:
                            acc.add_(g, alpha=float(nb))
        f = loss_sum / total
        if need_grad:
            return f, _flatten(grad, dtype) / total
        return f, None

    best = {"f": -math.inf}

    def objective(y: np.ndarray):
        set_weights(weights_of(y))
        f, g = loss_and_grad(True)
        if not math.isfinite(f):
            raise FloatingPointError("non-finite loss inside the epsilon-box")
        best["f"] = max(best["f"], f)
        gy = g if Aplus is None else torch.linalg.solve(G, Aplus.mv(g).double().cpu())
        gy = gy.double().cpu().numpy()
        return -f, -gy  # maximise f: minimise -f, whose gradient is -grad f

    try:
        with _measurement_mode(model):
            f0, g0 = loss_and_grad(True)
            best["f"] = f0
            y0 = np.zeros_like(bound)
            if init == "auto":
                gy0 = g0 if Aplus is None else torch.linalg.solve(G, Aplus.mv(g0).double().cpu())
                first_order = float(gy0.abs().double().cpu().numpy() @ bound)
                if not first_order > 1e-9 * (1.0 + abs(f0)):
                    init = "random"  # a critical point: L-BFGS-B would not move from y = 0
            if init == "random":
                u = torch.rand(bound.shape[0], generator=gen, dtype=torch.float64).numpy()
                y0 = (2.0 * u - 1.0) * bound
            minimize(objective, y0, jac=True, method="L-BFGS-B", bounds=np.stack([-bound, bound], axis=1),
                     options={"maxiter": max_iter})
    finally:
        with torch.no_grad():
            for p, s in zip(ps, saved):
                p.copy_(s)
    return max(0.0, (best["f"] - f0) / (1.0 + f0) * 100.0)
