"""Checking an option value against its declared rule: type, range, choices, in one line.

A `Rule` is declared next to each option (basinlab.config.opt); `check_value` applies it to a value from
anywhere (command line, YAML, Python call, the config stored in a checkpoint) and raises ConfigError
naming the option, what is allowed and what was given.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from basinlab.errors import ConfigError

MAX_TEXT = 4096      # characters of a string option (paths, names)
MAX_LIST = 10_000    # items of a list option


def finite_float(value) -> float | None:
    """`value` as a finite float; None for what is no real number (booleans too), NaN, the infinities and the
    integers and fractions beyond the float range (where float() raises OverflowError)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return number if math.isfinite(number) else None


def shown(value, limit: int = 80) -> str:
    """repr(value), shortened; safe for integers too long for repr (Python refuses > 4300 digits)."""
    try:
        text = repr(value)
    except ValueError:
        if not isinstance(value, int):
            return f"<a {type(value).__name__}>"
        return f"<an integer of about {int(value.bit_length() * 0.30103) + 1} digits>"
    except RecursionError:
        return f"<a {type(value).__name__} nested too deep to show>"
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str) else len(text)  # a string's own length, not its repr's
    return text[: limit - 20] + f"...<{length} characters>"


@dataclass(frozen=True)
class Rule:
    """What an option accepts: `kind` (bool, int, float, str, list, dict), optional None, a range, choices."""

    kind: type
    optional: bool = False
    low: float | None = None
    high: float | None = None
    high_open: bool = False  # [low, high) instead of [low, high]
    choices: tuple = ()
    item_low: int | None = None  # lists: the lowest item (lists hold integers)

    def allowed(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(map(str, self.choices))
        elif self.kind is bool:
            text = "true or false"
        elif self.kind in (int, float):
            noun = "an integer" if self.kind is int else "a finite number"
            text = noun + self._range()
        elif self.kind is list:
            text = f"a list of integers >= {self.item_low}" if self.item_low is not None else "a list of integers"
        else:
            text = {str: "a string", dict: "a mapping"}.get(self.kind, self.kind.__name__)
        return text + (" (or left unset)" if self.optional else "")

    def _range(self) -> str:
        if self.low is not None and self.high is not None:
            return f" in [{_num(self.low)}, {_num(self.high)}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f" >= {_num(self.low)}"
        if self.high is not None:
            return f" <= {_num(self.high)}"
        return ""


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_value(flag: str, rule: Rule, value):
    """`value` if it satisfies `rule` (ints and floats normalised to int/float), else ConfigError."""
    if value is None and rule.optional:
        return None
    ok, value = _conforms(rule, value)
    if not ok:
        raise ConfigError(f"{flag} must be {rule.allowed()}, got {shown(value)}")
    return value


def check_text(flag: str, rule: Rule, text: str):
    """A command-line word for an int or float option, converted and checked against `rule`; the ConfigError
    names the word as typed (shortened), not what float() made of it ('1e999' and 10**400 become inf)."""
    if rule.kind not in (int, float):
        raise TypeError(f"check_text reads int and float options, not {rule.kind.__name__}")
    try:
        value = rule.kind(text)
    except (ValueError, OverflowError):  # int('1.5'), an integer of over 4300 digits
        ok = False
    else:
        ok, value = _conforms(rule, value)
    if not ok:
        raise ConfigError(f"{flag + ' ' if flag else ''}must be {rule.allowed()}, got {shown(text)}")
    return value


def _conforms(rule: Rule, value):
    kind = rule.kind
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        return ok and _in_range(rule, value), (int(value) if ok else value)
    if kind is float:
        number = finite_float(value)
        return number is not None and _in_range(rule, number), (value if number is None else number)
    if kind is str:
        ok = isinstance(value, str) and 0 < len(value) <= MAX_TEXT and "\x00" not in value
        return ok and (not rule.choices or value in rule.choices), value
    if kind is list:
        ok = isinstance(value, (list, tuple)) and len(value) <= MAX_LIST and all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool)
            and (rule.item_low is None or v >= rule.item_low) for v in value)
        return ok, ([int(v) for v in value] if ok else value)
    return isinstance(value, kind), value


def _in_range(rule: Rule, value) -> bool:
    if rule.low is not None and value < rule.low:
        return False
    if rule.high is not None and (value >= rule.high if rule.high_open else value > rule.high):
        return False
    return True
