"""Named presets: the seeds' experiments as option sets. Options given with a preset override it.

Each method keeps its presets next to its code (a PRESETS dict in the modules below).
"""
from __future__ import annotations

from .errors import ConfigError
from .plugins import import_plugins

PRESET_MODULES = ("basinlab.nn.presets", "basinlab.asgd.presets", "basinlab.engine.flat_presets")


def all_presets() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for module in import_plugins(PRESET_MODULES):
        presets.update(module.PRESETS)
    return presets


def get_preset(name: str) -> dict:
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(sorted(presets)) or '(none)'}")
    return {k: v for k, v in presets[name].items() if not k.startswith("_")}
