"""Gauss-Newton and Fisher curvature: matrix-free operators, their top eigenvalues and traces.

Conventions (model, criterion, batches; eval/train mode; seeded; model state restored; the measured
loss is the sample-weighted mean over all batches): basinlab.metrics.hessian.

Curvatures (``kind``), each ``C = (1/N) sum_i J_i^T M_i J_i`` with ``J_i`` the Jacobian of example
``i``'s output (logits) w.r.t. the parameters and ``M_i`` a PSD matrix in output space:

``"ggn"``
    the generalised Gauss-Newton, ``M_i`` the Hessian of the example's loss w.r.t. its output: for
    softmax cross-entropy ``diag(p) - p p^T``, for ``MSELoss`` (mean over the ``C`` outputs too)
    ``2/C I``; computed from the criterion itself by double back-propagation, so any criterion works
    (PSD when the loss is convex in the output, as cross-entropy and MSE are).  The Hessian is the GGN
    plus a term weighted by the output residuals (Schraudolph 2002; Martens 2020).
``"fisher"``
    the true Fisher with the exact expectation over the model's own labels.  For cross-entropy
    (categorical likelihood) and MSE (Gaussian likelihood of variance ``C/2``, which ``MSELoss``'s
    normalisation implies) this *equals* the GGN (the output is the natural parameter), so it is
    computed as the GGN; other criteria have no likelihood here and are refused.
``"fisher-mc"``
    the Monte-Carlo Fisher: ``M_i = (1/S) sum_s g_is g_is^T`` with ``g_is`` the gradient of the loss
    w.r.t. the output at a label sampled from the model's predictive distribution (``mc_samples = S``
    labels per example, drawn once from the seeded generator, so the operator is a fixed matrix; the
    batches must come in the same order on every pass).  Unbiased for the Fisher; cross-entropy (no class
    weights, no label smoothing) and MSE only.
``"empirical-fisher"``
    the empirical Fisher: ``M_i = g_i g_i^T`` at the true label, i.e. the mean outer product of the
    per-example gradients (Kunstner et al. 2019 on why it is not the Fisher).  Its trace is computed
    exactly: the mean squared per-example gradient norm (per-example gradients by ``torch.func.vmap``).

Products ``C v`` are ``J^T (M (J v))``: ``J v`` by the double-vjp trick (the vjp ``u -> J^T u`` is
linear in ``u``, differentiating it w.r.t. ``u`` against ``v`` gives ``J v``), then one more backward for
``J^T``.  Plain autograd on the module (no functional rewrite), so BatchNorm in ``mode="train"`` (batch
statistics: ``J`` couples the examples of a batch) works as for the Hessian.

Own operator or curvlinops?  Own operator: a few dozen lines on plain autograd, no extra dependency, the
project's conventions (batch weighting, modes, dtypes, seeded generator, state restored) and its Lanczos
solver and tolerance checks.  curvlinops-for-pytorch (3.0.1) is the reference it is checked against in
tests/test_curvature.py (GGN products and traces; skipped where it is not installed), alongside an
explicit ``J^T H J`` on a tiny model.  It is not a dependency because installing it with pip's resolver
pulls backpack-for-pytorch -> torchvision, which replaces the installed torch (2.13 CPU) with another
build; installed with ``--no-deps`` next to torch 2.13 it works.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from basinlab.metrics.hessian import (
    SharpnessInputError,
    _Batches,
    _check_int,
    _check_positive,
    _flat_dtype,
    _flatten,
    _measurement_mode,
    _prepare,
    _unflatten,
    check_tolerance,
)
from basinlab.metrics.hessian_eigen import HessianEigen, _eig_lanczos
from basinlab.metrics.hessian_spectrum import HessianTrace, hutchinson
from basinlab.utils.model_state import uses_batch_statistics

__all__ = ["CURVATURES", "curvature_vector_product", "curvature_eigenvalues", "curvature_trace",
           "empirical_fisher_trace"]

CURVATURES = ("ggn", "fisher", "fisher-mc", "empirical-fisher")


def _likelihood(criterion) -> str | None:
    """'categorical' / 'gaussian' when the criterion is a negative log-likelihood the Fisher can sample from."""
    if isinstance(criterion, nn.CrossEntropyLoss) and criterion.reduction == "mean" and criterion.weight is None \
            and criterion.label_smoothing == 0:
        return "categorical"
    if isinstance(criterion, nn.MSELoss) and criterion.reduction == "mean":
        return "gaussian"
    return None


def _check_kind(kind: str, criterion) -> str:
    if kind not in CURVATURES:
        raise SharpnessInputError(f"curvature kind must be one of {', '.join(CURVATURES)}, got {kind!r}")
    if kind in ("fisher", "fisher-mc") and _likelihood(criterion) is None:
        raise SharpnessInputError(f"the {kind} curvature needs a likelihood: criterion must be nn.CrossEntropyLoss "
                                  f"(mean, no class weights, no label smoothing) or nn.MSELoss (mean), got "
                                  f"{type(criterion).__name__}; use 'ggn' or 'empirical-fisher' for other losses")
    return "ggn" if kind == "fisher" else kind


def _loss_at_output(criterion, out: Tensor, target: Tensor):
    """``(o, criterion(o, target))`` at a detached copy ``o`` of the output, a leaf to differentiate against."""
    o = out.detach().requires_grad_(True)
    loss = criterion(o, target)
    if loss.dim() != 0:
        raise SharpnessInputError("criterion must return a scalar (mean) loss")
    return o, loss


def _example_output_gradients(criterion, out: Tensor, target: Tensor) -> Tensor:
    """Each example's loss gradient w.r.t. its own output: ``n * dL/do`` for the mean loss ``L`` over ``n``."""
    o, loss = _loss_at_output(criterion, out, target)
    return torch.autograd.grad(loss, o)[0] * out.shape[0]


class _CurvatureOperator:
    """``v -> C v`` for one curvature ``kind`` over the batches, with a product counter (``count``) and
    the attributes the project's eigen-solvers read (``matvec``, ``numel``, ``dtype``, ``device``)."""

    def __init__(self, model, criterion, batches, params, kind, cache_graph, gen, mc_samples=1):
        self.model, self.criterion, self.params, self.kind = model, criterion, params, kind
        self.device = params[0].device
        self.dtype = _flat_dtype(params)
        self.numel = sum(p.numel() for p in params)
        self.batches = _Batches(batches, self.device, params[0].dtype)
        self.gen, self.mc_samples = gen, mc_samples
        self.count = 0
        # sampled labels are drawn once, per batch, so that every product uses the same matrix
        self.sampled_targets: list[Tensor] = []
        if kind == "fisher-mc":
            with torch.no_grad():
                self.sampled_targets = [self._sample_targets(self._forward(x)) for x, _, _ in self.batches]
        if cache_graph is None:
            cache_graph = self.batches.single_list
        self._cached = [self._linearise(i, x, y, n) for i, (x, y, n) in enumerate(self.batches)] \
            if cache_graph else None

    def _forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        if not isinstance(out, Tensor) or not out.is_floating_point() or out.dim() == 0:
            raise SharpnessInputError(f"curvature operators need a model that returns one floating (batch, ...) "
                                      f"tensor (the logits), got {type(out).__name__}")
        return out

    def _sample_targets(self, out: Tensor) -> Tensor:
        """``(mc_samples, *target shape)`` labels from the model's predictive distribution at ``out``."""
        if _likelihood(self.criterion) == "categorical":
            if out.dim() != 2:
                raise SharpnessInputError(f"the fisher-mc curvature samples classes from (batch, classes) logits, "
                                          f"got an output of shape {tuple(out.shape)}")
            probs = torch.softmax(out.detach().to(torch.float64), dim=1).cpu()
            labels = torch.multinomial(probs, self.mc_samples, replacement=True, generator=self.gen)
            return labels.t().to(self.device)
        # MSELoss = (1/C)||o - y||^2 per example: the Gaussian likelihood of variance C/2
        per_example = out[0].numel()
        noise = torch.randn((self.mc_samples, *out.shape), generator=self.gen, dtype=torch.float64)
        return (out.detach() + math.sqrt(per_example / 2) * noise.to(device=out.device, dtype=out.dtype))

    def _output_side(self, index: int, out: Tensor, y: Tensor, n: int):
        """What ``M`` needs in output space: the criterion's gradient graph (GGN), or per-example gradients."""
        if self.kind == "ggn":
            o, loss = _loss_at_output(self.criterion, out, y)
            return o, torch.autograd.grad(loss, o, create_graph=True)[0]
        if self.kind == "empirical-fisher":
            return _example_output_gradients(self.criterion, out, y).unsqueeze(0)
        # all samples in one call: the samples x examples stacked as one batch
        targets = self.sampled_targets[index]
        if targets.shape[1:2] != (n,):
            raise SharpnessInputError("fisher-mc: the batches came in a different order than when the labels were "
                                      "sampled (a shuffling DataLoader?); pass a list of (x, y) batches")
        samples = targets.shape[0]
        stacked = out.detach().unsqueeze(0).expand(samples, *out.shape).reshape(samples * n, *out.shape[1:])
        grads = _example_output_gradients(self.criterion, stacked, targets.reshape(samples * n, *targets.shape[2:]))
        return grads.view(samples, *out.shape)

    def _apply_output_matrix(self, side, jv: Tensor, n: int) -> Tensor:
        """``M (J v)`` for the batch mean loss (so ``1/n`` times the per-example matrices)."""
        if self.kind == "ggn":
            o, g = side
            (h,) = torch.autograd.grad(g, o, grad_outputs=jv, retain_graph=True, allow_unused=True)
            return torch.zeros_like(jv) if h is None else h
        grads = side  # (samples, n, ...)
        coeff = (grads * jv.unsqueeze(0)).flatten(2).sum(2)  # <g_is, (J v)_i>
        coeff = coeff.view(*coeff.shape, *([1] * (grads.dim() - 2)))
        return (grads * coeff).sum(0) / (n * grads.shape[0])

    def _linearise(self, index: int, x: Tensor, y: Tensor, n: int):
        with torch.enable_grad():
            out = self._forward(x)
            u = torch.zeros_like(out, requires_grad=True)
            jt_u = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True, allow_unused=True)
            sel = [i for i, g in enumerate(jt_u) if g is not None and g.requires_grad]
            return n, out, u, [jt_u[i] for i in sel], sel, self._output_side(index, out, y, n)

    def matvec_list(self, vec: Sequence[Tensor]) -> list[Tensor]:
        result = [torch.zeros_like(p) for p in self.params]
        total = 0
        keep = self._cached is not None
        source = self._cached if keep else (self._linearise(i, x, y, n) for i, (x, y, n) in enumerate(self.batches))
        with torch.enable_grad():
            for n, out, u, jt_u, sel, side in source:
                total += n
                if not sel:
                    continue
                (jv,) = torch.autograd.grad(jt_u, u, grad_outputs=[vec[i].to(jt_u[k].dtype) for k, i in enumerate(sel)],
                                            retain_graph=True)
                w = self._apply_output_matrix(side, jv.detach(), n)
                jtw = torch.autograd.grad(out, self.params, grad_outputs=w, retain_graph=keep, allow_unused=True)
                for r, t in zip(result, jtw):
                    if t is not None:
                        r.add_(t.detach(), alpha=float(n))
        self.count += 1
        return [r / total for r in result]

    def matvec(self, flat: Tensor) -> Tensor:
        return _flatten(self.matvec_list(_unflatten(flat, self.params)), self.dtype)


def _setup(model, criterion, kind, params, seed, mc_samples):
    ps = _prepare(model, criterion, params)
    kind = _check_kind(kind, criterion)
    seed = _check_int(seed, "seed", minimum=0)
    mc_samples = _check_int(mc_samples, "mc_samples")
    return ps, kind, torch.Generator().manual_seed(seed), mc_samples


# =============================================================================== public functions
def curvature_vector_product(model: nn.Module, criterion: Callable, batches, vec: Sequence[Tensor],
                             kind: str = "ggn", params=None, *, mc_samples: int = 1, seed: int = 0,
                             cache_graph: bool | None = False, mode: str = "eval") -> list[Tensor]:
    """``C v`` for the curvature ``kind`` (see the module docstring); ``vec`` shaped like ``params``."""
    ps, kind, gen, mc_samples = _setup(model, criterion, kind, params, seed, mc_samples)
    vec = list(vec)
    if len(vec) != len(ps) or any(tuple(v.shape) != tuple(p.shape) for v, p in zip(vec, ps)):
        raise SharpnessInputError("vec must be a list of tensors with the shapes of the parameters")
    vec = [v.detach().to(device=p.device, dtype=p.dtype) for v, p in zip(vec, ps)]
    with _measurement_mode(model, mode):
        return _CurvatureOperator(model, criterion, batches, ps, kind, cache_graph, gen, mc_samples).matvec_list(vec)


def curvature_eigenvalues(model: nn.Module, criterion: Callable, batches, kind: str = "ggn", top_k: int = 1,
                          max_iter: int = 100, tol: float = 1e-4, seed: int = 0, *, mc_samples: int = 1,
                          params=None, return_vectors: bool = False, cache_graph: bool | None = None,
                          mode: str = "eval") -> HessianEigen:
    """Top-``top_k`` eigenvalues of the curvature ``kind`` by the project's Lanczos (full
    reorthogonalisation, the acceptance test of :func:`hessian_eigenvalues`); ``hvp_count`` counts
    curvature-vector products.  The seed draws the sampled labels (``fisher-mc``), then the start vector."""
    ps, kind, gen, mc_samples = _setup(model, criterion, kind, params, seed, mc_samples)
    top_k = _check_int(top_k, "top_k")
    max_iter = _check_int(max_iter, "max_iter")
    tol = check_tolerance(_check_positive(tol, "tol", allow_zero=True), ps)
    n = sum(p.numel() for p in ps)
    if top_k > n:
        raise SharpnessInputError(f"top_k={top_k} exceeds the number of parameters ({n})")
    if max_iter < top_k:
        raise SharpnessInputError(f"Lanczos needs max_iter >= top_k, got max_iter={max_iter} < top_k={top_k}")
    with _measurement_mode(model, mode):
        op = _CurvatureOperator(model, criterion, batches, ps, kind, cache_graph, gen, mc_samples)
        values, vecs, converged, history = _eig_lanczos(op, top_k, max_iter, tol, gen, "LA", return_vectors)
    vectors = [_unflatten(v, ps) for v in vecs] if return_vectors else None
    return HessianEigen(values=values, vectors=vectors, hvp_count=op.count, converged=converged, method="lanczos",
                        history=history)


def curvature_trace(model: nn.Module, criterion: Callable, batches, kind: str = "ggn", max_iter: int = 100,
                    tol: float = 1e-3, seed: int = 0, *, min_samples: int = 10, mc_samples: int = 1, params=None,
                    cache_graph: bool | None = None, mode: str = "eval") -> HessianTrace:
    """Trace of the curvature ``kind``: Hutchinson with Rademacher vectors, stopping as :func:`hessian_trace`
    does; for ``"empirical-fisher"`` the exact trace (:func:`empirical_fisher_trace`, ``std_error`` 0,
    ``n_samples`` the number of examples)."""
    if kind == "empirical-fisher":
        _check_kind(kind, criterion)
        value, examples = _empirical_fisher_trace(model, criterion, batches, params, mode)
        return HessianTrace(value, 0.0, examples, True)
    ps, kind, gen, mc_samples = _setup(model, criterion, kind, params, seed, mc_samples)
    max_iter = _check_int(max_iter, "max_iter")
    min_samples = _check_int(min_samples, "min_samples", minimum=2)
    tol = _check_positive(tol, "tol", allow_zero=True)
    with _measurement_mode(model, mode):
        op = _CurvatureOperator(model, criterion, batches, ps, kind, cache_graph, gen, mc_samples)
        return hutchinson(op, gen, max_iter, min_samples, tol)


def empirical_fisher_trace(model: nn.Module, criterion: Callable, batches, params=None, *,
                           mode: str = "eval") -> float:
    """Exact trace of the empirical Fisher: the mean over all examples of the squared norm of the
    per-example loss gradient (``torch.func.vmap`` over ``grad``; the criterion on a batch of one)."""
    return _empirical_fisher_trace(model, criterion, batches, params, mode)[0]


def _empirical_fisher_trace(model, criterion, batches, params, mode) -> tuple[float, int]:
    ps = _prepare(model, criterion, params)
    names = {id(p): name for name, p in model.named_parameters()}
    if any(id(p) not in names for p in ps):
        raise SharpnessInputError("params must be parameters of the model")
    if mode == "train" and any(uses_batch_statistics(m) for m in model.modules()):
        raise SharpnessInputError("per-example gradients are undefined when BatchNorm normalises with batch "
                                  "statistics (mode='train'); measure the empirical Fisher's trace with mode='eval'")

    def example_loss(selected, x1, y1):
        loss = criterion(functional_call(model, selected, (x1.unsqueeze(0),), strict=False), y1.unsqueeze(0))
        if loss.dim() != 0:
            raise SharpnessInputError("criterion must return a scalar (mean) loss")
        return loss

    per_example_grads = vmap(grad(example_loss), in_dims=(None, 0, 0))
    total, count = 0.0, 0
    with _measurement_mode(model, mode):
        selected = {names[id(p)]: p.detach() for p in ps}
        for x, y, n in _Batches(batches, ps[0].device, ps[0].dtype):
            grads = per_example_grads(selected, x, y)
            total += float(sum(g.to(torch.float64).pow(2).flatten(1).sum(1).sum() for g in grads.values()))
            count += n
    return total / count, count
