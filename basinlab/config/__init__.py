"""The one configuration schema shared by the command line, YAML files and the Python API.

Every option is a field of `TrainConfig`, declared in one statement (`opt`): its default, help and flags,
what it accepts (type, range, choices: the words come from basinlab.choices), its help group, what it
means when unset, the method that owns it, the options it needs or cannot be combined with, its value for
runs stored before it existed, and whether a resume may change it. Every table below is derived from
those statements. YAML keys are the long flag names (`batch-size` or `batch_size`); flags given on the
command line override the file; the resolved config written to a run folder reproduces the run when fed back.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

from basinlab.config.options import (
    FIELDS,
    GROUP_TITLES,
    LEGACY_DEFAULTS,
    OPTION_GROUPS,
    RENAMED,
    RESUMABLE,
    RULES,
    WHEN_UNSET,
    TrainConfig,
    field_kind,
    flag,
)
from basinlab.errors import ConfigError
from basinlab.utils.checks import check_number
from basinlab.utils.schema import MAX_TEXT, check_value, shown

__all__ = ["TrainConfig", "FIELDS", "RULES", "OPTION_GROUPS", "GROUP_TITLES", "WHEN_UNSET", "RESUMABLE",
           "LEGACY_DEFAULTS", "RENAMED", "field_kind", "flag", "is_given", "check_relations", "validate",
           "validated_config", "stored_values", "from_mapping", "read_yaml_mapping", "load_yaml", "normalise_key",
           "parse_literal_dict", "config_to_yaml", "note_renamed"]


def parse_literal_dict(text: str | dict | None, what: str = "--model-config") -> dict:
    """Parse a Python literal dict like "{'depth': 20}" safely (ast.literal_eval, never eval)."""
    if text is None or text == "":
        return {}
    if isinstance(text, dict):
        return _string_keys(dict(text), what)
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        raise ConfigError(f"{what} must be a Python literal dict such as \"{{'depth': 20}}\"; got {shown(text)}")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ConfigError(f"{what} must be a Python literal dict such as \"{{'depth': 20}}\" "
                          f"(literals only: no names, calls or expressions); got {text!r}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a dict literal such as \"{{'depth': 20}}\"; got {type(value).__name__}")
    return _string_keys(value, what)


def _string_keys(value: dict, what: str) -> dict:
    bad = [k for k in value if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"{what} keys must be option names (strings), got {shown(bad[0])}")
    return value


def is_given(cfg, name: str) -> bool:
    """Whether option `name` of `cfg` differs from its default (was asked for)."""
    return getattr(cfg, name) != FIELDS[name].default


def _shown_with_value(name: str) -> str:
    """--ghost-batch M, --server ssgd|asgd|msgd, --smoothout A: how an option is given."""
    if FIELDS[name].default is not None:
        return flag(name)
    spec = FIELDS[name].metadata["argparse"]
    return f"{flag(name)} {spec.get('metavar') or '|'.join(spec.get('choices', ())) or 'VALUE'}"


def check_relations(cfg) -> None:
    """The options each option needs or conflicts with (its `needs` and `conflicts`), one line for the first
    one broken: a detail without its main option would silently do nothing."""
    for name, f in FIELDS.items():
        if not is_given(cfg, name):
            continue
        needs = f.metadata["needs"]
        if needs and not any(is_given(cfg, main) for main in needs):
            mains = " or ".join(_shown_with_value(main) for main in needs)
            raise ConfigError(f"{flag(name)} needs {mains} (without it, it would do nothing); add it or drop "
                              f"{flag(name)}")
        for other, why in f.metadata["conflicts"].items():
            if is_given(cfg, other):
                raise ConfigError(f"{flag(name)} cannot be combined with {flag(other)}: {why}")


def stored_values(stored: dict) -> dict:
    """A stored config's values for today's fields: known keys kept (old spellings under their new names), new
    ones as the old code behaved, and a detail whose main option the run did not use at its default (older code
    accepted it, and it did nothing there: a stored run stays loadable whatever relations were added since)."""
    values = {RENAMED.get(k, k): v for k, v in stored.items() if RENAMED.get(k, k) in FIELDS}
    for key, (value, needs) in LEGACY_DEFAULTS.items():
        if not needs or any(values.get(main) is not None for main in needs):
            values.setdefault(key, value)
    for name, field in FIELDS.items():
        needs = field.metadata["needs"]
        if needs and name in values and not any(values.get(main, FIELDS[main].default) != FIELDS[main].default
                                                for main in needs):
            values[name] = field.default
    return values


def normalise_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


# Trust to import model code is the person's choice for one process, given only on the command line
# (--trust-model-code) or as basinlab.train(..., trust_model_code=True): never a field, never stored. A file
# saying `false` grants nothing (run folders written before this rule hold that line) and is ignored.
TRUST_KEY = "trust_model_code"


def _refuse_granted_trust(key, value, where: str) -> None:
    if value is False or value is None:
        return
    raise ConfigError(f"'{key}' in {where} is refused: a file or a stored run cannot grant trust to import model "
                      f"code; remove the key and, if you trust the model it names, pass --trust-model-code on the "
                      f"command line or trust_model_code=True to basinlab.train()")


def note_renamed(spelling: str, where: str) -> None:
    """The one-line note an old spelling (config.RENAMED) gets: it keeps working."""
    new = RENAMED[normalise_key(spelling)]
    print(f"basinlab: note: {spelling} ({where}) is now {flag(new)}: the simulated workers' order, not an lr "
          f"schedule", file=sys.stderr)


def from_mapping(values: dict, where: str = "config") -> dict:
    """Validate keys of a mapping (YAML file or keyword arguments) and return field-name keys."""
    out = {}
    for key, value in values.items():
        name = normalise_key(str(key))
        if name == TRUST_KEY:
            _refuse_granted_trust(key, value, where)
            continue
        if name in RENAMED:
            if value != FIELDS[RENAMED[name]].default:  # a stored default needs no note
                note_renamed(str(key), where)
            name = RENAMED[name]
        if name not in FIELDS:
            close = [n.replace("_", "-") for n in FIELDS if name[:3] in n]
            hint = f" (did you mean: {', '.join(close[:4])}?)" if close else ""
            raise ConfigError(f"unknown option '{key}' in {where}{hint}; see `basinlab train --help` for the "
                              f"allowed options")
        out[name] = value
    return out


MAX_YAML_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse what could exhaust memory


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict:
    """A YAML file holding a mapping, read with yaml.safe_load (no tags that run code); {} if empty."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    if path.stat().st_size > MAX_YAML_BYTES:
        raise ConfigError(f"{what} {path} has {path.stat().st_size:,} bytes; a config holds at most "
                          f"{MAX_YAML_BYTES:,}")
    try:
        text = path.read_text()
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text)):
            raise ConfigError(f"{what} {path} uses YAML aliases (*name); write the values out instead")
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"malformed YAML in {path}{at}: {getattr(exc, 'problem', exc)}") from None
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # ValueError: an integer literal of over 4300 digits; RecursionError: nesting thousands deep
        raise ConfigError(f"unreadable {what} {path}: {type(exc).__name__}: {shown(str(exc), 120)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of option names to values, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path) -> dict:
    """Read a `basinlab train` YAML config into field-name keys (unknown options refused)."""
    return from_mapping(read_yaml_mapping(path), where=str(path))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check every option against its rule (type, range, choices); normalise model_config to a dict.

    The one check of option values, whatever they came from: command line, YAML, Python, a checkpoint.
    Checks that depend on the model, data or method are theirs (at setup, in each method's configure).
    """
    for name, rule in RULES.items():
        setattr(cfg, name, check_value(flag(name), rule, getattr(cfg, name)))
    cfg.model_config = parse_literal_dict(cfg.model_config)
    reserved = sorted(set(cfg.model_config) & {"num_classes", "dataset"})
    if reserved:
        raise ConfigError(f"--model-config sets {reserved[0]!r}, which comes from the data (the dataset's classes, "
                          f"--dataset); remove it from the model config and choose the dataset with --dataset")
    if cfg.grad_clip is not None:
        check_number(cfg.grad_clip, "--grad-clip")
    check_relations(cfg)
    return cfg


def validated_config(values: dict) -> TrainConfig:
    """A TrainConfig from field-name values, checked by `validate` (presets and resume are the API's:
    basinlab.api.make_config)."""
    return validate(TrainConfig(**values))


def config_to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML with long-flag keys; feeding it back with --config reproduces the run."""
    data = {k.replace("_", "-"): v for k, v in cfg.to_dict().items() if k not in ("resume", "overwrite")}
    return yaml.safe_dump(data, sort_keys=False)
