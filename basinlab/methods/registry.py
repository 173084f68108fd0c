"""The methods a run can use, in one explicit list, and how a config picks its step strategy and callbacks.

Each entry's `configure(cfg, world_size, workflow)` returns `(step strategy or None, [callbacks])` and
refuses, with one line, the options it cannot honour (in a `world_size`-process job, or in the LR range test).
At most one entry may supply the step strategy; the engine itself knows none of these options.

    methods/asgd/                --server ssgd|asgd|msgd   simulated parameter server (step strategy)
    methods/flat/                --smoothout, --sam, --asam  flat-minima steps (step strategy)
    methods/sharpness_monitor/   --log-sharpness-every     lambda_max during training (callback)
    methods/edge_of_stability/   --log-sharpness-every-steps  sharpness against its edge, live (callback)
    methods/lowrank/             --log-lowrank, AdaS       low-rank metrics, AdaS's epoch update (callback)
    methods/airbench/            --lookahead-every, --whiten-bias-epochs  airbench's tricks (callbacks)

A new method adds its module to METHODS; see docs/extending.md.
"""
from __future__ import annotations

from basinlab.config import TrainConfig
from basinlab.engine.steps import PlainStep
from basinlab.errors import ConfigError
from basinlab.methods.airbench import method as airbench
from basinlab.methods.asgd import method as asgd
from basinlab.methods.edge_of_stability import method as edge_of_stability
from basinlab.methods.flat import method as flat
from basinlab.methods.gsam import method as gsam
from basinlab.methods.looksam import method as looksam
from basinlab.methods.lowrank import method as lowrank_log
from basinlab.methods.msam import method as msam
from basinlab.methods.saf import method as saf
from basinlab.methods.sharpness_monitor import method as sharpness_monitor

METHODS = (
    asgd,               # --server ssgd|asgd|msgd
    flat,               # --smoothout, --sam, --asam, --lr-scale-batch
    gsam,               # --gsam
    msam,               # --msam
    looksam,            # --looksam
    saf,                # --saf, --mesa
    sharpness_monitor,  # --log-sharpness-every
    edge_of_stability,  # --log-sharpness-every-steps
    lowrank_log,        # --log-lowrank, AdaS epoch updates
    airbench,           # --lookahead-every, --whiten-bias-epochs
)


WORKFLOWS = ("train", "lr-range", "autohyper")  # the programs a run can serve (basinlab.api.build_run)


def build_method(cfg: TrainConfig, world_size: int = 1, workflow: str = "train"):
    """Return (step strategy, callbacks) for a run of `world_size` processes serving `workflow`.

    Each method does in the LR range test and autoHyper's trainings what it does in `basinlab train`, or
    refuses in one line saying why (its `configure(cfg, world_size, workflow)`)."""
    if workflow not in WORKFLOWS:
        raise ValueError(f"workflow must be one of {WORKFLOWS}, got {workflow!r}")
    strategy, owner, callbacks = None, None, []
    for module in METHODS:
        found, more = module.configure(cfg, world_size, workflow)
        if found is not None:
            if strategy is not None:
                raise ConfigError(f"{owner} and {module.METHOD_NAME} options cannot be combined in one run")
            strategy, owner = found, module.METHOD_NAME
        callbacks.extend(more)
    return strategy or PlainStep(cfg.ghost_batch), callbacks


def claim_rank(cfg: TrainConfig):
    """Under torchrun, what this rank runs for a method whose job is several kinds of process (--real: rank 0 the
    server, which then trains as one process, the others its workers); None for ordinary training."""
    from basinlab.methods.asgd.real.ranks import claim_rank as real_ranks
    return real_ranks(cfg)
