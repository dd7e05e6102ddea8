"""Range checks for configuration values, shared by every module that takes options.

One wording for every configuration error: ``name=value``, what is wrong, the allowed
range with its unit, then the next step. And one rule everywhere: a bool is not a number
(``True`` would pass as 1), a string or None is refused with ``ConfigError`` rather than a
``TypeError`` from a comparison, and NaN or an infinity never passes a bound. Hand-written
checks had drifted on each of these points.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import ConfigError

__all__ = ["count", "number"]


def number(
    name: str,
    value: object,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    above: bool = False,
    below: bool = False,
    unit: str = "",
    hint: str = "",
) -> float:
    """``value`` as a float if it is a finite real number (NumPy scalars included) within
    ``low``..``high``.

    Both bounds are inclusive unless ``above`` (strictly above ``low``) or ``below``
    (strictly below ``high``) says otherwise.
    """
    if type(value) is float:  # the usual case, spared the numeric ABC's isinstance
        as_float = value
    elif isinstance(value, bool) or not isinstance(value, Real):
        span = _span(low, high, low_open=above, high_open=below, unit=unit)
        raise _error(name, value, "is not a number", f"a finite number in {span}", hint)
    else:
        try:
            as_float = float(value)
        except OverflowError:  # an int too large for a float is outside any finite range
            as_float = math.inf
    inside_low = as_float > low if above else as_float >= low
    inside_high = as_float < high if below else as_float <= high
    if not (math.isfinite(as_float) and inside_low and inside_high):
        span = _span(low, high, low_open=above, high_open=below, unit=unit)
        raise _error(name, value, f"is outside {span}", "a finite number in that range", hint)
    return as_float


def count(
    name: str, value: object, *, low: int = 0, high: int | None = None, hint: str = ""
) -> int:
    """``value`` as an int if it is an integer (not a bool) within ``low``..``high``, both
    inclusive; NumPy integers pass like ``int``."""
    span = _span(low, math.inf if high is None else high, low_open=False, high_open=False)
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise _error(name, value, "is not an integer", f"an integer in {span}", hint)
    as_int = int(value)
    if as_int < low or (high is not None and as_int > high):
        raise _error(name, value, f"is outside {span}", "an integer in that range", hint)
    return as_int


def _span(low: float, high: float, *, low_open: bool, high_open: bool, unit: str = "") -> str:
    """Interval notation: ``[0, 10000] ms``, ``(0, inf) s``; an infinite end is open."""
    opening = "(" if low_open or math.isinf(low) else "["
    closing = ")" if high_open or math.isinf(high) else "]"
    interval = f"{opening}{_shown(low)}, {_shown(high)}{closing}"
    return f"{interval} {unit}" if unit else interval


def _shown(bound: float) -> str:
    """An int bound in full (``1000000``, not ``1e+06``), a float as short as it goes."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


def _error(name: str, value: object, fault: str, wanted: str, hint: str) -> ConfigError:
    message = f"{name}={value!r} {fault}; it must be {wanted}"
    return ConfigError(f"{message}; {hint}" if hint else message)
