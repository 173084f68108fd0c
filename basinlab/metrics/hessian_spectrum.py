"""Hessian trace (Hutchinson, with its standard error) and spectral density by stochastic Lanczos
quadrature (Ghorbani et al. 2019). Conventions: basinlab.metrics.hessian."""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from basinlab.metrics.hessian import (
    SharpnessInputError,
    _check_int,
    _check_positive,
    _HessianOperator,
    _measurement_mode,
    _prepare,
    _rademacher,
)
from basinlab.metrics.hessian_eigen import _lanczos, _tridiag_eigh

__all__ = ["HessianTrace", "slq_density", "SpectralDensity", "hessian_trace", "hessian_spectrum"]


class HessianTrace(NamedTuple):
    """Result of :func:`hessian_trace`: estimate, its standard error, number of Rademacher samples, and
    whether the standard error met ``tol * |trace|`` (False: ``max_iter`` samples ran out first)."""

    trace: float
    std_error: float
    n_samples: int
    converged: bool = True


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


# =============================================================================== trace
def hessian_trace(model: nn.Module, criterion: Callable, batches, max_iter: int = 100, tol: float = 1e-3,
                  seed: int = 0, *, min_samples: int = 10, params=None,
                  cache_graph: bool | None = None, mode: str = "eval") -> HessianTrace:
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
    with _measurement_mode(model, mode):
        return hutchinson(_HessianOperator(model, criterion, batches, ps, cache_graph), gen, max_iter, min_samples,
                          tol)


def hutchinson(op, gen: torch.Generator, max_iter: int, min_samples: int, tol: float) -> HessianTrace:
    """Hutchinson's ``mean(z^T A z)`` over Rademacher ``z`` for any operator with ``matvec``, ``numel``, ``dtype``
    and ``device`` (the Hessian, a curvature matrix), with :func:`hessian_trace`'s stopping rule."""
    samples: list[float] = []
    se, converged = math.inf, False
    for _ in range(max_iter):
        z = _rademacher(gen, op.numel, op.dtype, op.device)
        samples.append(float(torch.dot(z, op.matvec(z))))
        m = len(samples)
        if m >= 2:
            se = float(np.std(samples, ddof=1) / math.sqrt(m))
        if m >= min_samples and se <= tol * abs(float(np.mean(samples))):
            converged = True
            break
    return HessianTrace(float(np.mean(samples)), se, len(samples), converged or tol == 0)


# =============================================================================== SLQ
def hessian_spectrum(model: nn.Module, criterion: Callable, batches, iterations: int = 100, n_vectors: int = 1,
                     seed: int = 0, *, params=None, cache_graph: bool | None = None,
                     mode: str = "eval") -> SpectralDensity:
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
    with _measurement_mode(model, mode):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        for _ in range(n_vectors):
            v = _rademacher(gen, op.numel, op.dtype, op.device)
            alphas, betas, _ = _lanczos(op.matvec, v, iterations)
            theta, S = _tridiag_eigh(alphas, betas)
            nodes.append(theta)
            weights.append(S[0, :] ** 2)
        count = op.count
    return SpectralDensity(nodes=nodes, weights=weights, n_params=op.numel, hvp_count=count)
