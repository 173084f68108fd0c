"""basinlab: train CNN image classifiers and study the minima they find."""
from __future__ import annotations

__version__ = "0.1.0"


def train(config=None, *, callbacks=(), strategy=None, **options):
    """Train with the same options as `basinlab train` (keyword names = long flags with underscores).

    Returns a Run with `.path`, `.config`, `.history` (pandas DataFrame, one row per epoch) and `.model`.
    """
    from .config import TrainConfig, load_yaml, make_config
    from .engine.trainer import Trainer
    from .methods import build_method
    if isinstance(config, TrainConfig):
        cfg = config.replace(**options) if options else config
    else:
        base = load_yaml(config) if config is not None else {}
        cfg = make_config(base, **options)
    method_strategy, method_callbacks = build_method(cfg)
    trainer = Trainer(cfg, strategy=strategy or method_strategy, callbacks=[*method_callbacks, *callbacks])
    return trainer.fit()


def load_run(path):
    """Config, history DataFrame and checkpoint paths of a run folder."""
    from .runs import load_run as _load_run
    return _load_run(path)


__all__ = ["train", "load_run", "__version__"]
