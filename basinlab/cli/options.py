"""The command line's shared pieces: an argparse that answers in one line, and the train options in groups."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
import re
import sys
from pathlib import Path

from basinlab.cli.seed_flags import SAME, SEED_SCRIPTS, seed_flag
from basinlab.config import FIELDS, OPTION_GROUPS, RENAMED, RULES, WHEN_UNSET, TrainConfig, load_yaml, note_renamed
from basinlab.errors import ConfigError
from basinlab.utils.schema import Rule, check_text, check_value, shown

# Tokens that start with "-" but are values: negative numbers, ranges such as -0.3:0.02:0.31, -inf, -nan
_VALUE_LIKE = re.compile(r"^-(\d|\.\d|(inf|infinity|nan)$)", re.IGNORECASE)
_PYTHON = re.compile(r"^(.*/)?python[\d.]*$")
_HINTS_BUDGET = 520  # characters of flag hints on the one line; further flags are named and counted


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as our one-line errors (exit 2): every unknown flag of the command at
    once, each with its equivalent in that command (the seeds' flags: seed_flags.SEED_FLAGS) or "did you mean"
    suggestions. No abbreviations: `sharpness --dataset X` must not silently be `--datasets-dir X`."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        # argparse quotes what was typed in full ("invalid choice: '<5,000 characters>'"): one line stays short
        message = re.sub(r"'([^']{80,})'", lambda found: shown(found.group(1)), message)
        flags = [] if self._has_commands() else self._unknown_flags(getattr(self, "_given", ()))
        if flags:  # the unknown flags first: argparse may have tripped over their values
            raise ConfigError(f"{self._where()}{self._unknown_line(flags)}; also: {message}")
        raise ConfigError(f"{self._where()}{message}")

    def _where(self) -> str:
        """'train: ' for `basinlab train` (the line already starts with 'basinlab: error:'), '' at the top."""
        return self.prog.split(" ", 1)[1] + ": " if " " in self.prog else ""

    def parse_known_args(self, args=None, namespace=None):
        self._given = list(sys.argv[1:] if args is None else args)  # what this (sub)command was given
        return super().parse_known_args(self._given, namespace)

    def parse_args(self, args=None, namespace=None):
        args = list(sys.argv[1:] if args is None else args)
        pasted = self._pasted_seed_line(args)
        if pasted:
            raise ConfigError(pasted)
        known, extras = self.parse_known_args(args, namespace)
        parser = self._command_parser(known)  # the unknown flags are answered by the (sub)command they were for
        flags = parser._unknown_flags(getattr(parser, "_given", extras))
        if flags:
            raise ConfigError(f"{parser._where()}{parser._unknown_line(flags)}")
        if extras:
            raise ConfigError(f"{parser._where()}unrecognized argument{'s' if len(extras) > 1 else ''} "
                              f"{_short(' '.join(extras), 80)} (not a value of any option); see `{parser.prog} --help`")
        return known

    def _has_commands(self) -> bool:
        return any(isinstance(action, argparse._SubParsersAction) for action in self._actions)

    def _command_parser(self, namespace) -> ArgumentParser:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(namespace, action.dest, None))
                if isinstance(chosen, ArgumentParser):
                    return chosen._command_parser(namespace)
        return self

    def _subcommand(self, words: list[str]) -> ArgumentParser | None:
        parser = self
        for word in words:
            action = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
            parser = action.choices.get(word) if action else None
            if parser is None:
                return None
        return parser

    # ------------------------------------------------------------------------------------ unknown flags
    def _is_flag(self, token: str) -> bool:
        return token.startswith("-") and token != "-" and not _VALUE_LIKE.match(token)

    def _unknown_flags(self, tokens) -> list[str]:
        """The flags in `tokens` that this parser does not know, in order, once each; a seed flag's values
        are skipped (they may look like flags: --alpha -0.3:0.02:0.31)."""
        known = self._option_string_actions
        found, i = [], 0
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == "--":
                break
            if not self._is_flag(token):
                continue
            flag = token.split("=", 1)[0]
            if flag in known or (not token.startswith("--") and token[:2] in known):  # -b128: a known short flag
                continue
            if flag not in found:
                found.append(flag)
            row = seed_flag(flag)
            if row is not None and "=" not in token:
                i = self._skip_values(tokens, i, row.values)
        return found

    def _skip_values(self, tokens, i: int, values) -> int:
        def value(token):
            return not self._is_flag(token) or (not token.startswith("--") and token[:2] not in
                                                self._option_string_actions and seed_flag(token) is None)
        if values == "+":
            while i < len(tokens) and value(tokens[i]):
                i += 1
            return i
        for _ in range(values):
            if i < len(tokens) and value(tokens[i]):
                i += 1
        return i

    def _hint(self, flag: str, command: str) -> tuple[str, bool]:
        """(what to use instead of `flag` in this command, whether it is the seeds' flag)."""
        row = seed_flag(flag)
        if row is not None and row.text(command) != SAME:
            return row.text(command), True
        known = [s for action in self._actions for s in action.option_strings]
        close = difflib.get_close_matches(flag.replace("_", "-"), known, n=3, cutoff=0.6)
        return (f"did you mean {', '.join(close)}?" if close else "not an option here"), False

    def _unknown_line(self, flags: list[str]) -> str:
        command = self.prog.partition(" ")[2]  # "basinlab landscape directions" -> "landscape directions"
        hints = [(flag, *self._hint(flag, command)) for flag in flags]
        if len(hints) == 1:
            flag, text, seeds = hints[0]
            line = f"unrecognized argument: {flag} is the seeds' flag: {text}" if seeds else \
                f"unrecognized argument {_short(flag, 60)}: {text}"
        else:
            items, length = [], 0
            for flag, text, _ in hints:
                item = f"{_short(flag, 40)}: {text}"
                if items and length + len(item) > _HINTS_BUDGET:
                    break
                items.append(item)
                length += len(item) + 2
            line = f"unrecognized arguments ({len(flags)}): " + "; ".join(items)
            rest = flags[len(items):]
            if rest:
                line += f"; and {len(rest)} more: {_short(', '.join(rest), 100)}"
        if not all(seeds for _, _, seeds in hints):
            line += f" (every option: `{self.prog} --help`)"
        return line

    def _pasted_seed_line(self, args: list[str]) -> str | None:
        """A seed's command line pasted after `basinlab` (`python evaluate.py --ss 0.006 ...`): the basinlab
        command it became, and its flags' equivalents there."""
        i = 0
        while i < len(args) and _PYTHON.match(args[i]):
            i += 1
        module = i + 1 < len(args) and args[i] == "-m"
        if i >= len(args) or not (module or args[i].endswith(".py")):
            return None
        script = args[i + 1] if module else os.path.basename(args[i])
        if script not in SEED_SCRIPTS or (script == "autohyper") != module:
            return None
        command, seed, extra = SEED_SCRIPTS[script]
        rest = args[i + 2:] if module else args[i + 1:]
        if script == "autohyper" and rest[:1] == ["train"]:
            rest = rest[1:]
        parser = self._subcommand(command.split())
        if parser is None:  # not the whole command tree
            return None
        positionals = " ".join(_shown_positional(a) for a in parser._actions if not a.option_strings)
        typed = " ".join(args[:i + 2 if module else i + 1])
        line = (f"`{_short(typed, 60)}` is the {seed} seed's command; in basinlab it is "
                f"`{' '.join(filter(None, ('basinlab', command, positionals, extra)))}`")
        flags = parser._unknown_flags(rest)
        return f"{line}; {parser._unknown_line(flags)}" if flags else f"{line}, with the same flags"


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _shown_positional(action) -> str:
    name = action.metavar or action.dest.upper()
    return f"[{name}]" if action.nargs == "?" else name


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
