"""Named presets: the seeds' experiments as option sets. Options given with a preset override it.

Each method keeps its presets next to its code; this is the one list of them.
"""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.asgd import presets as asgd_presets
from basinlab.methods.flat import presets as flat_presets
from basinlab.nn import presets as online_norm_presets

PRESET_TABLES = (online_norm_presets.PRESETS, asgd_presets.PRESETS, flat_presets.PRESETS)


def all_presets() -> dict[str, dict]:
    presets: dict[str, dict] = {}
    for table in PRESET_TABLES:
        presets.update(table)
    return presets


def get_preset(name: str) -> dict:
    presets = all_presets()
    if name not in presets:
        raise ConfigError(f"unknown preset {name!r}; allowed: {', '.join(sorted(presets)) or '(none)'}")
    return {k: v for k, v in presets[name].items() if not k.startswith("_")}
