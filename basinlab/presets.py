"""Named presets: the seeds' experiments as option sets. Options given with a preset override it.

Each method keeps its presets next to its code (a PRESETS dict in the modules below).
"""
from __future__ import annotations

import importlib

from .errors import ConfigError

PRESET_MODULES = ("basinlab.nn.presets", "basinlab.asgd.presets", "basinlab.engine.flat_presets")


def all_presets() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for name in PRESET_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        presets.update(module.PRESETS)
    return presets


def get_preset(name: str) -> dict:
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(sorted(presets)) or '(none)'}")
    return {k: v for k, v in presets[name].items() if not k.startswith("_")}
