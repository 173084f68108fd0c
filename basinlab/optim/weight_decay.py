"""Which parameters weight decay applies to: all of them (torch's optimizers), or convNet's scope.

convNet.pytorch (and delay_stability, built on it) decay through a regularizer,
``'regularizer': weight_decay_config(1e-4)``, whose filter skips parameters named ``*bias`` and the
parameters of BatchNorm layers: only conv and linear weights are decayed. ``wd_filter='weights'`` is
that scope: parameters with more than one dimension that are not biases (norm scales and shifts are
1-D). The decay itself is SGD's coupled one (``grad += wd * w`` before momentum), as convNet's
regularizer adds it to the gradient before the step.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from basinlab.choices import WD_FILTERS
from basinlab.errors import ConfigError


def weight_decay_config(value: float = 1e-4, log: bool = False, filter: str = "weights") -> dict:  # noqa: A002
    """convNet's regime helper, as data: ``{'regularizer': weight_decay_config(1e-4)}`` in a phase means
    weight decay 1e-4 on conv and linear weights only. (``log`` is accepted for convNet's signature.)"""
    return {"name": "WeightDecay", "value": value, "log": log, "filter": filter}


def is_decayed(name: str, param: torch.Tensor) -> bool:
    """convNet's filter: not a bias and not a norm layer's (1-D) scale or shift."""
    return param.dim() > 1 and not name.endswith("bias")


def parameter_groups(model: torch.nn.Module, wd_filter: str):
    """The optimizer's parameters: the model's own groups where it brings them (`model.parameter_groups()`:
    dicts with 'params' and '<key>_scale' factors, e.g. airbench94's BatchNorm biases at 64x the lr), else one
    group; with `weights`, each group split so that the regime's weight decay reaches biases and norm parameters
    scaled by 0 (``weight_decay_scale``)."""
    own = getattr(model, "parameter_groups", None)
    groups = own() if callable(own) else [{"params": list(model.parameters())}]
    if wd_filter == "all":
        return groups if callable(own) else groups[0]["params"]
    names = {id(p): n for n, p in model.named_parameters()}
    split = []
    for group in groups:
        decayed = [p for p in group["params"] if is_decayed(names[id(p)], p)]
        kept = [p for p in group["params"] if not is_decayed(names[id(p)], p)]
        split += [{**group, "params": decayed}] if decayed else []
        split += [{**group, "params": kept, "weight_decay_scale": 0.0}] if kept else []
    return split


def describe(model: torch.nn.Module, wd_filter: str) -> str:
    """One log line: which parameters are decayed (and the model's own optimizer groups, if it brings them)."""
    own = getattr(model, "parameter_groups", None)
    groups = ""
    if callable(own):
        groups = "; the model's optimizer groups: " + "; ".join(_group_text(group) for group in own())
    if wd_filter == "all":
        return "weight decay scope: every parameter (--wd-filter all)" + groups
    named = list(model.named_parameters())
    decayed = [p for n, p in named if is_decayed(n, p)]
    values = sum(p.numel() for p in decayed)
    total = sum(p.numel() for _, p in named)
    return (f"weight decay scope: conv/linear weights only (--wd-filter weights, convNet's regularizer): "
            f"{len(decayed)} of {len(named)} tensors, {values:,} of {total:,} values; biases and norm "
            f"parameters are not decayed{groups}")


def _group_text(group: dict) -> str:
    """'1,152 values with lr_scale x 64, weight_decay_scale x 0.015625' for one of a model's own groups."""
    scaled = ", ".join(f"{k} x {v:g}" for k, v in group.items() if k.endswith("_scale"))
    values = sum(p.numel() for p in group["params"])
    return f"{values:,} values" + (f" with {scaled}" if scaled else "")


def translate_regularizer(phase: dict, where: str) -> tuple[dict, str | None]:
    """A phase with convNet's ``'regularizer'`` key as (phase with ``weight_decay``, its scope)."""
    if "regularizer" not in phase:
        return phase, None
    value = phase["regularizer"]
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(items) != 1 or not isinstance(items[0], Mapping) or items[0].get("name") != "WeightDecay":
        raise ConfigError(f"{where}: 'regularizer' must be weight_decay_config(VALUE) (from basinlab.optim) or "
                          f"{{'name': 'WeightDecay', 'value': VALUE}}; other convNet regularizers are not "
                          f"implemented (got {value!r})")
    if "weight_decay" in phase:
        raise ConfigError(f"{where}: names both 'weight_decay' and 'regularizer'; keep one")
    spec = items[0]
    decay, scope = spec.get("value"), spec.get("filter", "weights")
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
        raise ConfigError(f"{where}: the regularizer's value must be a number >= 0, got {decay!r}")
    if scope not in WD_FILTERS:
        raise ConfigError(f"{where}: the regularizer's filter must be one of {', '.join(WD_FILTERS)}, got {scope!r}")
    out = {k: v for k, v in phase.items() if k != "regularizer"}
    out["weight_decay"] = float(decay)
    return out, scope
