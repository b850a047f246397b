"""The checks every setting shares, each stated once: whole numbers, bounded numbers and names.

Each check returns the value it accepted or raises ConfigError with a message naming the setting, the value
given and what would have been accepted. ``whole`` and ``number`` wrap them as attrs validators that take the
setting's name from the field, for the value objects that group settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeGuard

import attrs

from hexq.core.errors import ConfigError

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool: ``True`` is an int to Python, never a count or a port to a user."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> TypeGuard[int | float]:
    """An int or a float, bools excluded (see ``is_int``)."""
    return is_int(value) or isinstance(value, float)


def _int_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an int from {minimum} to {maximum}"
    if minimum is not None:
        return f"an int >= {minimum}"
    if maximum is not None:
        return f"an int <= {maximum}"
    return "an int"


def _int_within(value: object, minimum: int | None, maximum: int | None) -> TypeGuard[int]:
    return (is_int(value) and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum))


def whole_number(value: object, what: str, minimum: int | None = 0, maximum: int | None = None) -> int:
    """``value`` if it is an int (not a bool) within ``minimum``..``maximum`` (None: unbounded)."""
    if not _int_within(value, minimum, maximum):
        raise ConfigError(f"{what} must be {_int_range(minimum, maximum)}, got {value!r}")
    return value


def optional_whole_number(value: object, what: str, minimum: int | None = 0,
                          maximum: int | None = None) -> int | None:
    """``whole_number`` where None means "not set"."""
    if value is None:
        return None
    if not _int_within(value, minimum, maximum):
        raise ConfigError(f"{what} must be {_int_range(minimum, maximum)} or None, got {value!r}")
    return value


def _number_range(low: float, high: float, above_low: bool, unit: str) -> str:
    # With an upper bound "finite" goes without saying.
    kind = f"{'a number' if math.isfinite(high) else 'a finite number'}{' of ' + unit if unit else ''}"
    bound = f"{'>' if above_low else '>='} {low:g}"
    return f"{kind} {bound}" + (f" and <= {high:g}" if math.isfinite(high) else "")


def number_between(value: object, what: str, low: float, high: float = math.inf, *, above_low: bool = False,
                   unit: str = "") -> float:
    """``value`` as a float if it is a finite int or float from ``low`` (excluded if ``above_low``) to ``high``.

    NaN fails every comparison, so it is refused along with the infinities."""
    if (not is_number(value) or not math.isfinite(value) or value > high
            or (value <= low if above_low else value < low)):
        raise ConfigError(f"{what} must be {_number_range(low, high, above_low, unit)}, got {value!r}")
    return float(value)


def whole(minimum: int | None = 0, maximum: int | None = None, *, optional: bool = False) -> Validator:
    """An attrs validator: ``whole_number`` (or ``optional_whole_number``) under the field's name."""
    check = optional_whole_number if optional else whole_number

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        check(value, attribute.name, minimum, maximum)

    return validate


def number(low: float, high: float = math.inf, *, above_low: bool = False, unit: str = "",
           optional: bool = False) -> Validator:
    """An attrs validator: ``number_between`` under the field's name; ``optional`` lets None through."""

    def validate(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not (optional and value is None):
            number_between(value, attribute.name, low, high, above_low=above_low, unit=unit)

    return validate


# Names become parts of Redis keys, CLI arguments and log lines: keep them printable and free of the
# characters that would be confusing in a key or a shell (':' separates key parts, '{}' are hash tags).
_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
PREFIX_MAX_LENGTH = 100


def check_name(value: object, what: str, max_length: int) -> str:
    """``value`` if it is 1 to ``max_length`` letters, digits, '_', '.' or '-'."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length or not _NAME.fullmatch(value):
        raise ConfigError(
            f"invalid {what} {value!r}: use 1-{max_length} characters from letters, digits, '_', '.', '-'"
        )
    return value


def check_prefix(value: object) -> str:
    """The app's key prefix: the Redis adapter puts it inside a ``{...}`` hash tag, so no braces or ':'."""
    return check_name(value, "prefix", PREFIX_MAX_LENGTH)
