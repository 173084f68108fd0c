"""The argument checks every layer shares: one line naming the option, what is allowed and what was given."""
from __future__ import annotations

import numbers

from basinlab.errors import ConfigError
from basinlab.utils.schema import finite_float, shown


def check_int(value, name: str, minimum: int = 1, *, maximum: int | None = None, optional: bool = False,
              error=ConfigError) -> int | None:
    """`value` as an int in [minimum, maximum] (booleans refused; None passes when `optional`), else `error`.

    `maximum` bounds sizes that would exhaust memory before anything is allocated (depths, widths).
    """
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) >= minimum
    if not ok or (maximum is not None and int(value) > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise error(f"{name} must be an integer {bound}, got {shown(value)}")
    return int(value)


def check_number(value, name: str, *, allow_zero: bool = False, error=ConfigError) -> float:
    """`value` as a finite float > 0 (>= 0 with `allow_zero`; booleans refused), else `error`."""
    number = finite_float(value)
    if number is None or number < 0 or (number == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise error(f"{name} must be a {kind} finite number, got {shown(value)}")
    return number
