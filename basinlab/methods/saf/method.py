"""`configure(cfg, world_size, workflow)` for --saf/--mesa (SAF/MESA)."""
from __future__ import annotations

from basinlab.errors import ConfigError

METHOD_NAME = "--saf/--mesa (SAF/MESA)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if not cfg.saf and not cfg.mesa:
        return None, []
    raise ConfigError("--saf/--mesa (SAF/MESA) is not built yet")
