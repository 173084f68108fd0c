"""`configure(cfg, world_size, workflow)` for --msam (Momentum-SAM)."""
from __future__ import annotations

from basinlab.errors import ConfigError

METHOD_NAME = "--msam (Momentum-SAM)"


def configure(cfg, world_size: int = 1, workflow: str = "train"):
    if cfg.msam is None:
        return None, []
    raise ConfigError("--msam (Momentum-SAM) is not built yet")
