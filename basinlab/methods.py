"""Which step strategy and callbacks a config asks for.

Each method module has `configure(cfg) -> (strategy or None, [callbacks])`; at most one module may
supply the step strategy (a module that composes with another, e.g. SmoothOut inside the parameter
server, does so in its own configure and says so in its errors).
"""
from __future__ import annotations

import importlib

from .config import TrainConfig
from .engine.steps import PlainStep
from .errors import ConfigError

METHOD_MODULES = (
    "basinlab.asgd.method",        # --server ssgd|asgd|msgd
    "basinlab.engine.flat",        # --smoothout, --ghost-batch, --sam, --asam
    "basinlab.analysis.monitor",   # --log-sharpness-every, --log-lowrank
)


def build_method(cfg: TrainConfig):
    """Return (step strategy, callbacks) for a run."""
    strategy, owner, callbacks = None, None, []
    for name in METHOD_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # method not built in this version
                continue
            raise
        found, more = module.configure(cfg)
        if found is not None:
            if strategy is not None:
                raise ConfigError(f"{owner} and {name.rsplit('.', 1)[-1]} options cannot be combined in one run")
            strategy, owner = found, name.rsplit(".", 1)[-1]
        callbacks.extend(more)
    return strategy or PlainStep(), callbacks
