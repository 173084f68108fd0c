"""A straightforward per-sample reference of Online Normalization, written from the equations.

Independent of ``basinlab.nn.online_norm`` on purpose: an explicit Python loop over the samples of
each batch, with the forward (normaliser, affine, error compensation) and the backward (ECM and
affine gradients by hand, then the control process) written out; no autograd. It is the yardstick
of the tests and the slow baseline of the benchmark, not something to train with.

Per channel, sample t (ordered stream), D elements per sample and channel:
    y_t   = (x_t - mu_{t-1}) / sqrt(var_{t-1} + eps)
    mu_t  = a mu_{t-1} + (1-a) m_t
    var_t = a var_{t-1} + (1-a) s2_t + a (1-a) (m_t - mu_{t-1})^2
    z_t   = ECM(gamma y_t + beta)
backward, with y'_t the gradient at the normaliser output:
    xt'_t = y'_t - (1-b) v_{t-1} y_t ;               v_t = v_{t-1} + mean_D(xt'_t y_t)
    x'_t  = xt'_t / sqrt(var_{t-1} + eps) - (1-b) u_{t-1} ;   u_t = u_{t-1} + mean_D(x'_t)
"""

from __future__ import annotations

import torch


class OnlineNormReference:
    """Per-sample loop implementation; ``forward(x)`` then ``backward(grad_out)`` per batch.

    Works for inputs (N, C) or (N, C, *spatial). State tensors ``mu``, ``var``, ``u``, ``v`` [C];
    parameters ``weight``, ``bias`` [C] (plain tensors, gradients returned by ``backward``).
    """

    def __init__(
        self,
        num_features: int,
        alpha_fwd: float = 0.999,
        alpha_bkw: float = 0.99,
        eps: float = 1e-5,
        affine: bool = True,
        ecm: str = "ls",
        dtype: torch.dtype = torch.float32,
    ):
        self.alpha_fwd = alpha_fwd
        self.alpha_bkw = alpha_bkw
        self.eps = eps
        self.affine = affine
        self.ecm = ecm
        c = num_features
        self.mu = torch.zeros(c, dtype=dtype)
        self.var = torch.ones(c, dtype=dtype)
        self.u = torch.zeros(c, dtype=dtype)
        self.v = torch.zeros(c, dtype=dtype)
        self.weight = torch.ones(c, dtype=dtype)
        self.bias = torch.zeros(c, dtype=dtype)
        self._cache = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha_fwd
        n, c = x.shape[0], x.shape[1]
        out = torch.empty_like(x)
        cache = []
        for t in range(n):
            xt = x[t].reshape(c, -1)  # [C, D]
            m = xt.mean(dim=1)
            s2 = ((xt - m[:, None]) ** 2).mean(dim=1)  # population variance, 0 when D == 1
            sigma = torch.sqrt(self.var + self.eps)  # statistics of samples < t only
            y = (xt - self.mu[:, None]) / sigma[:, None]
            new_mu = a * self.mu + (1 - a) * m
            new_var = a * self.var + (1 - a) * s2 + a * (1 - a) * (m - self.mu) ** 2
            self.mu, self.var = new_mu, new_var

            z = self.weight[:, None] * y + self.bias[:, None] if self.affine else y
            if self.ecm == "ls":
                q = torch.sqrt((z**2).mean() + 1e-5)
                o = z / q
            elif self.ecm == "ac":
                q = None
                o = torch.clamp(z, -5.0, 5.0)
            else:
                q = None
                o = z
            out[t] = o.reshape(x[t].shape)
            cache.append((y, sigma, z, q))
        self._cache = (cache, x.shape)
        return out

    def backward(self, grad_out: torch.Tensor):
        """Returns (grad_input, grad_weight, grad_bias) and advances u, v sample by sample."""
        cache, shape = self._cache
        b = self.alpha_bkw
        n, c = shape[0], shape[1]
        gx = torch.empty(shape, dtype=grad_out.dtype)
        gw = torch.zeros_like(self.weight)
        gb = torch.zeros_like(self.bias)
        for t in range(n):
            y, sigma, z, q = cache[t]
            g = grad_out[t].reshape(c, -1)
            # ECM backward
            if self.ecm == "ls":  # o = z / q, q = sqrt(mean(z^2) + 1e-5)
                gz = g / q - z * (g * z).mean() / q**3
            elif self.ecm == "ac":
                gz = g * ((z >= -5.0) & (z <= 5.0)).to(g.dtype)
            else:
                gz = g
            # affine backward
            if self.affine:
                gw += (gz * y).sum(dim=1)
                gb += gz.sum(dim=1)
                gy = gz * self.weight[:, None]
            else:
                gy = gz
            # control process
            xt = gy - (1 - b) * self.v[:, None] * y
            self.v = self.v + (xt * y).mean(dim=1)
            xp = xt / sigma[:, None] - (1 - b) * self.u[:, None]
            self.u = self.u + xp.mean(dim=1)
            gx[t] = xp.reshape(shape[1:])
        return gx, gw, gb
