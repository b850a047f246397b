"""JSON-only wire format for task envelopes, with tagged round-trips for a few common Python types.

Design notes:
- Only JSON ever leaves the process, so write access to Redis never becomes code execution.
- Values JSON cannot carry faithfully (sets, objects, non-str dict keys, NaN) are refused when the task is
  enqueued, naming the task and the argument, instead of being silently turned into strings.
- A tagged value is ``{"__hexq__": type, "v": value}``. A user dict that happens to contain the tag key is
  wrapped as ``{"__hexq__": "dict", "v": [[key, value], ...]}`` so it can never be mistaken for a tagged value.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from hexq.core.errors import MalformedPayloadError, SerializationError

TAG = "__hexq__"


def _tag(kind: str, value: Any) -> dict[str, Any]:
    return {TAG: kind, "v": value}


class _Refused(Exception):
    def __init__(self, path: str, detail: str) -> None:
        self.path = path
        self.detail = detail


def _prepare(value: Any, path: str) -> Any:
    """Return a JSON-native copy of ``value``; raise _Refused naming the path of the first bad part."""
    kind = type(value)
    if kind is str or kind is int or value is None or kind is bool:
        return value
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _Refused(path, f"{value!r} is not valid JSON")
        return value
    if kind is list or kind is tuple:
        return [_prepare(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Refused(path, f"dict key {key!r} is a {type(key).__name__}; JSON keys are strings")
            out[key] = _prepare(item, f"{path}[{key!r}]")
        # Pairs, not a dict: the JSON decoder's object hook must never see the user's dict on its own.
        return _tag("dict", [[k, v] for k, v in out.items()]) if TAG in out else out
    # Subclasses are checked after the exact-type fast paths: datetime before date (it is a subclass).
    if isinstance(value, datetime):
        return _tag("datetime", value.isoformat())
    if isinstance(value, date):
        return _tag("date", value.isoformat())
    if isinstance(value, time):
        return _tag("time", value.isoformat())
    if isinstance(value, timedelta):
        return _tag("timedelta", [value.days, value.seconds, value.microseconds])
    if isinstance(value, Decimal):
        return _tag("decimal", str(value))
    if isinstance(value, UUID):
        return _tag("uuid", str(value))
    if isinstance(value, (bytes, bytearray)):
        return _tag("bytes", base64.b64encode(bytes(value)).decode("ascii"))
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, float):  # numpy.float64 and friends
        return _prepare(float(value), path)
    if isinstance(value, dict):  # OrderedDict, defaultdict, Counter
        return _prepare(dict(value), path)
    if isinstance(value, (list, tuple)):  # namedtuples travel as lists, as with json.dumps
        return _prepare(list(value), path)
    if isinstance(value, int):  # int subclasses such as IntEnum travel as their number
        return int(value)
    if isinstance(value, str):
        return str(value)
    raise _Refused(path, f"type {type(value).__module__}.{type(value).__qualname__} is not supported")


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "timedelta": lambda v: timedelta(days=v[0], seconds=v[1], microseconds=v[2]),
    "decimal": Decimal,
    "uuid": UUID,
    "bytes": lambda v: base64.b64decode(v.encode("ascii"), validate=True),
    "dict": lambda v: {str(k): item for k, item in v},
}


def _restore(obj: dict[str, Any]) -> Any:
    kind = obj.get(TAG)
    if kind is None or len(obj) != 2 or "v" not in obj:
        return obj
    decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
    if decoder is None:
        raise MalformedPayloadError(f"unknown value tag {kind!r}; was it written by a newer hexq?")
    try:
        return decoder(obj["v"])
    except (TypeError, ValueError, IndexError, ArithmeticError, AttributeError) as exc:
        raise MalformedPayloadError(f"bad {kind} value {obj['v']!r}: {exc}") from exc


def encode_arguments(task: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any]) -> tuple[
    list[Any], dict[str, Any]
]:
    """JSON-native args and kwargs, or SerializationError naming the task and the argument."""
    try:
        native_args = [_prepare(arg, f"args[{i}]") for i, arg in enumerate(args)]
        native_kwargs: dict[str, Any] = {}
        for key, value in kwargs.items():
            native_kwargs[key] = _prepare(value, key)
    except _Refused as refused:
        raise SerializationError(task, refused.path, refused.detail) from None
    return native_args, native_kwargs


def encode_value(what: str, value: Any) -> Any:
    """One value as JSON-native data (the tagged form for datetime and the like), or ``ValueError`` saying
    why not, for values that are not arguments (a unique task's key)."""
    try:
        return _prepare(value, what)
    except _Refused as refused:
        raise ValueError(refused.detail) from None


# Built once: json.dumps/json.loads with options construct a new encoder/decoder on every call, which is
# a measurable share of the per-task cost.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, ensure_ascii=False)
def _refuse_constant(name: str) -> Any:
    raise MalformedPayloadError(f"{name} is not valid JSON (hexq never writes it)")


_DECODER = json.JSONDecoder(object_hook=lambda obj: _restore(obj), parse_constant=_refuse_constant)


def dumps(document: Any) -> str:
    """Compact JSON of an already JSON-native document."""
    return _ENCODER.encode(document)


def loads(text: str | bytes) -> Any:
    """Parse JSON and restore tagged values; MalformedPayloadError on anything invalid."""
    try:
        if isinstance(text, (bytes, bytearray)):
            text = text.decode()
        return _DECODER.decode(text)
    except MalformedPayloadError:
        raise
    except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
        raise MalformedPayloadError(f"not valid JSON: {exc}") from exc


def native_value(value: Any, path: str = "value") -> Any:
    """A JSON-native copy of one value (a task's return value), or ValueError naming the part of it, under
    ``path``, that JSON cannot carry ("result['rows'][3]: type ... is not supported")."""
    try:
        return _prepare(value, path)
    except _Refused as refused:
        raise ValueError(f"{refused.path}: {refused.detail}") from None
