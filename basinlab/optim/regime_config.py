"""Regimes from a model config (convNet's 'regime': 'fixed' and regime_* keys), the Online Normalization
scripts' one-phase regime with milestones, and its batch-size rule."""
from __future__ import annotations

from typing import Any

from basinlab.errors import ConfigError
from basinlab.optim.factory import optimizer_spec
from basinlab.optim.regime import Regime
from basinlab.optim.regime_phases import is_number

__all__ = ["fixed_regime", "one_phase_regime", "regime_from_model_config", "pop_regime_config", "batch_size_rule",
           "REGIME_CONFIG_KEYS"]

REGIME_CONFIG_KEYS = ("regime", "regime_lr", "regime_momentum", "regime_dampening", "regime_wd")


def fixed_regime(lr: float = 0.1, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
                 optimizer: str = "SGD") -> Regime:
    """One phase from epoch 0 (delay_stability's ``'regime': 'fixed'``)."""
    return Regime([{"epoch": 0, "optimizer": optimizer, "lr": lr, "momentum": momentum,
                    "dampening": dampening, "weight_decay": weight_decay}])


def one_phase_regime(optimizer: str = "SGD", lr: float = 0.1, momentum: float | None = 0.9,
                     weight_decay: float = 0.0, milestones=None, multiplier: float = 0.1) -> Regime:
    """The regime of the Online Normalization scripts (--optimizer --lr --momentum --wd
    --lr-milestones --lr-multiplier): one optimizer, lr times ``multiplier`` at each milestone.

    Milestones become phases (``{'epoch': m, 'lr': lr * multiplier**k}``) so the log shows them.
    ``momentum`` is left out for an optimizer without one (Adam...) and for None.
    """
    spec = optimizer_spec(optimizer)
    first: dict[str, Any] = {"epoch": 0, "optimizer": spec.name, "lr": lr}
    if momentum is not None and "momentum" in spec.keys:
        first["momentum"] = momentum
    if weight_decay is not None:
        first["weight_decay"] = weight_decay
    phases = [first]
    if milestones:
        ms = list(milestones)
        for m in ms:
            if not is_number(m) or m <= 0:
                raise ConfigError(f"lr milestones must be epochs > 0, got {m!r}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ConfigError(f"lr milestones must increase, got {ms}")
        if not is_number(multiplier) or multiplier <= 0:
            raise ConfigError(f"lr multiplier must be a number > 0, got {multiplier!r}")
        for k, m in enumerate(ms, start=1):
            phases.append({"epoch": m, "lr": lr * multiplier ** k})
    return Regime(phases)


def pop_regime_config(cfg: dict) -> dict:
    """Remove the regime keys (REGIME_CONFIG_KEYS) from a model config and return them."""
    return {k: cfg.pop(k) for k in REGIME_CONFIG_KEYS if k in cfg}


def regime_from_model_config(cfg: dict, default=None) -> Regime | None:
    """The regime a ``--model-config`` dict asks for; POPS the regime keys from ``cfg``.

    - ``'regime': 'fixed'``: :func:`fixed_regime` with ``regime_lr`` (0.1), ``regime_momentum``
      (0), ``regime_dampening`` (0), ``regime_wd`` (0);
    - ``'regime'``: a list or dict (or a callable/Regime from code): that regime, with any
      ``regime_lr`` / ``regime_momentum`` / ``regime_wd`` applied as overrides (lr rescales);
    - ``'regime': 'normal'`` / ``'default'`` or no ``'regime'``: ``default`` (the model's own
      regime: a Regime or anything Regime accepts), with the ``regime_*`` keys as overrides
      (ConfigError when there is no default to apply them to).
    ``regime_dampening`` replaces dampening in the first phase and wherever a phase names it.
    Returns None when ``cfg`` has no regime keys (and ``default`` is None).
    """
    if default is not None and not isinstance(default, Regime):
        default = Regime(default)
    rc = pop_regime_config(cfg)
    if not rc:
        return default
    extra = {k: rc[k] for k in REGIME_CONFIG_KEYS[1:] if k in rc}
    for k, v in extra.items():
        if not is_number(v) or v < 0:
            raise ConfigError(f"model config: {k!r} must be a number >= 0, got {v!r}")
    spec = rc.get("regime")
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "fixed":
            return fixed_regime(lr=extra.get("regime_lr", 0.1), momentum=extra.get("regime_momentum", 0.0),
                                dampening=extra.get("regime_dampening", 0.0),
                                weight_decay=extra.get("regime_wd", 0.0))
        if key in ("normal", "default"):
            spec = None
        else:
            raise ConfigError(
                f"model config: unknown regime {spec!r}; allowed: 'fixed', 'normal' (the model's own), "
                "a list of phases or a dict keyed by epoch"
            )
    if spec is None:
        base = default
        if base is None:
            if extra:
                raise ConfigError(
                    f"model config: {', '.join(sorted(extra))} given, but there is no regime to apply them to; "
                    "add 'regime': 'fixed' or a list of phases"
                )
            return None
    else:
        base = spec if isinstance(spec, Regime) else Regime(spec)
    if not extra:
        return base
    if "regime_dampening" in extra:
        entries = base.to_config()
        if entries is None:
            raise ConfigError("model config: 'regime_dampening' cannot be applied to a regime function")
        entries[0]["dampening"] = extra["regime_dampening"]
        for e in entries[1:]:
            if "dampening" in e:
                e["dampening"] = extra["regime_dampening"]
        base = Regime(entries, steps_per_epoch=base.steps_per_epoch)
    new, _ = base.overridden(lr=extra.get("regime_lr"), momentum=extra.get("regime_momentum"),
                             weight_decay=extra.get("regime_wd"))
    return new


def batch_size_rule(lr: float, momentum: float, batch: int, base_batch: int) -> tuple[float, float]:
    """Online Normalization's batch-size rule: m' = m^(B/B0), lr' = lr (B/B0) (1-m')/(1-m).

    At m = 0 this is linear lr scaling; at m = 1 the limit (1-m^k)/(1-m) -> k is used.
    """
    for name, v in (("batch", batch), ("base_batch", base_batch)):
        if not is_number(v) or v <= 0:
            raise ConfigError(f"batch-size rule: {name} must be > 0, got {v!r}")
    if not is_number(lr) or lr < 0:
        raise ConfigError(f"batch-size rule: lr must be >= 0, got {lr!r}")
    if not is_number(momentum) or not 0 <= momentum <= 1:
        raise ConfigError(f"batch-size rule: momentum must be in [0, 1], got {momentum!r}")
    k = batch / base_batch
    m2 = momentum ** k
    ratio = k if momentum == 1 else (1 - m2) / (1 - momentum)
    return lr * k * ratio, m2


