"""Sharpness of a trained model: Hessian spectrum measurements and Keskar's epsilon-sharpness.

All functions take ``(model, criterion, batches)``:

``model``
    any :class:`torch.nn.Module`; computations run on the device and in the dtype of its
    parameters (floating inputs are cast to it).  ``mode="eval"`` (default): the whole model in
    eval mode, BatchNorm uses its running statistics, dropout is off: the function the model
    computes at test time.  ``mode="train"``: BatchNorm layers normalise with the statistics of
    each batch, as during training (dropout stays off, so the function is deterministic; online
    normalisation keeps its running state, which has no per-batch form): the Hessian the
    optimizer's steps see, which the stability rules (lr x lambda_max < 2/(1+momentum)) are about.
    Afterwards every submodule's ``training`` flag and every buffer (BatchNorm running statistics
    included) are restored, and no parameter value or ``.grad`` is left changed.
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

Tolerances: a relative ``tol`` below about 400 units in the last place of the parameters' dtype
(5e-5 in float32) cannot be met honestly, since rounding in the HVPs moves the estimates by more;
it is refused with a pointer to float64 (``model.double()``; ``basinlab sharpness --float64``).

Randomness comes from a local ``torch.Generator(seed)`` on the CPU (vectors are drawn on the
CPU and moved), never from the global RNG: the same seed gives the same result.

One "HVP" (Hessian-vector product) below means the product with the Hessian of ``f`` over *all*
the given batches (one forward and two backward passes per batch; one backward per batch when
the gradient graph is cached, see ``cache_graph``).

Functions (this module, ``hessian_eigen``, ``hessian_spectrum`` and ``keskar``; all in ``sharpness``)
---------------------------------------------------------------------------------------------------
* :func:`hessian_vector_product`: ``H v`` by double back-propagation.
* :func:`hessian_eigenvalues`: top-k eigenvalues by Lanczos (full reorthogonalisation) or by
  power iteration with deflation (PyHessian style), with the number of HVPs used.
* :func:`lambda_max`: the top eigenvalue as a float.
* :func:`hessian_trace`: Hutchinson's estimator with Rademacher vectors and its standard error.
* :func:`hessian_spectrum`: spectral density by stochastic Lanczos quadrature (Ghorbani et al. 2019).
* :func:`keskar_sharpness`: Keskar et al. (2017) epsilon-sharpness, maximised with L-BFGS-B.
* :func:`adaptive_sharpness` (module ``adaptive_sharpness``): worst- and average-case adaptive m-sharpness of
  Andriushchenko et al. (2023).
* ``hessian_blocks``: per-block spectra and the most negative eigenvalue; ``curvature``: Gauss-Newton and Fisher
  operators; ``batch_sharpness``: each mini-batch's curvature along its own gradient (the edge of stability).

Absolute sharpness is not invariant to reparameterisation (Dinh et al. 2017): report
epsilon-sharpness, lambda_max and the trace side by side.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from basinlab.choices import HESSIAN_MODES
from basinlab.errors import ConfigError
from basinlab.utils.checks import check_int, check_number
from basinlab.utils.model_state import model_state_kept, uses_batch_statistics

__all__ = ["HESSIAN_MODES", "SharpnessInputError", "hessian_vector_product"]


class SharpnessInputError(ConfigError, ValueError):
    """Bad argument to a sharpness measurement (a ConfigError that is also a ValueError)."""


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
    """Re-iterable view of ``batches`` yielding ``(x, y, n)`` on ``device`` (floating x in ``dtype``)."""

    def __init__(self, batches, device, dtype=None):
        self.device, self.dtype = device, dtype
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
            x = x.to(self.device, non_blocking=True)
            if self.dtype is not None and x.is_floating_point() and x.dtype != self.dtype:
                x = x.to(self.dtype)
            yield x, y.to(self.device, non_blocking=True), n
        if count == 0:
            raise SharpnessInputError("batches yielded no data")




@contextlib.contextmanager
def _measurement_mode(model: nn.Module, mode: str = "eval"):
    """Eval mode (or BatchNorm on batch statistics: `train`) during the measurement; every module's flag
    and every buffer restored afterwards."""
    if mode not in HESSIAN_MODES:
        raise SharpnessInputError(f"mode must be one of {', '.join(HESSIAN_MODES)}, got {mode!r}")
    # --sync-bn's own layers take local statistics here: a measurement runs on one process, or on every process
    # with the same batches, where its own are the global ones (and no process may wait on another's products)
    synced = [m for m in model.modules() if getattr(m, "sync_batch_statistics", False)]
    with model_state_kept(model):
        model.eval()
        if mode == "train":
            for module in model.modules():
                if uses_batch_statistics(module):
                    module.train()
        try:
            for module in synced:
                module.sync_batch_statistics = False
            yield
        finally:
            for module in synced:
                module.sync_batch_statistics = True


def tolerance_floor(params: Sequence[Tensor]) -> float:
    """The smallest relative tolerance the parameters' dtype lets a measurement meet (400 ulp)."""
    return 400 * torch.finfo(params[0].dtype).eps


def check_tolerance(tol: float, params: Sequence[Tensor], name: str = "tol") -> float:
    """`tol` itself, or SharpnessInputError when it is below what the dtype resolves (0 is allowed: no
    early stop)."""
    floor = tolerance_floor(params)
    if 0 < tol < floor:
        dtype = str(params[0].dtype).replace("torch.", "")
        raise SharpnessInputError(f"{name} {tol:g} is below what {dtype} arithmetic resolves (about {floor:.0e} "
                                  f"relative); use {name} >= {floor:.0e}, or measure in float64 (model.double(), "
                                  f"basinlab sharpness --float64)")
    return tol


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
        self.batches = _Batches(batches, self.device, params[0].dtype)
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
                           *, cache_graph: bool | None = False, mode: str = "eval") -> list[Tensor]:
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
    with _measurement_mode(model, mode):
        op = _HessianOperator(model, criterion, batches, ps, cache_graph)
        return op.matvec_list(vec)
