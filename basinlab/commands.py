"""Subcommands of the methods, each registered by its own module's `add_commands(subparsers)`."""
from __future__ import annotations

import importlib

COMMAND_MODULES = (
    "basinlab.asgd.cli",           # basinlab stability
    "basinlab.analysis.cli",       # basinlab sharpness, basinlab landscape
    "basinlab.tuning.cli",         # basinlab lr-range, basinlab autohyper
)


def add_method_commands(sub) -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
