"""Optimizers by name: every ``torch.optim`` optimizer, a few aliases, and a registry for more.

Names are case-insensitive (``'SGD'``, ``'sgd'``, ``'AdaM'``, ``'RMSProp'`` all work). Aliases:

- ``'NAG'``: SGD with ``nesterov=True`` (needs a momentum > 0 and dampening 0, as torch checks);
- ``'AMSGrad'``: Adam with ``amsgrad=True``.

AdaS is declared here too; optimizers that torch lacks (AdaBound, ...) are added with
:func:`register_optimizer`. Declaring instantiates nothing: keys and defaults are read on first use.

Every optimizer created here is tagged with its canonical name (see :func:`optimizer_name_of`),
which is how :meth:`basinlab.optim.Regime.apply` knows whether a phase changes the optimizer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from basinlab.errors import ConfigError

__all__ = [
    "OptimizerSpec",
    "optimizer_class",
    "optimizer_spec",
    "optimizer_names",
    "register_optimizer",
    "create_optimizer",
    "optimizer_name_of",
    "all_param_group_keys",
    "apply_group_settings",
]

# Attribute set on optimizers created by create_optimizer.
NAME_ATTR = "_basinlab_optimizer_name"

# Per-group multipliers: a param group carrying '<key>_scale' gets regime value * scale for <key>.
SCALE_SUFFIX = "_scale"


@dataclass(frozen=True)
class OptimizerSpec:
    """What the registry declares about one optimizer name (timm's OptimInfo pattern).

    Declaring an entry instantiates nothing: its accepted param-group keys and their defaults are
    read the first time they are asked for (`keys`, `defaults`), i.e. when a regime names it.
    """

    name: str  # canonical spelling, e.g. 'SGD', 'NAG', 'Adam'
    factory: Callable[..., torch.optim.Optimizer]  # class or factory(params, **kwargs)
    fixed: Mapping[str, Any] = field(default_factory=dict)  # kwargs the name implies (NAG: nesterov)
    param_keys: frozenset | None = None  # declared keys; None: from the signature (and a probe instance)
    builtin: bool = False  # a torch.optim class
    unusable: str | None = None  # why basinlab's training steps cannot drive it (refused with this reason)

    @property
    def cls(self):
        return self.factory

    @property
    def keys(self) -> frozenset:
        return _introspected(self)[0]

    @property
    def defaults(self) -> Mapping[str, Any]:
        return _introspected(self)[1]


_INTROSPECTED: dict[str, tuple] = {}  # by lower-case name: (keys, defaults, the spec they describe)


def _introspected(spec: OptimizerSpec) -> tuple[frozenset, dict]:
    found = _INTROSPECTED.get(spec.name.lower())
    if found is None or found[2] is not spec:
        keys, defaults = _introspect(spec.factory, spec.fixed, spec.param_keys)
        defaults.update(spec.fixed)
        found = _INTROSPECTED[spec.name.lower()] = (keys, defaults, spec)
    return found[0], found[1]


def _introspect(factory, fixed: Mapping[str, Any], param_keys=None) -> tuple[frozenset, dict]:
    """Param-group keys and defaults of an optimizer class or factory."""
    defaults: dict[str, Any] = {}
    keys: set[str] = set()
    try:
        target = factory.__init__ if inspect.isclass(factory) else factory
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    if inspect.isclass(factory) and params and params[0].name == "self":
        params = params[1:]
    if params and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
        params = params[1:]  # the 'params' argument
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        keys.add(p.name)
        if p.default is not p.empty:
            defaults[p.name] = p.default
    if inspect.isclass(factory) and issubclass(factory, torch.optim.Optimizer):
        # Some optimizers put keys in .defaults that their signature lacks (AdamW in recent torch).
        try:
            probe = factory([torch.zeros(2, 2, requires_grad=True)], **dict(fixed))
            for k, v in probe.defaults.items():
                keys.add(k)
                defaults.setdefault(k, v)
        except Exception:  # noqa: BLE001 - an optimizer that cannot be probed keeps its signature
            pass
    if param_keys is not None:
        keys = set(param_keys)
    keys.discard("params")
    return frozenset(keys), defaults


# torch optimizers that one gradient per update cannot drive
UNUSABLE = {
    "LBFGS": "needs a closure that re-evaluates the loss several times per step; basinlab's steps compute "
             "one gradient per update",
    "SparseAdam": "needs sparse gradients (nn.Embedding(sparse=True)); the models here have dense ones",
}


def _declared() -> list[OptimizerSpec]:
    """Every optimizer basinlab knows without registration: torch.optim's classes, two aliases, AdaS."""
    from basinlab.optim.adas import AdaS  # adas.py imports nothing from this module
    specs = [OptimizerSpec(attr, cls, builtin=True, unusable=UNUSABLE.get(attr))
             for attr, cls in vars(torch.optim).items()
             if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer)
             and cls is not torch.optim.Optimizer and not attr.startswith("_")]
    specs += [OptimizerSpec("NAG", torch.optim.SGD, {"nesterov": True}, builtin=True),      # Nesterov SGD
              OptimizerSpec("AMSGrad", torch.optim.Adam, {"amsgrad": True}, builtin=True),  # Adam, amsgrad
              OptimizerSpec("AdaS", AdaS)]
    return specs


_REGISTRY: dict[str, OptimizerSpec] = {spec.name.lower(): spec for spec in _declared()}


def register_optimizer(name: str, cls_or_factory, *, fixed: Mapping[str, Any] | None = None,
                       param_keys: Iterable[str] | None = None, overwrite: bool = False) -> OptimizerSpec:
    """Make ``name`` usable in regimes and on the command line.

    ``cls_or_factory`` is an Optimizer subclass or a callable ``factory(params, **settings)``
    returning one. Its accepted param-group keys come from its signature (and, for classes, the
    ``defaults`` of an instance), or from ``param_keys`` when given. ``fixed`` holds keyword
    arguments the name implies (as 'NAG' implies ``nesterov=True``).
    """
    if not isinstance(name, str) or not name:
        raise ValueError("optimizer name must be a non-empty string")
    if not callable(cls_or_factory):
        raise TypeError(f"register_optimizer({name!r}): expected a class or a callable")
    existing = _REGISTRY.get(name.lower())
    if existing is not None and not overwrite and existing.factory is not cls_or_factory:
        raise ValueError(f"optimizer {name!r} is already registered (pass overwrite=True to replace it)")
    spec = OptimizerSpec(name, cls_or_factory, dict(fixed or {}),
                         frozenset(param_keys) if param_keys is not None else None)
    _REGISTRY[name.lower()] = spec
    return spec


def optimizer_names() -> list[str]:
    """Canonical names of every known optimizer, sorted case-insensitively."""
    return sorted((s.name for s in _REGISTRY.values()), key=str.lower)


def optimizer_spec(name: str) -> OptimizerSpec:
    """The registry entry for ``name`` (case-insensitive); ConfigError when unknown."""
    if isinstance(name, str):
        spec = _REGISTRY.get(name.strip().lower())
        if spec is not None:
            return spec
    raise ConfigError(
        f"unknown optimizer {name!r}; allowed (case-insensitive): {', '.join(optimizer_names())}"
    )


def optimizer_class(name: str):
    """The optimizer class (or registered factory) for ``name``, case-insensitive.

    For aliases this is the underlying class ('NAG' -> ``torch.optim.SGD``); use
    :func:`create_optimizer` to get the implied keyword arguments applied too.
    """
    return optimizer_spec(name).factory


def all_param_group_keys() -> frozenset:
    """Union of the param-group keys of every registered optimizer."""
    keys: set[str] = set()
    for spec in _REGISTRY.values():
        keys |= spec.keys
    return frozenset(keys)


def check_settings(spec: OptimizerSpec, settings: Mapping[str, Any], where: str = "") -> None:
    """ConfigError naming the first key ``spec`` does not accept, or a key its name fixes."""
    for key in settings:
        if key not in spec.keys:
            raise ConfigError(
                f"{where}{key!r} is not a setting of optimizer {spec.name}; "
                f"allowed: {', '.join(sorted(spec.keys))}"
            )
        if key in spec.fixed and settings[key] != spec.fixed[key]:
            raise ConfigError(
                f"{where}optimizer {spec.name} implies {key}={spec.fixed[key]!r}, "
                f"got {key}={settings[key]!r}"
            )


def _coerce(value, default):
    """Lists from YAML/JSON become tuples where torch's default is a tuple (betas, etas)."""
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    return value


def apply_group_settings(optimizer: torch.optim.Optimizer, settings: Mapping[str, Any],
                         defaults: Mapping[str, Any] | None = None) -> None:
    """Write ``settings`` into every param group, honouring per-group ``'<key>_scale'`` factors.

    Only the hyper-parameters are touched: optimizer state (momentum buffers...) is left alone.
    A tensor-valued group entry (capturable/fused lr) is filled in place.
    """
    defaults = defaults or {}
    for group in optimizer.param_groups:
        for key, value in settings.items():
            value = _coerce(value, defaults.get(key))
            scale = group.get(key + SCALE_SUFFIX)
            if scale is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = value * scale
            current = group.get(key)
            if isinstance(current, torch.Tensor) and not isinstance(value, torch.Tensor):
                current.fill_(value)
            else:
                group[key] = value


def create_optimizer(name: str, params, settings: Mapping[str, Any] | None = None) -> torch.optim.Optimizer:
    """A new optimizer ``name`` over ``params`` with ``settings`` (param-group keys).

    ``params`` is an iterable of tensors or of param-group dicts; a group may carry
    ``'lr_scale'`` (or any ``'<key>_scale'``) to get the regime value times that factor.
    Unknown keys raise ConfigError naming the key, the optimizer and the allowed keys; values
    torch rejects (negative lr, nesterov without momentum, ...) raise ConfigError too.
    """
    spec = optimizer_spec(name)
    if spec.unusable:
        raise ConfigError(f"optimizer {spec.name} {spec.unusable}; choose another (e.g. SGD, Adam)")
    settings = dict(settings or {})
    named = settings.pop("optimizer", None)
    if named is not None and optimizer_spec(named).name != spec.name:
        raise ConfigError(f"create_optimizer: settings name optimizer {named!r} but {spec.name} was asked for")
    check_settings(spec, settings)
    kwargs = {k: _coerce(v, spec.defaults.get(k)) for k, v in settings.items()}
    kwargs.update(spec.fixed)
    if isinstance(params, torch.Tensor):
        params = [params]
    params = list(params)
    for p in params:
        if isinstance(p, dict):
            for k in p:
                if k != "params" and k in spec.keys:
                    raise ConfigError(
                        f"a param group sets {k!r}; the regime sets it for every group, so give "
                        f"the group '{k}{SCALE_SUFFIX}' (a factor on the regime's value) instead"
                    )
    groups = params
    try:
        opt = spec.factory(groups, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optimizer {spec.name} rejects {settings}: {exc}") from None
    apply_group_settings(opt, kwargs, spec.defaults)
    setattr(opt, NAME_ATTR, spec.name)
    return opt


def optimizer_name_of(optimizer: torch.optim.Optimizer) -> str:
    """Canonical registry name of an optimizer instance.

    Uses the tag create_optimizer sets; for an optimizer built elsewhere, the registered name
    whose class matches and whose implied settings ('NAG': nesterov) match the first group.
    """
    tagged = getattr(optimizer, NAME_ATTR, None)
    if tagged:
        return tagged
    group = optimizer.param_groups[0] if optimizer.param_groups else optimizer.defaults
    best = None
    for spec in _REGISTRY.values():
        if type(optimizer) is not spec.factory:
            continue
        if all(group.get(k) == v for k, v in spec.fixed.items()):
            if best is None or len(spec.fixed) > len(best.fixed):
                best = spec
    return best.name if best is not None else type(optimizer).__name__
