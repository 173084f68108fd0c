"""The argument checks every layer shares: one line naming the option, what is allowed and what was given."""
from __future__ import annotations

import math
import numbers

from basinlab.errors import ConfigError


def check_int(value, name: str, minimum: int = 1, *, optional: bool = False, error=ConfigError) -> int | None:
    """`value` as an int >= `minimum` (booleans refused; None passes when `optional`), else `error`."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(value, name: str, *, allow_zero: bool = False, error=ConfigError) -> float:
    """`value` as a finite float > 0 (>= 0 with `allow_zero`; booleans refused), else `error`."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if not ok or float(value) < 0 or (float(value) == 0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise error(f"{name} must be a {kind} finite number, got {value!r}")
    return float(value)
