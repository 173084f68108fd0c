"""Which step strategy and callbacks a config asks for.

Each method module has `configure(cfg) -> (strategy or None, [callbacks])`; at most one module may
supply the step strategy (a module that composes with another, e.g. SmoothOut inside the parameter
server, does so in its own configure and says so in its errors).
"""
from __future__ import annotations

from .config import TrainConfig
from .engine.steps import PlainStep
from .errors import ConfigError
from .plugins import import_plugins

METHOD_MODULES = (
    "basinlab.asgd.method",        # --server ssgd|asgd|msgd
    "basinlab.engine.flat",        # --smoothout, --ghost-batch, --sam, --asam
    "basinlab.analysis.monitor",   # --log-sharpness-every
    "basinlab.tuning.method",      # --log-lowrank, AdaS epoch updates
)


def build_method(cfg: TrainConfig):
    """Return (step strategy, callbacks) for a run."""
    strategy, owner, callbacks = None, None, []
    for module in import_plugins(METHOD_MODULES):
        found, more = module.configure(cfg)
        name = getattr(module, "METHOD_NAME", module.__name__)  # e.g. "--server (asynchronous SGD)"
        if found is not None:
            if strategy is not None:
                raise ConfigError(f"{owner} and {name} options cannot be combined in one run")
            strategy, owner = found, name
        callbacks.extend(more)
    return strategy or PlainStep(), callbacks
