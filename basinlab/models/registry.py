"""Model registry: names -> factories ``f(num_classes, dataset, **config) -> nn.Module``.

A model name is either a registered name or alias (``resnet20``, ``wrn``), or the user's own
factory without editing the package:

* ``path/to/file.py:factory``  loaded from the file (importlib.util.spec_from_file_location)
* ``package.module:factory``   imported from sys.path
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable

from torch import nn

from basinlab.errors import BasinlabError, ConfigError
from basinlab.utils.dependencies import what_to_install

__all__ = ["register_model", "list_models", "create_model", "get_model_factory", "is_model_name", "is_user_model",
           "absolute_model_spec", "trust_model_code", "trusting_model_code", "trusts_all_model_code"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_ALIASES: dict[str, str] = {}
_USER_FILES: dict[tuple[str, float], object] = {}
# User model specs this process may import: the user named them (command line, Python call) or said
# --trust-model-code. A spec read from a config file or a checkpoint alone is never imported.
_TRUSTED: set[str] = set()
_TRUST_ALL = [False]


def register_model(name: str | None = None, *, aliases=()):
    """Decorator registering a factory under ``name`` (default: its function name) and aliases."""

    def decorator(factory):
        canonical = (name or factory.__name__).lower()
        for key in (canonical, *[a.lower() for a in aliases]):
            if key in _MODELS or key in _ALIASES:
                raise ValueError(f"model name {key!r} is already registered")
        _MODELS[canonical] = factory
        for alias in aliases:
            _ALIASES[alias.lower()] = canonical
        return factory

    return decorator


def list_models(include_aliases: bool = False) -> list[str]:
    """Sorted registered names (and their aliases when asked)."""
    names = set(_MODELS)
    if include_aliases:
        names |= set(_ALIASES)
    return sorted(names)


def is_model_name(name: str) -> bool:
    """True for a registered name or alias (user ``file:factory`` specs are not checked here)."""
    return isinstance(name, str) and (name.lower() in _MODELS or name.lower() in _ALIASES)


def is_user_model(name) -> bool:
    """True for a ``target:factory`` spec (code to import), False for a registered name or alias."""
    if not isinstance(name, str) or ":" not in name:
        return False
    key = name.strip().lower()
    return _ALIASES.get(key, key) not in _MODELS


def absolute_model_spec(name: str) -> str:
    """``path/to/file.py:factory`` with the path made absolute (so a stored config works from any folder)."""
    if not is_user_model(name):
        return name
    target, _, attr = name.strip().rpartition(":")
    if _looks_like_file(target):
        return f"{os.path.abspath(os.path.expanduser(target))}:{attr}"
    return name.strip()


def trust_model_code(name: str | None = None) -> None:
    """Let this process import the user model ``name``, or any (None: the user's --trust-model-code).

    Call it only for what the user named or trusted, never for a name read from a file.
    """
    if name is None:
        _TRUST_ALL[0] = True
    elif is_user_model(name):
        _TRUSTED.add(name.strip())


def trusts_all_model_code() -> bool:
    """Whether this process was given --trust-model-code (a sweep passes it on to the runs it starts)."""
    return _TRUST_ALL[0]


@contextlib.contextmanager
def trusting_model_code(trust: bool = True):
    """Within the block, any user model may be imported (the user's --trust-model-code for one command)."""
    before = _TRUST_ALL[0]
    _TRUST_ALL[0] = before or trust
    try:
        yield
    finally:
        _TRUST_ALL[0] = before


def check_import_allowed(name: str) -> None:
    """Refuse a user model spec this process was not told to import (named by a file, not by the person)."""
    spec = name.strip()
    if spec not in _TRUSTED and not _TRUST_ALL[0]:
        target = spec.rpartition(":")[0]
        raise ConfigError(f"model {spec!r} names code to import ({target}) and came from a config file or "
                          f"checkpoint; basinlab imports model code only when you name it: pass --model {spec} "
                          f"(model=... in Python) or --trust-model-code")


def get_model_factory(name: str) -> tuple[str, Callable[..., nn.Module]]:
    """(canonical name, factory) for a registered name, an alias or a user ``target:factory``."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model name must be a non-empty string, got {name!r}")
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in _MODELS:
        return key, _MODELS[key]
    if ":" in name:
        check_import_allowed(name)
        return name, _load_user_factory(name.strip())
    if _looks_like_file(name.strip()):
        raise ConfigError(_file_without_factory(name.strip()))
    raise ConfigError(f"unknown model {name!r}; available: {', '.join(list_models())} "
                      f"(or your own as 'path/to/file.py:factory' or 'package.module:factory')")


def create_model(name: str, num_classes: int, dataset: str, **config) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes of ``dataset`` with its ``config`` keys.

    The engine strips regime keys (``regime``, ``regime_*``, ``data_regime``) before calling.
    Unknown config keys raise ConfigError naming the model's allowed keys.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(dataset, str) or not dataset:
        raise ConfigError(f"dataset must be a non-empty name, got {dataset!r}")
    label, factory = get_model_factory(name)
    model = _call_factory(label, factory, num_classes, dataset, config)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {label!r} returned {type(model).__name__}, not a torch.nn.Module")
    if not getattr(model, "description", None):
        # Lazy modules (nn.LazyLinear) have no size until their first forward.
        params = sum(p.numel() for p in model.parameters() if not nn.parameter.is_lazy(p))
        lazy = " + lazy layers" if any(nn.parameter.is_lazy(p) for p in model.parameters()) else ""
        model.description = f"{label} ({type(model).__name__}), {params / 1e6:.2f}M params{lazy}"
    return model


def _signature(factory) -> tuple[bool, list[str], bool]:
    """(takes num_classes and dataset positionally, config keys it names, takes **kwargs).

    Factories in the convNet style, ``def model(**kwargs)``, get both as keywords instead.
    """
    params = list(inspect.signature(factory).parameters.values())
    open_ended = any(p.kind is p.VAR_KEYWORD for p in params)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    by_position = len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in params)
    consumed = positional[:2] if by_position else []
    keys = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p not in consumed and p.name not in ("num_classes", "dataset")]
    return by_position, keys, open_ended


def check_config_keys(name: str, config: dict) -> None:
    """create_model's unknown-key error, without building anything (a sweep checks every run this way first).
    Only registered models: a user's model file is never imported for a check (only whether it may be)."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower()) if isinstance(name, str) else None
    if key in _MODELS:
        _check_keys(key, _MODELS[key], config)
    elif is_user_model(name):
        check_import_allowed(name)  # refused before any run starts, as each run would refuse it


def _check_keys(label: str, factory, config: dict) -> None:
    _, keys, open_ended = _signature(factory)
    if not open_ended:
        for key in config:
            if key not in keys:
                allowed = ", ".join(keys) or "none"
                raise ConfigError(f"unknown config key {key!r} for model {label!r}; allowed: {allowed}")


def _call_factory(label: str, factory, num_classes: int, dataset: str, config: dict) -> nn.Module:
    by_position, _, open_ended = _signature(factory)
    _check_keys(label, factory, config)
    if by_position:
        args, given = (num_classes, dataset), {}
    else:
        named = inspect.signature(factory).parameters
        args = ()
        given = {k: v for k, v in (("num_classes", num_classes), ("dataset", dataset)) if open_ended or k in named}
    if not _is_users_code(label, factory):  # basinlab's own models: an exception there is basinlab's bug
        return factory(*args, **given, **config)
    try:
        return factory(*args, **given, **config)
    except BasinlabError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's code: one line naming it and how it was called
        raise ConfigError(_factory_failed(label, factory, exc, args, given, config)) from exc


def _is_users_code(label: str, factory) -> bool:
    """A file:factory or module:factory spec, or a factory the user registered (basinlab.extend.register_model)."""
    return is_user_model(label) or not (getattr(factory, "__module__", None) or "").startswith("basinlab")


def _factory_failed(label: str, factory, exc: Exception, args: tuple, given: dict, config: dict) -> str:
    """One line on a user factory that raised: its file and name, where, the call it got and what it may get."""
    target, _, attr = label.rpartition(":")
    if isinstance(exc, ImportError):
        return f"model {label}: {missing_dependency(exc, near=target or None)}"
    try:
        source = inspect.getsourcefile(factory)
    except TypeError:  # a builtin
        source = None
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == source]
    at = f" (line {frames[-1].lineno} of {os.path.basename(frames[-1].filename)})" if frames else ""
    where = "" if target or not source else f" (from {source})"
    shown_args = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in given.items()] + [f"{k}=..." for k in config]
    message = " ".join(str(exc).split())[:160]
    advice = "take the ones it does not use with **kwargs" if isinstance(exc, TypeError) else "fix the model code"
    return (f"model {label}{where}: building it raised {type(exc).__name__}: {message}{at}; basinlab called "
            f"{attr}({', '.join(shown_args)}): a factory gets num_classes and dataset (by keyword, or as the first "
            f"two positional parameters) plus the model config's keys ({', '.join(config) or 'none given'}); "
            f"{advice}")


# import name -> pip package, where they differ; and the packages a basinlab extra installs (pyproject.toml)
def missing_dependency(exc: ImportError, near: str | None = None) -> str:
    """utils.dependencies.what_to_install, with the user's model file's folder (`near`) looked at too."""
    folder = os.path.dirname(os.path.abspath(os.path.expanduser(near))) if near and _looks_like_file(near) else None
    return what_to_install(exc, folder)


def _load_user_factory(spec: str):
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise ConfigError(f"bad model {spec!r}: expected 'path/to/file.py:factory' or 'package.module:factory'")
    module = _load_file(target) if _looks_like_file(target) else _import(target)
    factory = getattr(module, attr, None)
    if not callable(factory):
        found = ""
        if _looks_like_file(target):
            names = _top_level_callables(os.path.abspath(os.path.expanduser(target)))
            found = f" (it defines: {', '.join(names)})" if names else " (it defines no function or class)"
        raise ConfigError(f"bad model {spec!r}: {target!r} has no callable {attr!r}{found}")
    return factory


def _top_level_callables(path: str) -> list[str]:
    """The names of the file's top-level functions and classes, read with ast (nothing is executed)."""
    with open(path, "rb") as handle:
        tree = ast.parse(handle.read(), filename=path)
    names = [node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    return [n for n in names if not n.startswith("_")] or names


def _file_without_factory(name: str) -> str:
    """The error for `--model file.py` (no `:factory`): the callables the file defines, or why there are none."""
    path = os.path.abspath(os.path.expanduser(name))
    if not os.path.isfile(path):
        return (f"model file {name!r} does not exist ({path}); a model is a registered name (`basinlab list`) "
                f"or your own as 'path/to/file.py:factory'")
    try:
        names = _top_level_callables(path)
    except SyntaxError as exc:
        return f"model file {name!r} does not parse (line {exc.lineno}: {exc.msg}); fix it, then pass {name}:FACTORY"
    except (OSError, ValueError) as exc:
        return f"model file {name!r} cannot be read: {getattr(exc, 'strerror', None) or exc}"
    if not names:
        return (f"model file {name!r} defines no function or class at its top level; a model is "
                f"'{name}:factory' with factory(num_classes, dataset, **model_config) returning an nn.Module")
    shown_names = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return (f"model {name!r} names a file but not the factory to call in it: use {name}:NAME, with NAME one of "
            f"{shown_names} (its top-level functions and classes)")


def _looks_like_file(target: str) -> bool:
    return target.endswith(".py") or "/" in target or os.sep in target


def _import(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if isinstance(exc, ModuleNotFoundError) and missing and module_name.split(".")[0] == missing:
            raise ConfigError(f"cannot import model module {module_name!r}: no module {exc.name!r} on the import "
                              f"path (the current folder and PYTHONPATH); for a file give "
                              f"'path/to/file.py:factory'") from exc
        raise ConfigError(f"cannot import model module {module_name!r}: {missing_dependency(exc)}") from exc


def _load_file(path: str):
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(path):
        raise ConfigError(f"model file {path!r} does not exist")
    cache_key = (path, os.path.getmtime(path))
    if cache_key in _USER_FILES:  # load a file once, so its classes stay the same objects
        return _USER_FILES[cache_key]
    digest = hashlib.sha1(path.encode()).hexdigest()[:10]
    module_name = f"basinlab_user_model_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(module_name, None)
        if isinstance(exc, ImportError):
            raise ConfigError(f"cannot load model file {path!r}: {missing_dependency(exc, near=path)}") from exc
        raise ConfigError(f"cannot load model file {path!r}: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:200]}") from exc
    _USER_FILES[cache_key] = module
    return module
