"""Reading run folders back: config, history and checkpoints."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .config import TrainConfig, load_yaml, validate
from .engine.run import Run
from .errors import ConfigError


def load_run(path: str | Path) -> Run:
    """The config, results.csv history and checkpoint paths of a run folder written by `basinlab train`."""
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"{path} is not a basinlab run folder (no config.yaml)")
    cfg = validate(TrainConfig(**load_yaml(path / "config.yaml")))
    results = path / "results.csv"
    history = pd.read_csv(results) if results.is_file() and results.stat().st_size else pd.DataFrame()
    return Run(path, cfg, history)
