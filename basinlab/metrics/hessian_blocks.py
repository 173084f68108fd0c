"""Per-block Hessian spectra and the most negative Hessian eigenvalue.

Conventions (model, criterion, batches; eval/train mode; seeded; model state restored): basinlab.metrics.hessian.

* :func:`parameter_blocks`: the model's trainable parameters grouped into blocks, by owning module
  (``blocks="module"``: every conv / linear / norm layer with parameters of its own) or by module-name
  prefix (``blocks=d``, an int: the first ``d`` components of the module path, e.g. ``d=1`` groups a
  ``Sequential``'s children or a ResNet's stages).
* :func:`block_spectra`: for each block the top eigenvalue and the Hutchinson trace of the *diagonal*
  Hessian block ``H_bb`` (the Hessian of the loss w.r.t. that block's parameters, all others fixed;
  PyHessian#9, #10).  The block traces add up to the full trace (the trace only sees diagonal blocks);
  the block ``lambda_max`` values do not add up to anything (each is at most the full ``lambda_max``,
  by interlacing).
* :func:`min_eigenvalue`: the algebraically smallest Hessian eigenvalue (negative away from a minimum),
  as the top eigenvalue of ``-H`` by the project's Lanczos (or power iteration, which shifts when the
  dominant eigenvalue of ``-H`` is negative): Lanczos sees both ends of the spectrum at once, and the
  negation lets its convergence test be reused unchanged.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from basinlab.metrics.hessian import (
    SharpnessInputError,
    _check_int,
    _check_positive,
    _HessianOperator,
    _measurement_mode,
    _prepare,
    _unflatten,
    check_tolerance,
)
from basinlab.metrics.hessian_eigen import HessianEigen, _eig_lanczos, _eig_power, hessian_eigenvalues
from basinlab.metrics.hessian_spectrum import hessian_trace

__all__ = ["BlockSpectrum", "parameter_blocks", "block_spectra", "min_eigenvalue"]

ROOT_BLOCK = "(model)"  # name of the block of parameters owned by the top-level module itself


@dataclass
class BlockSpectrum:
    """One block's result: its name (module path), parameter count, top eigenvalue of ``H_bb`` (and
    whether Lanczos met its tolerance), Hutchinson trace of ``H_bb`` with its standard error, sample count
    and whether it met its tolerance, and the block-HVPs both used."""

    name: str
    n_params: int
    lambda_max: float
    trace: float
    trace_std_error: float
    trace_samples: int
    hvp_count: int
    converged: bool
    trace_converged: bool


# =============================================================================== blocks
def _block_name(param_name: str, blocks) -> str:
    path = param_name.split(".")[:-1]  # the owning module's path
    if blocks != "module":
        path = path[:blocks]
    return ".".join(path) or ROOT_BLOCK


def parameter_blocks(model: nn.Module, blocks="module") -> list[tuple[str, list[Tensor]]]:
    """``[(name, params), ...]`` in ``model.named_parameters()`` order (a shared parameter counted once,
    in its first module), trainable parameters only.  ``blocks``: ``"module"`` (each module with
    parameters of its own) or a positive int ``d`` (group by the first ``d`` components of the module path)."""
    if not isinstance(model, nn.Module):
        raise SharpnessInputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if blocks != "module" and (isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 1):
        raise SharpnessInputError(f"blocks must be 'module' (one block per layer with parameters) or a module-path "
                                  f"depth >= 1 (an int), got {blocks!r}")
    grouped: dict[str, list[Tensor]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grouped.setdefault(_block_name(name, blocks), []).append(p)
    if not grouped:
        raise SharpnessInputError("the model has no parameter that requires grad")
    return list(grouped.items())


def block_spectra(model: nn.Module, criterion: Callable, batches, blocks="module", *, max_iter: int = 100,
                  tol: float = 1e-4, trace_iter: int = 100, trace_tol: float = 1e-3, seed: int = 0,
                  cache_graph: bool | None = None, mode: str = "eval") -> list[BlockSpectrum]:
    """Top eigenvalue (Lanczos, ``max_iter``/``tol`` as :func:`hessian_eigenvalues`) and Hutchinson trace
    (``trace_iter``/``trace_tol`` as :func:`hessian_trace`'s ``max_iter``/``tol``) of every diagonal
    Hessian block, one :class:`BlockSpectrum` per block of :func:`parameter_blocks`.  Each block uses
    the same ``seed``.  Cost: the block HVPs of all blocks (each a backward pass down to the block)."""
    _prepare(model, criterion, None)
    results = []
    for name, params in parameter_blocks(model, blocks):
        eig = hessian_eigenvalues(model, criterion, batches, top_k=1, max_iter=max_iter, tol=tol, seed=seed,
                                  params=params, return_vectors=False, cache_graph=cache_graph, mode=mode)
        tr = hessian_trace(model, criterion, batches, max_iter=trace_iter, tol=trace_tol, seed=seed,
                           params=params, cache_graph=cache_graph, mode=mode)
        results.append(BlockSpectrum(name=name, n_params=sum(p.numel() for p in params),
                                     lambda_max=float(eig.values[0]), trace=tr.trace, trace_std_error=tr.std_error,
                                     trace_samples=tr.n_samples, hvp_count=eig.hvp_count + tr.n_samples,
                                     converged=eig.converged, trace_converged=tr.converged))
    return results


# =============================================================================== most negative eigenvalue
class _NegatedOperator:
    """``v -> -H v`` with the attributes the project's eigen-solvers read."""

    def __init__(self, op: _HessianOperator):
        self.op, self.numel, self.dtype, self.device = op, op.numel, op.dtype, op.device

    def matvec(self, flat: Tensor) -> Tensor:
        return -self.op.matvec(flat)


def min_eigenvalue(model: nn.Module, criterion: Callable, batches, *, max_iter: int = 100, tol: float = 1e-4,
                   seed: int = 0, method: str = "lanczos", params=None, return_vectors: bool = False,
                   cache_graph: bool | None = None, mode: str = "eval") -> HessianEigen:
    """The algebraically smallest Hessian eigenvalue (``values[0]``), with its unit eigenvector when
    ``return_vectors``.  ``tol`` is relative to ``|lambda_min|``, so a smallest eigenvalue near zero (at
    a minimum) may need many HVPs: ``converged`` says whether it was met within ``max_iter``."""
    ps = _prepare(model, criterion, params)
    max_iter = _check_int(max_iter, "max_iter")
    tol = check_tolerance(_check_positive(tol, "tol", allow_zero=True), ps)
    seed = _check_int(seed, "seed", minimum=0)
    if method not in ("lanczos", "power"):
        raise SharpnessInputError(f"method must be 'lanczos' or 'power', got {method!r}")
    gen = torch.Generator().manual_seed(seed)
    solve = _eig_lanczos if method == "lanczos" else _eig_power
    with _measurement_mode(model, mode):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        values, vecs, converged, history = solve(_NegatedOperator(op), 1, max_iter, tol, gen, "LA", return_vectors)
        count = op.count
    vectors = [_unflatten(v, ps) for v in vecs] if return_vectors else None
    return HessianEigen(values=[-v for v in values], vectors=vectors, hvp_count=count, converged=converged,
                        method=method, history=[-h for h in history])
