"""Named presets: the seeds' experiments as option sets. Options given with a preset override it.

Each method keeps its presets next to its code; this is the one list of them.
"""
from __future__ import annotations

from basinlab.errors import ConfigError
from basinlab.methods.airbench import presets as airbench_presets
from basinlab.methods.asgd import presets as asgd_presets
from basinlab.methods.flat import presets as flat_presets
from basinlab.nn import presets as online_norm_presets

USER_PRESETS: dict[str, dict] = {}  # register_preset's: a fork's or a script's own
PRESET_TABLES = (online_norm_presets.PRESETS, asgd_presets.PRESETS, flat_presets.PRESETS, airbench_presets.PRESETS,
                 USER_PRESETS)


def register_preset(name: str, options: dict, about: str = "") -> None:
    """Make `name` a preset (`--preset NAME`, `preset=NAME`): `options` are `basinlab train` options (checked
    now), `about` the line `basinlab list` shows."""
    from basinlab.config import from_mapping, validated_config
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"a preset name is a non-empty string, got {name!r}")
    if name in all_presets():
        raise ConfigError(f"preset {name!r} exists already; choose another name")
    if not isinstance(options, dict):
        raise ConfigError(f"preset {name!r}: its options are a mapping of option names to values, got "
                          f"{type(options).__name__}")
    values = from_mapping(options, where=f"preset {name}")
    validated_config(dict(values))  # every value and relation checked now, not when the preset is used
    USER_PRESETS[name] = {"_about": about, **values}


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
