"""The methods a run can use, in one explicit list, and how a config picks its step strategy and callbacks.

Each entry's `configure(cfg, world_size)` returns `(step strategy or None, [callbacks])` and refuses,
with one line, the options it cannot honour (e.g. in a `world_size`-process job). At most one entry may
supply the step strategy; the engine itself knows none of these options.

    methods/asgd/      --server ssgd|asgd|msgd         simulated parameter server (step strategy)
    methods/flat/      --smoothout, --sam, --asam      flat-minima steps (step strategy)
    analysis/monitor   --log-sharpness-every           lambda_max during training (callback)
    tuning/method      --log-lowrank, AdaS             low-rank metrics, AdaS's epoch update (callback)

A new method adds its module to METHODS; see docs/extending.md.
"""
from __future__ import annotations

from basinlab.analysis import monitor as sharpness_monitor
from basinlab.config import TrainConfig
from basinlab.engine.steps import PlainStep
from basinlab.errors import ConfigError
from basinlab.methods.asgd import method as asgd
from basinlab.methods.flat import method as flat
from basinlab.tuning import method as lowrank_log

METHODS = (
    asgd,               # --server ssgd|asgd|msgd
    flat,               # --smoothout, --sam, --asam, --lr-scale-batch
    sharpness_monitor,  # --log-sharpness-every
    lowrank_log,        # --log-lowrank, AdaS epoch updates
)


def build_method(cfg: TrainConfig, world_size: int = 1):
    """Return (step strategy, callbacks) for a run of `world_size` processes."""
    strategy, owner, callbacks = None, None, []
    for module in METHODS:
        found, more = module.configure(cfg, world_size)
        if found is not None:
            if strategy is not None:
                raise ConfigError(f"{owner} and {module.METHOD_NAME} options cannot be combined in one run")
            strategy, owner = found, module.METHOD_NAME
        callbacks.extend(more)
    return strategy or PlainStep(cfg.ghost_batch), callbacks
