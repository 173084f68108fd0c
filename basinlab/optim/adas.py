"""AdaS (Hosseini & Plataniotis, "AdaS: Adaptive Scheduling of Stochastic Gradients"): SGD whose
per-layer learning rate follows the layer's knowledge-gain slope.

For conv layer k after epoch t, with ``Gbar(t, k) = (S_in + S_out) / 2`` (knowledge gains of the
layer's mode-3 and mode-4 unfoldings, :mod:`basinlab.metrics.lowrank`):

- first epoch end: ``R(k) = beta * 0 + zeta * lr0`` (the reference seeds the "velocity" with the
  initial lr, so with ``zeta = 1`` epoch 1 runs at ``lr0`` again);
- later: ``slope = Gbar(t, k) - Gbar(t-1, k)`` (the reference's least-squares line through the
  last 2 epochs, ``np.polyfit`` with x = [0, 1], is exactly this difference),
  ``R(k) = beta * R(k) + zeta * slope``;
- ``R(k) = max(R(k), min_lr)`` is the layer's lr for the next epoch, used by plain SGD (momentum,
  dampening, weight decay and Nesterov exactly as ``torch.optim.SGD``; this class *is* a
  ``torch.optim.SGD`` with one param group per conv layer).

Defaults as the reference: ``beta = 0.8`` (gain factor, in [0, 1)), ``zeta = 1.0``, ``p = 1``,
``min_lr = 1e-20``, initial lr 0.03.

Parameters and layers: every 4-D parameter (a conv weight; the reference's rule) gets its own
param group (keeping the options of the group it came from). The other parameters (biases,
normalisation affine parameters, linear layers) are handled by ``non_conv``:

- ``'initial'`` (default): they keep their initial lr (one group per original group);
- ``'follow'``: each takes the lr of the nearest conv weight before it in parameter order
  (parameters before the first conv follow the first conv). This is the reference's association
  for BatchNorm parameters after a conv; the reference's final linear layer followed a separate
  recurrence driven by the last conv's output S, which this option approximates by the last conv.

The engine calls :meth:`AdaS.epoch_step` once at the end of every epoch (``basinlab.methods.lowrank``
does it for every run whose optimizer is AdaS). Per-group state (``R``, the previous ``Gbar``, the
epoch count) lives in the param-group dicts, so ``state_dict()`` / ``load_state_dict()`` round-trip
it with the momentum buffers.

Living with a regime: basinlab's :class:`~basinlab.optim.Regime` writes ``lr`` into every group
before each step, multiplied by the group's ``lr_scale`` when it has one. So :meth:`epoch_step`
sets each layer's ``lr = R`` AND ``lr_scale = R / lr0`` (``lr0`` = the lr the group started with).
Under a constant regime (AdaS's own setting: ``--optimizer AdaS --lr 0.03``) the regime then
re-applies exactly ``R``; under a regime with a schedule the layer gets ``schedule(t) * R / lr0``
(AdaS's ratio on top of the schedule), which is the only composition that keeps both meaningful.

Declared as ``'AdaS'`` in :mod:`basinlab.optim.factory` (``--optimizer AdaS``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["AdaS"]

_ADAS_KEYS = ("beta", "zeta", "p", "min_lr")


class AdaS(torch.optim.SGD):
    """SGD with AdaS per-conv-layer learning rates; see the module docstring.

    Args:
        params: parameters or param-group dicts (as for ``torch.optim.SGD``).
        lr: initial lr of every layer (and the lr of non-conv parameters with ``non_conv='initial'``).
        beta: gain factor in [0, 1). zeta: knowledge-gain factor (> 0). p: power of the singular
        values in S (1 or 2). min_lr: floor of a layer's lr (> 0).
        momentum, dampening, weight_decay, nesterov: as ``torch.optim.SGD``.
        non_conv: 'initial' or 'follow' (see the module docstring).
    """

    def __init__(self, params, lr: float = 0.03, beta: float = 0.8, zeta: float = 1.0, p: float = 1,
                 min_lr: float = 1e-20, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, non_conv: str = "initial"):
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"AdaS: lr must be > 0, got {lr!r}")
        _check_adas(beta, zeta, p, min_lr)
        if non_conv not in ("initial", "follow"):
            raise ValueError(f"AdaS: non_conv must be 'initial' or 'follow', got {non_conv!r}")
        groups, follow_links = _split_groups(params, non_conv)
        super().__init__(groups, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
        extra = {"beta": beta, "zeta": zeta, "p": p, "min_lr": min_lr}
        self.defaults.update(extra)
        for group, link in zip(self.param_groups, follow_links):
            for k, v in extra.items():
                group.setdefault(k, v)
            _check_adas(group["beta"], group["zeta"], group["p"], group["min_lr"])
            group.setdefault("adas_init_lr", float(group["lr"]))
            group.setdefault("adas_R", 0.0)
            group.setdefault("adas_G", math.nan)
            group.setdefault("adas_epochs", 0)
            group["adas_follow"] = link  # index of the conv group whose lr this group takes, or -1
        self.non_conv = non_conv

    # ----------------------------------------------------------------------------------------
    def conv_groups(self) -> list[dict]:
        """The param groups of the conv weights, in parameter order (one conv weight each)."""
        return [g for g in self.param_groups if g.get("adas_conv", False)]

    def layer_lrs(self) -> list[float]:
        """Current lr of every conv layer, in parameter order."""
        return [float(g["lr"]) for g in self.conv_groups()]

    def epoch_step(self, metrics: Any = None) -> list[float]:
        """Update the per-layer lrs at the end of an epoch; returns the new conv-layer lrs.

        ``metrics`` may be:

        - None or an ``nn.Module``: the metrics are computed here from the optimizer's own conv
          weights (batched SVDs; the module is not needed, it is accepted for convenience);
        - a DataFrame from :func:`basinlab.metrics.lowrank.model_metrics` (its conv rows, in order, must
          be this optimizer's conv weights: same count and, when it has a ``shape`` column, same
          shapes). Pass it when the engine computes the metrics anyway, to avoid doing the SVDs
          twice; the S values then use the DataFrame's ``p``;
        - an array of ``Gbar`` (one per conv layer), or of shape [n, 2] with (S_in, S_out) rows.

        A layer whose Gbar is NaN (non-finite weights) keeps its lr and its previous Gbar.
        """
        groups = self.conv_groups()
        gbar = self._gbar(metrics, groups)
        for g, G in zip(groups, gbar):
            if not math.isfinite(G):
                continue
            if g["adas_epochs"] == 0:
                velocity = g["adas_init_lr"]
            else:
                velocity = G - g["adas_G"]
            R = g["beta"] * g["adas_R"] + g["zeta"] * velocity
            R = max(R, g["min_lr"])
            g["adas_R"] = float(R)
            g["adas_G"] = float(G)
            g["adas_epochs"] += 1
            g["lr"] = float(R)
            g["lr_scale"] = float(R) / g["adas_init_lr"]  # survives the regime's per-step lr writes
        for g in self.param_groups:
            link = g.get("adas_follow", -1)
            if link is not None and link >= 0:
                g["lr"] = float(groups[link]["lr"])
                if "lr_scale" in groups[link]:
                    g["lr_scale"] = groups[link]["lr_scale"]
        return self.layer_lrs()

    def _gbar(self, metrics, groups) -> np.ndarray:
        n = len(groups)
        if metrics is None or isinstance(metrics, nn.Module):
            from basinlab.metrics.lowrank import _as_matrix, _fit_metrics, _fits, unfoldings

            mats, ns, ps = [], [], []
            with torch.no_grad():
                for g in groups:
                    m3, n3, m4, n4 = unfoldings(g["params"][0])
                    mats += [_as_matrix(m3), _as_matrix(m4)]
                    ns += [n3, n4]
                    ps.append(g["p"])
            fits = _fits(mats)
            out = np.empty(n)
            for k in range(n):
                s_in = _fit_metrics(fits[2 * k], ns[2 * k], ps[k])["S"]
                s_out = _fit_metrics(fits[2 * k + 1], ns[2 * k + 1], ps[k])["S"]
                out[k] = (s_in + s_out) / 2.0
            return out
        import pandas as pd  # only AdaS's table form needs it (a 0.2 s import)

        if isinstance(metrics, pd.DataFrame):
            df = metrics
            if "kind" in df.columns:
                df = df[df["kind"] == "conv"]
            if len(df) != n:
                raise ValueError(f"AdaS.epoch_step: the metrics have {len(df)} conv rows but the optimizer has "
                                 f"{n} conv weights; call epoch_step() without metrics to compute them here")
            if "shape" in df.columns:
                for (_, row), g in zip(df.iterrows(), groups):
                    shape = "x".join(str(int(s)) for s in g["params"][0].shape)
                    if str(row["shape"]) != shape:
                        raise ValueError(f"AdaS.epoch_step: metrics row {row.get('layer', '?')!r} has shape "
                                         f"{row['shape']} but the optimizer's conv weight there is {shape}")
            return (df["S_in"].to_numpy(np.float64) + df["S_out"].to_numpy(np.float64)) / 2.0
        arr = np.asarray(metrics, dtype=np.float64)
        if arr.ndim == 2 and arr.shape == (n, 2):
            return arr.mean(axis=1)
        if arr.ndim == 1 and arr.shape[0] == n:
            return arr
        raise ValueError(f"AdaS.epoch_step: expected None, a model, a metrics DataFrame, {n} Gbar values or "
                         f"an array [{n}, 2] of (S_in, S_out); got shape {arr.shape}")


def _check_adas(beta, zeta, p, min_lr) -> None:
    if not (isinstance(beta, (int, float)) and 0.0 <= beta < 1.0):
        raise ValueError(f"AdaS: beta must lie in [0, 1), got {beta!r}")
    if not (isinstance(zeta, (int, float)) and math.isfinite(zeta) and zeta > 0):
        raise ValueError(f"AdaS: zeta must be > 0, got {zeta!r}")
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p > 0):
        raise ValueError(f"AdaS: p must be > 0, got {p!r}")
    if not (isinstance(min_lr, (int, float)) and math.isfinite(min_lr) and min_lr > 0):
        raise ValueError(f"AdaS: min_lr must be > 0, got {min_lr!r}")


def _split_groups(params, non_conv: str) -> tuple[list[dict], list[int]]:
    """One group per 4-D parameter; the others per original group ('initial') or attached to the
    preceding conv ('follow'). Returns (groups, follow link per group)."""
    if isinstance(params, Tensor):
        raise TypeError("params argument given to the optimizer should be an iterable of Tensors or dicts, "
                        f"but got {torch.typename(params)}")
    params = list(params)
    if not params:
        raise ValueError("optimizer got an empty parameter list")
    if not isinstance(params[0], dict):
        params = [{"params": params}]
    groups: list[dict] = []
    links: list[int] = []
    conv_count = 0
    pending: list[tuple[int, dict, Tensor]] = []  # 'follow': params seen before the first conv
    follower: dict[tuple[int, int], dict] = {}  # (original group, conv index) -> group
    for gi, g in enumerate(params):
        opts = {k: v for k, v in g.items() if k != "params"}
        ps = g["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        others: list[Tensor] = []
        for p in ps:
            if p.dim() == 4:
                groups.append({**opts, "params": [p], "adas_conv": True})
                links.append(-1)
                conv_count += 1
            elif non_conv == "initial":
                others.append(p)
            elif conv_count == 0:
                pending.append((gi, opts, p))
            else:
                key = (gi, conv_count - 1)
                if key not in follower:
                    follower[key] = {**opts, "params": [], "adas_conv": False}
                    groups.append(follower[key])
                    links.append(conv_count - 1)
                follower[key]["params"].append(p)
        if others:
            groups.append({**opts, "params": others, "adas_conv": False})
            links.append(-1)
    if pending:
        # Params before the first conv: one group per original group, following the first conv
        # (or keeping the initial lr when there is no conv at all).
        head: dict[int, dict] = {}
        for gi, opts, p in pending:
            if gi not in head:
                head[gi] = {**opts, "params": [], "adas_conv": False}
            head[gi]["params"].append(p)
        link = 0 if conv_count else -1
        groups = list(head.values()) + groups
        links = [link] * len(head) + links
    return groups, links
