"""`configure(cfg, world_size, workflow)` for --gsam (GSAM)."""
from __future__ import annotations

from basinlab.errors import ConfigError

METHOD_NAME = "--gsam (GSAM)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.gsam is None:
        return None, []
    raise ConfigError("--gsam (GSAM) is not built yet")
