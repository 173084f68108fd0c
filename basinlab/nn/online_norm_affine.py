"""OnlineNorm's affine and error compensation (ECM 'ls', 'ac') as a few fused kernels, and the fused reduction
both backward passes use. Why each is written as it is: the notes in :mod:`basinlab.nn.online_norm`.

Every fused kernel is an inference-mode batch norm (or its backward) with unit statistics over the
[1, B*C, D] view, which computes exactly a per-row affine map (or its gradients) in one pass.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from basinlab.nn.online_norm_scans import _zeros_ones

_LS_EPS = 1e-5  # layer scaling: z / sqrt(mean(z^2) + 1e-5)
_AC_BOUND = 5.0  # activation clamping: clamp(z, -5, 5)


_FUSED_SUMS = [True]


def _scaled_grad_and_sums(g3: torch.Tensor, y3: torch.Tensor, r: torch.Tensor):
    """(r * g, sum_D g*y, sum_D g) for [B, C, D] tensors g, y and per-row scales r [B, C].

    One fused kernel where available: the inference-mode batch-norm backward on the [1, B*C, D]
    view with unit statistics (mean 0, var 1, eps 0) and weight r returns exactly these (input,
    weight and bias gradients); falls back to mul + vecdot + sum.
    """
    bsz, ch, dsz = g3.shape
    if dsz == 1:  # (N, C) inputs: the sums are the elements themselves
        return g3 * r.unsqueeze(2), (g3 * y3).view(bsz, ch), g3.reshape(bsz, ch).clone()
    if _FUSED_SUMS[0]:
        try:
            zeros, ones = _zeros_ones(bsz * ch, g3.device, g3.dtype)
            gx, sgy_y, sgy = torch.ops.aten.native_batch_norm_backward(
                g3.reshape(1, bsz * ch, dsz), y3.reshape(1, bsz * ch, dsz), r.reshape(-1),
                zeros, ones, None, None, False, 0.0, [True, True, True],
            )
            return gx.view(bsz, ch, dsz), sgy_y.view(bsz, ch), sgy.view(bsz, ch)
        except (RuntimeError, NotImplementedError, AttributeError):
            _FUSED_SUMS[0] = False
    return g3 * r.unsqueeze(2), torch.linalg.vecdot(g3, y3, dim=2), g3.sum(dim=2)


class _Handoff:
    """Passes the reductions of y' from ``_RowAffine``'s backward to ``_OnlineNormFunction``'s.

    With ECM 'ls' the normaliser output y feeds only the per-(n, c) map z = scale y + shift, so
    y' = scale z' and the sums the normaliser's backward needs are already known from the map's own
    parameter gradients: sum_D(y') = scale sum_D(z'), sum_D(y' y) = scale sum_D(z' y). Reusing
    them saves a full fused pass over the tensor. Used only if the gradient that reaches the
    normaliser is the very tensor the map produced (identity check); anything else (e.g. y also
    used elsewhere, so autograd summed gradients) falls back to reducing y' again.
    """

    __slots__ = ("active", "grad", "sums")

    def __init__(self):
        self.active = False  # set by the normaliser's forward when it will run a backward
        self.grad = None
        self.sums = None

    def put(self, grad, sums):
        if self.active:
            self.grad, self.sums = grad, sums

    def take(self, grad):
        sums = self.sums if (grad is not None and grad is self.grad) else None
        self.grad = self.sums = None  # never keep the gradient alive longer than needed
        return sums


class _RowAffine(torch.autograd.Function):
    """ECM 'ls' after the affine with a hand-written backward: (y, E_D[y], Var_D[y], w, b) ->
    out = s_n (w y + b), s_n = 1 / sqrt(mean_C E_D[(w y + b)^2] + 1e-5) (see ``_scaled_affine``).

    Forward: a few [B, C] ops, then one fused inference-mode batch norm on the [1, B*C, D] view
    with per-(n, c) scale s w and shift s b. Backward: one fused kernel for (scale z', sum_D z' y,
    sum_D z'), then the chain rule through s by hand on [B, C] tensors (cheaper than autograd's
    graph of many tiny nodes); the y' sums are handed to the normaliser (``_Handoff``).
    weight and bias are both None or both tensors.
    """

    @staticmethod
    def forward(ctx, y, ey, vy, weight, bias, handoff):
        bsz, ch = y.shape[0], y.shape[1]
        if weight is None:
            ez2 = torch.addcmul(vy, ey, ey)
            zm = None
        else:
            zm = torch.addcmul(bias, ey, weight)  # E_D[z]
            ez2 = torch.addcmul(zm * zm, vy, weight * weight)  # E_D[z^2], no cancellation
        s = ez2.mean(dim=1, keepdim=True).add_(_LS_EPS).rsqrt_()  # [B, 1]
        if weight is None:
            scale, shift = s.expand(bsz, ch).contiguous(), None
        else:
            scale, shift = s * weight, (s * bias).view(-1)
        ctx.save_for_backward(y, ey, vy, weight, bias, zm, s, scale)
        ctx.handoff = handoff
        return _unit_bn(y.reshape(1, bsz * ch, -1), scale.view(-1), shift).view(y.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx, gz):
        y, ey, vy, weight, bias, zm, s, scale = ctx.saved_tensors
        bsz, ch = y.shape[0], y.shape[1]
        g3 = gz.reshape(bsz, ch, -1)
        gy, gscale, gshift = _scaled_grad_and_sums(g3, y.view(bsz, ch, -1), scale)
        gy = gy.view(y.shape)
        ctx.handoff.put(gy, (gshift * scale, gscale * scale))  # sum_D(y'), sum_D(y' y)
        # out = s (w y + b): gradient reaching s, then through s = (mean_C E[z^2] + eps)^-1/2
        if weight is None:
            g_s = gscale.sum(dim=1, keepdim=True)
        else:
            g_s = (gscale * weight).add_(gshift * bias).sum(dim=1, keepdim=True)
        g_ez2 = g_s.mul_(s * s * s).mul_(-0.5 / ch)  # [B, 1], d/d E_D[z^2]_(n, c) for every c
        if weight is None:
            return gy, (2.0 * ey) * g_ez2, g_ez2.expand(bsz, ch).contiguous(), None, None, None
        g_zm = (2.0 * zm) * g_ez2  # through E_D[z^2] = E[z]^2 + w^2 Var[y]
        g_vy = (weight * weight) * g_ez2
        g_ey = g_zm * weight
        g_w = (gscale * s).add_(ey * g_zm).add_((2.0 * vy * weight) * g_ez2).sum(dim=0)
        g_b = (gshift * s).add_(g_zm).sum(dim=0)
        return gy, g_ey, g_vy, g_w, g_b, None


def _unit_bn(inp: torch.Tensor, weight, bias) -> torch.Tensor:
    """Per-channel (dim 1) ``inp * weight + bias`` by ordinary autograd, as inference-mode batch
    norm with unit statistics (mean 0, var 1, eps 0: the normaliser is exactly the identity).

    Same values as the plain expression, but forward and backward (input, weight and bias
    gradients) are single fused kernels instead of four tensor passes.
    """
    zeros, ones = _zeros_ones(inp.shape[1], inp.device, inp.dtype)
    return torch.batch_norm(inp, weight, bias, zeros, ones, False, 0.0, 0.0, False)


def _affine(y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, clamp: bool = False):
    """Per-channel affine ``w y + b`` by ordinary autograd (``_unit_bn``), laid out as one
    "channel" per (sample, channel) pair: the CPU batch-norm kernels are much faster over many
    short rows than over few long ones (C = 16 of N*H*W = 131072 elements each).

    ``clamp``: ECM 'ac', torch.clamp to [-5, 5] as the reference (its gradient passes at the bounds
    themselves, where hardtanh's is 0).
    """
    n, ch = y.shape[0], y.shape[1]
    if y.numel() == n * ch:
        z = _unit_bn(y, weight, bias)
    else:
        w = weight.expand(n, ch).reshape(-1)
        b = bias.expand(n, ch).reshape(-1)
        z = _unit_bn(y.reshape(1, n * ch, -1), w, b)
    if clamp:
        z = torch.clamp(z, -_AC_BOUND, _AC_BOUND)
    return z.view(y.shape)


def _layer_scale(z: torch.Tensor) -> torch.Tensor:
    """ECM 'ls' from z itself: z / sqrt(mean over all but dim 0 of z^2 + 1e-5) (eval mode)."""
    n = z.shape[0]
    if z.numel() == 0:
        return z
    zf = z.reshape(1, n, -1)
    per = zf.shape[2]
    ms = torch.linalg.vector_norm(zf, dim=2).view(n).square() / per
    return _unit_bn(zf, torch.rsqrt(ms + _LS_EPS), None).view(z.shape)


def _scaled_affine(y, ey, vy, weight, bias, handoff=None) -> torch.Tensor:
    """ECM 'ls' after the affine: z = w y + b, out = z / sqrt(mean z^2 + 1e-5).

    With ``handoff`` (training, D > 1) this is ``_RowAffine`` (same formulas, hand-written
    backward, y' sums handed to the normaliser); otherwise ordinary autograd as below.

    The per-sample mean of z^2 over (C, H, W) is computed exactly from the per-(n, c) mean and
    variance of y: E_D[z^2] = w^2 Var_D[y] + (w E_D[y] + b)^2 (no cancellation), so no pass over the
    tensor is needed; then z * s for the per-sample s is a per-(n, c) affine map of y, done as one
    inference-mode batch norm on the [1, N*C, D] view (fused forward and backward).
    """
    n, ch = y.shape[0], y.shape[1]
    if handoff is not None and y.numel() != n * ch:
        return _RowAffine.apply(y, ey, vy, weight, bias, handoff)
    if weight is None:
        ez2 = torch.addcmul(vy, ey, ey)
    else:
        zm = torch.addcmul(bias, ey, weight)  # E_D[z]
        ez2 = torch.addcmul(zm * zm, vy, weight * weight)
    s = torch.rsqrt(ez2.mean(dim=1, keepdim=True) + _LS_EPS)  # [N, 1]
    if y.numel() == n * ch:  # one element per (n, c): plain ops beat a kernel over N*C channels
        return y * s.view((n, 1) + (1,) * (y.dim() - 2)) if weight is None else (
            torch.addcmul(bias, y.reshape(n, ch), weight) * s
        ).view(y.shape)
    if weight is None:
        scale, shift = s.expand(n, ch).reshape(-1), None
    else:
        scale, shift = (s * weight).reshape(-1), (s * bias).reshape(-1)
    return _unit_bn(y.reshape(1, n * ch, -1), scale, shift).view(y.shape)
