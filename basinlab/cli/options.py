"""The command line's shared pieces: an argparse that answers in one line, and the train options in groups."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from pathlib import Path

from basinlab.config import FIELDS, OPTION_GROUPS, RENAMED, RULES, WHEN_UNSET, TrainConfig, load_yaml, note_renamed
from basinlab.errors import ConfigError
from basinlab.utils.schema import Rule, check_text, check_value, shown

# The seeds' flags that basinlab spells differently: answered with the basinlab equivalent.
SEED_FLAGS = {
    "--gpus": "use --device cuda:N for one GPU, or --nproc N for N processes",
    "--ss": "use --smoothout A (the SmoothOut noise strength)",
    "-e": "use `basinlab evaluate CHECKPOINT`",
    "--evaluate": "use `basinlab evaluate CHECKPOINT`",
    "--start-epoch": "use --resume RUN: the epoch to start from is in the run's checkpoint",
    "--pretrained": "basinlab trains from scratch; load trained weights with basinlab.load_run(RUN).model",
    "-mb": "use --ghost-batch M (the seed's mini-batch inside a large batch)",
    "--mini-batch-size": "use --ghost-batch M (the seed's mini-batch inside a large batch)",
    "--lr_bb_fix": "use --lr-scale-batch sqrt",
    "--mode": "use --norm-mode MODE",
}


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as our one-line errors (exit 2), with seed-flag equivalents and
    "did you mean" suggestions for unknown flags."""

    def error(self, message):
        # argparse quotes what was typed in full ("invalid choice: '<5,000 characters>'"): one line stays short
        message = re.sub(r"'([^']{80,})'", lambda found: shown(found.group(1)), message)
        raise ConfigError(f"{self.prog}: {message}")

    def parse_args(self, args=None, namespace=None):
        known, extras = self.parse_known_args(args, namespace)
        if extras:  # answered by the (sub)command whose options they were meant for
            parser = self._command_parser(known)
            raise ConfigError(f"{parser.prog}: {parser._unknown(extras)}")
        return known

    def _command_parser(self, namespace) -> ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None))
                if isinstance(chosen, ArgumentParser):
                    return chosen._command_parser(namespace)
        return self

    def _unknown(self, tokens: list[str]) -> str:
        flag = next((t.split("=", 1)[0] for t in tokens if t.startswith("-")), tokens[0] if tokens else "")
        if flag in SEED_FLAGS:
            return f"{flag} is the seeds' flag: {SEED_FLAGS[flag]}"
        known = [s for action in self._actions for s in action.option_strings]
        close = difflib.get_close_matches(flag.replace("_", "-"), known, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; see `{self.prog} --help`"
        return f"unrecognized argument {' '.join(tokens)[:80]}{hint}"


def _field_type(annotation):
    """The Python type argparse should convert a field's value to."""
    names = str(annotation)
    for candidate, kind in (("bool", bool), ("int", int), ("float", float), ("list", list)):
        if names.startswith(candidate) or names.startswith(f"{candidate} |"):
            return kind
    return str


def _help(name: str, field) -> str:
    text = field.metadata["help"]
    if "default" in text:
        return text
    if field.default is None:
        return f"{text} (default: {WHEN_UNSET[name]})" if name in WHEN_UNSET else text
    shown = ("on" if field.default else "off") if isinstance(field.default, bool) else field.default
    return f"{text} (default: {shown})"


def _checked_word(rule: Rule):
    """argparse type of an int or float option: the word checked by its rule, named as typed when refused
    (float() would turn '1e999' or a 401-digit integer into inf before any check saw it)."""
    def convert(text: str):
        try:
            return check_text("", rule, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = rule.kind.__name__
    return convert


def _add_field(parser, name: str, field) -> None:
    long_flag = "--" + name.replace("_", "-")
    flags = [long_flag, *field.metadata.get("flags", ())]
    extra = dict(field.metadata.get("argparse", {}))
    kind = _field_type(field.type)
    if kind is bool:
        extra["action"] = argparse.BooleanOptionalAction
    elif kind in (int, float):
        extra.setdefault("type", _checked_word(dataclasses.replace(RULES[name], optional=False)))
    elif kind is not list:
        extra.setdefault("type", kind)
    # defaults are suppressed so that only what the user typed is returned (it overrides files and presets)
    parser.add_argument(*flags, dest=name, default=argparse.SUPPRESS, help=_help(name, field), **extra)


class _Renamed(argparse.Action):
    """An old spelling of an option (config.RENAMED): stored under the new name, with a one-line note."""

    def __call__(self, parser, namespace, values, option_string=None):
        note_renamed(option_string, "on the command line")
        setattr(namespace, self.dest, values)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, shown in the groups of config.OPTION_GROUPS, and --trust-model-code."""
    for title, names in OPTION_GROUPS:
        group = parser.add_argument_group(title)
        for name in names:
            _add_field(group, name, FIELDS[name])
        if title == "general":  # not a config field: the person's word for this one command (cli.main)
            group.add_argument("--trust-model-code", action="store_true", default=argparse.SUPPRESS,
                               help="import the model code (file.py:factory or module:factory) that --config or the "
                                    "resumed checkpoint names; without it only code named by --model is imported. "
                                    "Never stored, and no file can set it")
    for old, new in RENAMED.items():  # old spellings: hidden, with a note (config.RENAMED)
        parser.add_argument("--" + old.replace("_", "-"), dest=new, action=_Renamed, default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS, **FIELDS[new].metadata["argparse"])


def train_options(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if k in FIELDS}


def build_train_config(args: argparse.Namespace) -> TrainConfig:
    """--config file, then the command line on top; on --resume, the checkpoint's config."""
    from basinlab.api import make_config
    given = train_options(args)
    if getattr(args, "data_dir", None) and "datasets_dir" not in given:  # the seeds' positional DIR
        given["datasets_dir"] = args.data_dir
    base = load_yaml(args.config) if getattr(args, "config", None) and not given.get("resume") else {}
    return make_config(base, **given)


def add_trust_option(parser) -> None:
    parser.add_argument("--trust-model-code", action="store_true",
                        help="import the model code (file.py:factory) that the checkpoint names; without it only "
                             "registered models are rebuilt")


# ---------------------------------------------------------------------------------------------- argument types
# Each returns a converter for add_argument(type=...): a bad value is one line naming the option, what is
# allowed and what was given (argparse adds the option's name).
def integer(low: int, high: int):
    rule = Rule(int, low=low, high=high)

    def convert(text: str) -> int:
        try:
            return check_value("", rule, int(text))
        except (ValueError, ConfigError):
            raise argparse.ArgumentTypeError(f"must be {rule.allowed()}, got {shown(text)}") from None
    convert.__name__ = "integer"
    return convert


def number(low: float | None = None, high: float | None = None, *, high_open: bool = False,
           above: float | None = None):
    """A finite float in [low, high] ([low, high) with high_open; or > above)."""
    rule = Rule(float, low=low, high=high, high_open=high_open)

    def convert(text: str) -> float:
        try:
            value = check_value("", rule, float(text))
            if above is not None and not value > above:
                raise ValueError
            return value
        except (ValueError, ConfigError):
            allowed = f"a finite number > {above:g}" if above is not None else rule.allowed()
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {shown(text)}") from None
    convert.__name__ = "number"
    return convert


SEED = integer(0, 2**63 - 1)
COUNT = integer(1, 2**31 - 1)
BATCH = integer(1, 2**20)


def output_file(text: str) -> Path:
    """A file to write: not a folder, in a folder that exists."""
    path = Path(text)
    try:
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder; give a file name")
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist")
    except OSError as exc:  # a name too long for the file system
        raise argparse.ArgumentTypeError(f"{shown(text)}: {exc.strerror}") from None
    return path


def output_folder(text: str) -> Path:
    """A folder to write into (made if missing): not an existing file."""
    path = Path(text)
    try:
        if path.exists() and not path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file; give a folder")
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{shown(text)}: {exc.strerror}") from None
    return path
