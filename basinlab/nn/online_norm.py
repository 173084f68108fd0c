"""Online Normalization (Chiley et al., NeurIPS 2019, arXiv 1905.05894) without a per-sample loop.

Per channel c and sample t of the ordered stream of training samples (D = H*W elements each):

    forward      y_t  = (x_t - mu_{t-1}) / sqrt(var_{t-1} + eps)
                 mu_t = a mu_{t-1} + (1-a) m_t
                 var_t = a var_{t-1} + (1-a) s2_t + a (1-a) (m_t - mu_{t-1})^2
    backward     xt'_t = y'_t - (1-b) v_{t-1} y_t ;          v_t = v_{t-1} + mean_D(xt'_t * y_t)
    (control)    x'_t  = xt'_t / sqrt(var_{t-1}+eps) - (1-b) u_{t-1} ;  u_t = u_{t-1} + mean_D(x'_t)

with a = ``alpha_fwd``, b = ``alpha_bkw``, m_t / s2_t the spatial mean / population variance of x_t.
Sample n of a batch uses the statistics left by sample n-1, so a batch of B gives exactly what B
batches of one give (with frozen weights). The state (mu, var, u, v) lives in float32 (or float64)
buffers that are carried across batches and epochs and saved in ``state_dict``.

How it is computed (see ``_OnlineNormFunction``): every recurrence is a first-order linear scan over
the [B, C] per-(sample, channel) statistics, so there is no per-sample loop; the full tensor is only
touched by BatchNorm-like passes:

* full-tensor work: forward = mean, (x - m), its norm (exact two-pass variance), then y written in
  place of that temporary; backward = one fused kernel giving r*y', sum_D(y') and sum_D(y' y) (the
  inference-mode batch-norm backward on the [1, B*C, D] view), then two in-place passes for x'.
* constant decay (mu, var, u): closed form in float64 on the rows [s0; inputs],
  state_k = a^k (s0 + sum_{j<k} scale inp_j a^-(j+1)) = one cumsum and two multiplications. The
  negative powers are used only when a^B >= 1e-250 (decided from a and B alone), so they stay below
  1e250: no overflow. Otherwise (a = 0, or a tiny a with a long batch) the cached (B+1)x(B+1)
  lower-triangular matrix of non-negative powers a^(k-1-j) is applied with one matmul (in float64
  when float32 matmuls may use TF32/bf16). The closed form is preferred because it needs no BLAS:
  a 129x129 matmul costs as much on one thread and, with MKL threads on a loaded machine, far more.
* time-varying decay (v: A_n = 1 - (1-b) E[y_n^2], which can be <= 0 or exactly 0): on CPU the
  closed form with p_t = A_0...A_t (cumprod in float64), state_t = p_t (s0 + sum_{j<=t} c_j / p_j),
  used only when every |p_t| lies in [1e-250, 1e250] (checked on the data: one host sync, free on
  CPU); otherwise, and on other devices, a Hillis-Steele log-depth scan of the affine maps
  V -> A V + c (products and sums only, any sign or size of A, log2 B vectorised steps).
  No logarithms anywhere. Batches longer than ``_CHUNK`` are scanned chunk by chunk.
* the affine (and ECM 'ac', both in ``online_norm_affine.py``) are ordinary autograd. The affine is written
  as an inference-mode batch norm with unit statistics over the [1, B*C, D] view (``_unit_bn``/``_affine``):
  exactly w y + b, with one fused kernel forward and one backward. ECM 'ls' needs mean_{C,H,W}(z^2) per sample for
  z = w y + b: the normaliser also returns E_D[y] and Var_D[y] per (sample, channel) (known exactly
  from its statistics), so E_D[z^2] = w^2 Var_D[y] + (w E_D[y] + b)^2 costs no pass over the
  tensor, and the affine and the per-sample scale fold into the same single per-(n, c) map
  (``_RowAffine``, a Function with a hand-written [B, C] backward through the per-sample scale,
  which is cheaper than autograd's graph of many tiny nodes). Its backward already reduces
  sum_D(z') and sum_D(z' y), from which the sums of y' = scale z' follow, so it hands them to the
  normaliser's backward (``_Handoff``) and the normaliser skips its own fused reduction pass.
  The gradients reaching E_D[y] and Var_D[y] are added to y' inside the normaliser's backward.
  ECM 'ac' is torch.clamp(z, -5, 5) on the affine output, as the reference: its gradient passes at exactly
  +-5 (hardtanh's would not).

The backward buffers (u, v) advance inside the autograd backward, i.e. once per backward pass through
the layer: a training-mode forward that is never backpropagated (``torch.no_grad()``, or an input and
layer that need no input gradient) updates mu/var but not u/v; backpropagating the same graph twice
(``retain_graph=True``) advances u/v twice; activation checkpointing that re-runs the forward would
advance mu/var twice.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from basinlab.choices import ECM_MODES
from basinlab.nn.online_norm_affine import (
    _AC_BOUND,
    _affine,
    _Handoff,
    _layer_scale,
    _scaled_affine,
    _scaled_grad_and_sums,
)
from basinlab.nn.online_norm_scans import _affine_scan, _const_decay_scan

__all__ = ["OnlineNorm1d", "OnlineNorm2d"]

_ECM_MODES = ECM_MODES


def _compute_dtype(x_dtype: torch.dtype, state_dtype: torch.dtype) -> torch.dtype:
    if x_dtype == torch.float64 or state_dtype == torch.float64:
        return torch.float64
    return torch.float32


class _OnlineNormFunction(torch.autograd.Function):
    """Online normalisation without affine: x -> (y, E_D[y], Var_D[y]).

    The per-(sample, channel) mean and variance of y are returned (exact by construction, from the
    forward statistics) so that layer scaling can be computed from them by ordinary autograd
    without another pass over the tensor; their gradients are folded into y' in the backward.
    Forward updates the buffers (mu, var), backward the buffers (u, v).
    """

    @staticmethod
    def forward(
        ctx, x, mu, var, u, v, alpha_fwd: float, alpha_bkw: float, eps: float, handoff=None
    ):
        ctx.set_materialize_grads(False)
        cdtype = _compute_dtype(x.dtype, mu.dtype)
        shape = x.shape
        bsz, ch = shape[0], shape[1]
        x3 = (x if x.dtype == cdtype else x.to(cdtype)).reshape(bsz, ch, -1)
        dsz = x3.shape[2]
        m = x3.mean(dim=2)  # [B, C]
        if dsz > 1:
            d = x3 - m.unsqueeze(2)  # the only full-size temporary; becomes y below
            s2 = torch.linalg.vector_norm(d, dim=2).square_().div_(dsz)  # exact two-pass variance
        else:
            d = None
            s2 = torch.zeros_like(m)

        mu_prev, mu_last = _const_decay_scan(m, mu, alpha_fwd, 1.0 - alpha_fwd)
        dm = m - mu_prev  # m_t - mu_{t-1}
        w = torch.addcmul(s2, dm, dm, value=alpha_fwd)  # var input: s2 + a (m - mu_prev)^2
        var_prev, var_last = _const_decay_scan(w, var, alpha_fwd, 1.0 - alpha_fwd)
        r = var_prev.add_(eps).rsqrt_()  # 1 / sqrt(var_{t-1} + eps)
        ey = dm.mul_(r)  # E_D[y_t]
        vy = s2.mul_(r).mul_(r)  # Var_D[y_t]

        if d is not None:  # y = (x - m) r + (m - mu_prev) r, computed in place of the temporary
            y = d.mul_(r.unsqueeze(2)).add_(ey.unsqueeze(2)).view(shape)
        else:
            y = ey.reshape(shape).clone()

        mu.copy_(mu_last)
        var.copy_(var_last)

        ctx.in_dtype = x.dtype
        ctx.alpha_bkw = float(alpha_bkw)
        ctx.state = (u, v)
        ctx.handoff = None
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(y, r, ey, vy)
            if handoff is not None:
                handoff.active = True
                ctx.handoff = handoff
        return y, ey, vy

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, g_ey, g_vy):
        y, r, ey, vy = ctx.saved_tensors
        u, v = ctx.state
        beta = ctx.alpha_bkw
        c = 1.0 - beta
        cdtype = y.dtype
        bsz, ch = y.shape[0], y.shape[1]
        y3 = y.view(bsz, ch, -1)
        dsz = y3.shape[2]

        handoff = ctx.handoff
        sums = handoff.take(gy) if handoff is not None else None
        if sums is not None:  # y' came straight from _RowAffine, which already reduced it
            gx = gy.view(bsz, ch, dsz).mul_(r.unsqueeze(2))  # a fresh tensor nobody else holds
            egy = sums[0].div_(dsz)
            egyy = sums[1].div_(dsz)
        elif gy is not None:
            g3 = (gy if gy.dtype == cdtype else gy.to(cdtype)).reshape(bsz, ch, -1)
            gx, sgyy, sgy = _scaled_grad_and_sums(g3, y3, r)  # r y', sum_D(y' y), sum_D(y')
            egy = sgy.div_(dsz)  # E_D[y']
            egyy = sgyy.div_(dsz)  # E_D[y' y]
        else:
            gx = None
            egy = torch.zeros_like(ey)
            egyy = torch.zeros_like(ey)
        # Gradients reaching E_D[y] and Var_D[y] are gradients w.r.t. y of the form k1 y + k0 per
        # (n, c): dE[y]/dy_i = 1/D, dVar[y]/dy_i = 2 (y_i - E[y]) / D. They are added to y', which
        # moves E[y'] by g_ey / D and E[y' y] by k1 Var[y] + (g_ey / D) E[y].
        k1 = k0 = None
        if g_vy is not None or g_ey is not None:
            g_ey_d = torch.zeros_like(ey) if g_ey is None else g_ey.to(cdtype) / dsz
            k1 = torch.zeros_like(ey) if g_vy is None else g_vy.to(cdtype) * (2.0 / dsz)
            k0 = torch.addcmul(g_ey_d, k1, ey, value=-1.0)
            egy.add_(g_ey_d)
            egyy.addcmul_(k1, vy).addcmul_(g_ey_d, ey)

        # v_t = (1 - c E[y^2]) v_{t-1} + E[y' y]: time-varying decay
        decay = torch.addcmul(vy, ey, ey).mul_(-c).add_(1.0)
        v_prev, v_last = _affine_scan(decay, egyy, v)
        cv = v_prev.mul_(c)  # (1-b) v_{t-1}
        # E_D[g_t] with g_t = xt'_t / sigma_{t-1},  xt'_t = y'_t - (1-b) v_{t-1} y_t
        eg = torch.addcmul(egy, cv, ey, value=-1.0).mul_(r)
        # u_t = b u_{t-1} + E[g_t]: constant decay
        u_prev, u_last = _const_decay_scan(eg, u, beta, 1.0)

        # x' = r y' + r (k1 - (1-b) v_{t-1}) y + (r k0 - (1-b) u_{t-1})
        coef_y = (cv.neg_() if k1 is None else k1.sub_(cv)).mul_(r).unsqueeze(2)
        const = u_prev.mul_(-c)
        if k0 is not None:
            const.addcmul_(k0, r)
        if gx is not None:
            gx.addcmul_(y3, coef_y).add_(const.unsqueeze(2))
        else:
            gx = torch.mul(y3, coef_y).add_(const.unsqueeze(2))

        v.copy_(v_last)
        u.copy_(u_last)
        return gx.view(y.shape).to(ctx.in_dtype), None, None, None, None, None, None, None, None


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


class _OnlineNormNd(nn.Module):
    _expected_dims: tuple = ()

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        affine: bool = True,
        ecm: str = "ls",
    ):
        super().__init__()
        if num_features <= 0:
            raise ValueError(f"num_features must be positive, got {num_features}")
        if not 0.0 <= alpha_fwd <= 1.0 or not 0.0 <= alpha_bkw <= 1.0:
            raise ValueError(f"decay factors must lie in [0, 1], got {alpha_fwd}, {alpha_bkw}")
        if eps <= 0.0:
            raise ValueError(f"eps must be positive, got {eps}")
        ecm = "none" if ecm in (None, "") else str(ecm).lower()
        if ecm not in _ECM_MODES:
            raise ValueError(f"ecm must be one of {_ECM_MODES}, got {ecm!r}")
        self.num_features = int(num_features)
        self.alpha_fwd = float(alpha_fwd)
        self.alpha_bkw = float(alpha_bkw)
        self.eps = float(eps)
        self.affine = bool(affine)
        self.ecm = ecm
        if self.affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        # forward statistics (mu, var) and backward control state (u, v); never reset implicitly
        self.register_buffer("mu", torch.zeros(num_features))
        self.register_buffer("var", torch.ones(num_features))
        self.register_buffer("u", torch.zeros(num_features))
        self.register_buffer("v", torch.zeros(num_features))

    def reset_online_state(self) -> None:
        """Restart the statistics explicitly: mu = 0, var = 1, u = v = 0."""
        with torch.no_grad():
            self.mu.zero_()
            self.var.fill_(1.0)
            self.u.zero_()
            self.v.zero_()

    def reset_parameters(self) -> None:
        self.reset_online_state()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _apply(self, fn, *args, **kwargs):
        # keep the state at least float32 under .half() / .bfloat16() (mixed precision)
        super()._apply(fn, *args, **kwargs)
        for name in ("mu", "var", "u", "v"):
            buf = self._buffers.get(name)
            if buf is not None and buf.is_floating_point() and buf.element_size() < 4:
                self._buffers[name] = buf.float()
        return self

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, alpha_fwd={self.alpha_fwd}, alpha_bkw={self.alpha_bkw}, "
            f"eps={self.eps}, affine={self.affine}, ecm={self.ecm!r}"
        )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() not in self._expected_dims:
            raise ValueError(
                f"{type(self).__name__} expects a {' or '.join(map(str, self._expected_dims))}-D "
                f"input, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels "
                f"(input shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} needs a floating-point input, got {x.dtype}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if _autocast_enabled(x.device.type):
            with torch.autocast(device_type=x.device.type, enabled=False):
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        cdtype = _compute_dtype(in_dtype, self.mu.dtype)
        ch = self.num_features
        bshape = (1, ch) + (1,) * (x.dim() - 2)
        weight = bias = None
        if self.affine:
            weight = self.weight if self.weight.dtype == cdtype else self.weight.to(cdtype)
            bias = self.bias if self.bias.dtype == cdtype else self.bias.to(cdtype)

        if self.training and x.shape[0] > 0:  # (an empty batch changes nothing: eval path)
            handoff = _Handoff() if self.ecm == "ls" else None
            y, ey, vy = _OnlineNormFunction.apply(
                x, self.mu, self.var, self.u, self.v, self.alpha_fwd, self.alpha_bkw, self.eps,
                handoff,
            )
            if self.ecm == "ls":
                return _scaled_affine(y, ey, vy, weight, bias, handoff).to(in_dtype)
            z = y
        else:  # frozen statistics, ordinary autograd
            xc = x.to(cdtype)
            z = (xc - self.mu.to(cdtype).view(bshape)) * torch.rsqrt(
                self.var.to(cdtype) + self.eps
            ).view(bshape)
        clamp = self.ecm == "ac"  # ECM 'ac' == clamp(z, -5, 5)
        if weight is not None:
            z = _affine(z, weight, bias, clamp=clamp)
        elif clamp:
            z = torch.clamp(z, -_AC_BOUND, _AC_BOUND)
        if self.ecm == "ls":  # eval mode
            z = _layer_scale(z)
        return z if z.dtype == in_dtype else z.to(in_dtype)


class OnlineNorm2d(_OnlineNormNd):
    """Online Normalization for (N, C, H, W) inputs; see the module docstring for the algorithm.

    Args: num_features C; alpha_fwd (forward decay of mu/var); alpha_bkw (decay of the backward
    control process u/v); eps; affine (per-channel gamma/beta); ecm: error compensation after the
    affine, 'ls' (layer scaling, default), 'ac' (clamp to [-5, 5]) or 'none'.
    Buffers mu, var, u, v are float32 (float64 after ``.double()``) and are part of ``state_dict``.
    """

    _expected_dims = (4,)


class OnlineNorm1d(_OnlineNormNd):
    """Online Normalization for (N, C) inputs (also (N, C, L), normalised over L like a channel)."""

    _expected_dims = (2, 3)
