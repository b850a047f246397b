"""The shared setting checks: whole numbers, bounded numbers and names, each refusing bools and naming the
setting, the value and the accepted range."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest

from hexq.core.errors import ConfigError
from hexq.core.validation import (
    check_name,
    check_prefix,
    is_int,
    is_number,
    number,
    number_between,
    optional_whole_number,
    whole,
    whole_number,
)


@pytest.mark.parametrize(("value", "as_int", "as_number"), [
    (0, True, True), (-3, True, True), (2.5, False, True), (True, False, False), (False, False, False),
    ("1", False, False), (None, False, False), (math.nan, False, True),
], ids=repr)
def test_bools_are_neither_ints_nor_numbers(value: Any, as_int: bool, as_number: bool) -> None:
    assert (is_int(value), is_number(value)) == (as_int, as_number)


# -- whole numbers ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "minimum", "maximum"), [
    (0, 0, None), (5, 1, None), (65535, 1, 65535), (-7, None, None), (10**30, 0, None),
], ids=repr)
def test_whole_number_returns_what_it_accepts(value: int, minimum: int | None, maximum: int | None) -> None:
    assert whole_number(value, "n", minimum, maximum) == value


# (value, minimum, maximum, expected message)
BAD_WHOLE: list[tuple[Any, int | None, int | None, str]] = [
    (-1, 0, None, "n must be an int >= 0, got -1"),
    (True, 0, None, "n must be an int >= 0, got True"),
    (1.0, 0, None, "n must be an int >= 0, got 1.0"),
    ("3", 1, None, "n must be an int >= 1, got '3'"),
    (0, 1, 65535, "n must be an int from 1 to 65535, got 0"),
    (65536, 1, 65535, "n must be an int from 1 to 65535, got 65536"),
    (None, 0, None, "n must be an int >= 0, got None"),
    (False, None, None, "n must be an int, got False"),
    (11, None, 10, "n must be an int <= 10, got 11"),
]


@pytest.mark.parametrize(("value", "minimum", "maximum", "message"), BAD_WHOLE, ids=[repr(b[:3]) for b in BAD_WHOLE])
def test_whole_number_message_names_setting_value_and_range(value: Any, minimum: int | None, maximum: int | None,
                                                            message: str) -> None:
    with pytest.raises(ConfigError) as info:
        whole_number(value, "n", minimum, maximum)
    assert str(info.value) == message


def test_optional_whole_number_lets_none_through_and_says_so() -> None:
    assert optional_whole_number(None, "max_retries") is None
    assert optional_whole_number(3, "max_retries") == 3
    with pytest.raises(ConfigError, match=r"^max_retries must be an int >= 0 or None, got -1$"):
        optional_whole_number(-1, "max_retries")
    with pytest.raises(ConfigError, match="got True"):
        optional_whole_number(True, "max_retries")


# -- bounded numbers --------------------------------------------------------------------------------

def test_number_between_returns_a_float() -> None:
    value = number_between(98, "max_mem_percent", 0, 100, above_low=True)
    assert value == 98.0 and type(value) is float
    assert number_between(0, "backoff", 0) == 0.0
    assert number_between(100, "p", 0, 100) == 100.0


# (value, low, high, above_low, unit, expected message)
BAD_NUMBERS: list[tuple[Any, float, float, bool, str, str]] = [
    (0, 0, 100, True, "", "p must be a number > 0 and <= 100, got 0"),
    (100.5, 0, 100, True, "", "p must be a number > 0 and <= 100, got 100.5"),
    (math.nan, 0, 100, True, "", "p must be a number > 0 and <= 100, got nan"),
    (True, 0, 100, True, "", "p must be a number > 0 and <= 100, got True"),
    ("98", 0, 100, True, "", "p must be a number > 0 and <= 100, got '98'"),
    (-1.0, 0, math.inf, False, "seconds", "p must be a finite number of seconds >= 0, got -1.0"),
    (math.inf, 0, math.inf, False, "seconds", "p must be a finite number of seconds >= 0, got inf"),
    (0.5, 1, math.inf, False, "seconds", "p must be a finite number of seconds >= 1, got 0.5"),
    (None, 0, math.inf, True, "", "p must be a finite number > 0, got None"),
]


@pytest.mark.parametrize(("value", "low", "high", "above_low", "unit", "message"), BAD_NUMBERS,
                         ids=[repr(b[:4]) for b in BAD_NUMBERS])
def test_number_between_message_names_setting_value_and_range(value: Any, low: float, high: float, above_low: bool,
                                                              unit: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        number_between(value, "p", low, high, above_low=above_low, unit=unit)
    assert str(info.value) == message


# -- as attrs validators ----------------------------------------------------------------------------

@attrs.frozen
class Example:
    port: int | None = attrs.field(default=None, validator=whole(1, 65535, optional=True))
    count: int = attrs.field(default=1, validator=whole(1))
    ratio: float | None = attrs.field(default=None, validator=number(0, 1, optional=True))


def test_validators_take_the_setting_name_from_the_field() -> None:
    assert Example(port=8000, count=3, ratio=0.5) == Example(8000, 3, 0.5)
    with pytest.raises(ConfigError, match=r"^port must be an int from 1 to 65535 or None, got 0$"):
        Example(port=0)
    with pytest.raises(ConfigError, match=r"^count must be an int >= 1, got None$"):
        Example(count=None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^ratio must be a number >= 0 and <= 1, got True$"):
        Example(ratio=True)


# -- names ------------------------------------------------------------------------------------------

GOOD_PREFIXES = ["hexq", "a", "my-app.v2_x", "0", "x" * 100, "test-0123456789ab"]
BAD_PREFIXES = ["", "a:b", "{x}", "a{b}", "a}", "my app", "x\n", "tab\t", "x" * 101, "é", "a/b", "*", None, 5, b"x"]


@pytest.mark.parametrize("prefix", GOOD_PREFIXES)
def test_valid_prefixes(prefix: str) -> None:
    assert check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", BAD_PREFIXES, ids=repr)
def test_invalid_prefixes_are_refused_with_the_rule(prefix: Any) -> None:
    with pytest.raises(ConfigError) as info:
        check_prefix(prefix)
    assert str(info.value) == (f"invalid prefix {prefix!r}: use 1-100 characters from letters, digits, "
                               "'_', '.', '-'")


def test_check_name_uses_the_given_length_and_label() -> None:
    assert check_name("abc", "thing", 3) == "abc"
    with pytest.raises(ConfigError, match=r"^invalid thing 'abcd': use 1-3 characters"):
        check_name("abcd", "thing", 3)
