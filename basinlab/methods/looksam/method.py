"""`configure(cfg, world_size, workflow)` for --looksam (LookSAM)."""
from __future__ import annotations

from basinlab.errors import ConfigError

METHOD_NAME = "--looksam (LookSAM)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.looksam is None:
        return None, []
    raise ConfigError("--looksam (LookSAM) is not built yet")
