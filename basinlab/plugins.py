"""Importing the modules that plug methods, commands and presets into the engine."""
from __future__ import annotations

import importlib
from types import ModuleType


def import_plugins(names) -> list[ModuleType]:
    """Import each module that exists; a module (or its package) that is absent is skipped.

    An ImportError raised *inside* an existing module still propagates: that is a real bug.
    """
    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue
            raise
    return modules
