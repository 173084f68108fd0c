"""Subcommands of the methods, each registered by its own module's `add_commands(subparsers)`."""
from __future__ import annotations

from .plugins import import_plugins

COMMAND_MODULES = (
    "basinlab.asgd.cli",           # basinlab stability
    "basinlab.analysis.cli",       # basinlab sharpness, basinlab landscape
    "basinlab.tuning.cli",         # basinlab lr-range, basinlab autohyper
)


def add_method_commands(sub) -> None:
    for module in import_plugins(COMMAND_MODULES):
        module.add_commands(sub)
