"""Safe evaluation of concurrency settings such as ``"cores*4"`` (no eval of arbitrary code)."""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

from hexq.core.errors import ConfigError
from hexq.core.validation import is_int

_OPERATORS: dict[type[ast.operator], Callable[[int, int], float | int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.truediv,
}


def evaluate(expression: int | str, cores: int, what: str = "concurrency") -> int:
    """An int from an int or an arithmetic expression over ``cores``; ConfigError for anything else."""
    if is_int(expression):
        value: float | int = expression
    elif isinstance(expression, str):
        if len(expression) > 100:
            raise ConfigError(f"{what} expression is too long: {expression[:40]!r}...")
        try:
            tree = ast.parse(expression.strip(), mode="eval")
        except SyntaxError as exc:
            raise ConfigError(f"{what} {expression!r} is not an arithmetic expression: {exc.msg}") from None
        value = _walk(tree.body, cores, expression, what)
    else:
        raise ConfigError(f"{what} must be an int or an expression like 'cores*4', got {expression!r}")
    if value != value or value < 0 or value > 10_000:
        raise ConfigError(f"{what} {expression!r} evaluates to {value}, outside 0..10000")
    return int(value)


def _walk(node: ast.expr, cores: int, source: str, what: str) -> float | int:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return float(node.value) if type(node.value) is float else int(node.value)  # type: ignore[arg-type]
    if isinstance(node, ast.Name) and node.id == "cores":
        return cores
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        left = _walk(node.left, cores, source, what)
        right = _walk(node.right, cores, source, what)
        try:
            return _OPERATORS[type(node.op)](left, right)  # type: ignore[arg-type]
        except ZeroDivisionError:
            raise ConfigError(f"{what} {source!r} divides by zero") from None
    raise ConfigError(
        f"{what} {source!r} may only use numbers, 'cores', + - * / // and parentheses"
    )
