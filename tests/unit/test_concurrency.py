"""Concurrency settings: arithmetic over ``cores`` only, never arbitrary code."""

from __future__ import annotations

from typing import Any

import pytest

from hexq.core.concurrency import evaluate
from hexq.core.errors import ConfigError

# (expression, cores, expected)
GOOD: list[tuple[int | str, int, int]] = [
    (0, 8, 0),
    (1, 8, 1),
    (10_000, 8, 10_000),
    ("cores", 8, 8),
    ("cores*4", 8, 32),
    ("cores * 4", 3, 12),
    ("  cores*4  ", 2, 8),
    ("cores/2", 8, 4),
    ("cores/2", 3, 1),  # true division rounds down to a whole process count
    ("cores/2", 1, 0),
    ("cores//3", 8, 2),
    ("2+cores", 4, 6),
    ("cores-1", 4, 3),
    ("(cores+1)*2", 3, 8),
    ("cores*1.5", 4, 6),
    ("7", 1, 7),
    ("1e3", 1, 1000),
]


@pytest.mark.parametrize(("expression", "cores", "expected"), GOOD, ids=[f"{g[0]!r}@{g[1]}" for g in GOOD])
def test_evaluates_arithmetic_over_cores(expression: int | str, cores: int, expected: int) -> None:
    value = evaluate(expression, cores)
    assert value == expected
    assert type(value) is int


# (expression, part of the message)
REFUSED: list[tuple[Any, str]] = [
    ("__import__('os').system('x')", "may only use numbers"),
    ("open('/etc/passwd')", "may only use numbers"),
    ("cores.real", "may only use numbers"),
    ("cores.__class__", "may only use numbers"),
    ("().__class__.__bases__[0]", "may only use numbers"),
    ("int(cores)", "may only use numbers"),
    ("lambda: 1", "may only use numbers"),
    ("threads*2", "may only use numbers"),
    ("CORES", "may only use numbers"),
    ("os", "may only use numbers"),
    ("cores**2", "may only use numbers"),
    ("cores%3", "may only use numbers"),
    ("cores<<2", "may only use numbers"),
    ("-1", "may only use numbers"),
    ("-cores", "may only use numbers"),
    ("[cores]", "may only use numbers"),
    ("'4'", "may only use numbers"),
    ("True", "may only use numbers"),
    ("cores if 1 else 2", "may only use numbers"),
    ("1-2", "outside 0..10000"),
    ("cores-100", "outside 0..10000"),
    (-1, "outside 0..10000"),
    (10_001, "outside 0..10000"),
    ("cores*100000", "outside 0..10000"),
    ("9" * 99, "outside 0..10000"),
    ("1e999", "outside 0..10000"),
    ("9" * 101, "too long"),
    ("cores/0", "divides by zero"),
    ("cores//0", "divides by zero"),
    ("cores/(cores-8)", "divides by zero"),
    ("cores*", "not an arithmetic expression"),
    ("", "not an arithmetic expression"),
    ("import os", "not an arithmetic expression"),
    ("cores; 1", "not an arithmetic expression"),
    (True, "must be an int or an expression"),
    (False, "must be an int or an expression"),
    (4.0, "must be an int or an expression"),
    (None, "must be an int or an expression"),
    (b"cores", "must be an int or an expression"),
]


@pytest.mark.parametrize(("expression", "message"), REFUSED, ids=[repr(r[0])[:40] for r in REFUSED])
def test_refuses_anything_else_with_config_error(expression: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        evaluate(expression, 8)


def test_message_names_the_setting_and_expression() -> None:
    with pytest.raises(ConfigError) as info:
        evaluate("threads", 4, "async_concurrency")
    assert "async_concurrency" in str(info.value) and "'threads'" in str(info.value)


@pytest.mark.parametrize("expression", ["1e999-1e999", "1e999*0"])
def test_nan_result_is_refused(expression: str) -> None:
    with pytest.raises(ConfigError):
        evaluate(expression, 4)
