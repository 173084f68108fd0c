"""Keskar et al. (2017) epsilon-sharpness, maximised with L-BFGS-B. Conventions: basinlab.metrics.hessian."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

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
)

__all__ = ["keskar_sharpness"]


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
