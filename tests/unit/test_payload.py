"""The JSON wire format of task arguments: tagged round trips, refusals, and decode errors."""

from __future__ import annotations

import collections
import enum
import json
import math
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest

from hexq.core import payload
from hexq.core.errors import MalformedPayloadError, SerializationError

PARIS_SUMMER = timezone(timedelta(hours=2))


def round_trip(value: Any) -> Any:
    args, kwargs = payload.encode_arguments("t", [value], {"k": value})
    text = payload.dumps({"a": args, "k": kwargs})
    restored = payload.loads(text)
    assert repr(restored["a"][0]) == repr(restored["k"]["k"])
    return restored["a"][0]


class Color(enum.IntEnum):
    RED = 1


ROUND_TRIPS: list[tuple[str, Any]] = [
    ("none", None),
    ("bool", True),
    ("int", 42),
    ("big int", 2**80),
    ("float", 1.5),
    ("str", "héllo ✓"),
    ("empty list", []),
    ("empty dict", {}),
    ("aware datetime", datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=PARIS_SUMMER)),
    ("utc datetime", datetime(2024, 1, 1, tzinfo=timezone.utc)),
    ("naive datetime", datetime(2024, 1, 1, 12, 30)),
    ("date", date(2024, 2, 29)),
    ("time", time(23, 59, 1, 5)),
    ("aware time", time(8, 0, tzinfo=PARIS_SUMMER)),
    ("timedelta", timedelta(days=-3, seconds=5, microseconds=7)),
    ("decimal", Decimal("12345678901234567890.000000001")),
    ("decimal nan", Decimal("NaN")),
    ("uuid", UUID("12345678-1234-5678-1234-567812345678")),
    ("bytes", b"\x00\xff binary \x80"),
    ("empty bytes", b""),
    ("nested", {"a": [1, {"b": [date(2020, 1, 1), b"x"]}], "c": {"d": {"e": Decimal("1.1")}}}),
    ("tag key in user dict", {"__hexq__": "mine", "other": 1}),
    ("dict shaped like a tag", {"__hexq__": "datetime", "v": "2024-01-01T00:00:00"}),
    ("dict shaped like dict tag", {"__hexq__": "dict", "v": [["a", 1]]}),
    ("tag key nested", [{"x": {"__hexq__": "bytes", "v": "AA=="}}]),
    ("only the tag key", {"__hexq__": None}),
]


@pytest.mark.parametrize(("label", "value"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS])
def test_round_trip_keeps_value_and_type(label: str, value: Any) -> None:
    restored = round_trip(value)
    if isinstance(value, Decimal) and value.is_nan():
        assert isinstance(restored, Decimal) and restored.is_nan()
        return
    assert restored == value
    assert type(restored) is type(value)


def test_aware_datetime_keeps_its_offset_and_naive_stays_naive() -> None:
    aware = round_trip(datetime(2024, 6, 1, 12, tzinfo=PARIS_SUMMER))
    naive = round_trip(datetime(2024, 6, 1, 12))
    assert aware.utcoffset() == timedelta(hours=2)
    assert naive.tzinfo is None


def test_datetime_is_not_decoded_as_a_date() -> None:
    assert type(round_trip(datetime(2024, 1, 1))) is datetime
    assert type(round_trip(date(2024, 1, 1))) is date


def test_tuples_become_lists_at_every_depth() -> None:
    assert round_trip((1, (2, 3), [4, (5,)])) == [1, [2, 3], [4, [5]]]
    assert round_trip({"t": (1, 2)}) == {"t": [1, 2]}


def test_bytearray_comes_back_as_bytes() -> None:
    assert round_trip(bytearray(b"ab")) == b"ab"


def test_int_subclass_travels_as_its_number() -> None:
    restored = round_trip(Color.RED)
    assert restored == 1 and type(restored) is int


class Ratio(float):
    pass


Point = collections.namedtuple("Point", "x y")


@pytest.mark.parametrize(("value", "expected"), [
    (Ratio(1.5), 1.5),
    (collections.OrderedDict(a=1, b=2), {"a": 1, "b": 2}),
    (collections.defaultdict(int, a=1), {"a": 1}),
    (collections.Counter("aab"), {"a": 2, "b": 1}),
    (Point(1, 2), [1, 2]),
], ids=lambda v: type(v).__name__)
def test_subclasses_of_json_types_travel_as_their_base_type(value: Any, expected: Any) -> None:
    restored = round_trip(value)
    assert restored == expected and type(restored) is type(expected)


def test_float_subclass_nan_is_still_refused() -> None:
    with pytest.raises(SerializationError):
        payload.encode_arguments("t", [Ratio("nan")], {})


def test_user_dict_with_tag_key_is_wrapped_on_the_wire() -> None:
    args, _ = payload.encode_arguments("t", [{"__hexq__": "datetime", "v": "2024-01-01T00:00:00"}], {})
    wire = json.loads(payload.dumps({"a": args}))["a"][0]
    assert wire["__hexq__"] == "dict"  # never sent as a bare look-alike of a tagged value


def test_encoding_does_not_mutate_the_caller_arguments() -> None:
    original = {"when": date(2020, 1, 1), "items": (1, 2)}
    payload.encode_arguments("t", [original], {"o": original})
    assert original == {"when": date(2020, 1, 1), "items": (1, 2)}


class Thing:
    pass


REFUSALS: list[tuple[str, list[Any], dict[str, Any], str]] = [
    ("set arg", [{1, 2}], {}, "args[0]"),
    ("frozenset kwarg", [], {"tags": frozenset()}, "tags"),
    ("object", [1, Thing()], {}, "args[1]"),
    ("int dict key", [{1: "a"}], {}, "args[0]"),
    ("tuple dict key", [], {"m": {(1, 2): 3}}, "m"),
    ("nan", [math.nan], {}, "args[0]"),
    ("inf", [], {"x": math.inf}, "x"),
    ("-inf nested", [[1, [2, -math.inf]]], {}, "args[0][1][1]"),
    ("nested in dict", [{"a": {"b": object()}}], {}, "args[0]['a']['b']"),
    ("function", [], {"cb": len}, "cb"),
    ("complex", [1j], {}, "args[0]"),
]


@pytest.mark.parametrize(("label", "args", "kwargs", "where"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_task_and_argument_path(label: str, args: list[Any], kwargs: dict[str, Any],
                                                  where: str) -> None:
    with pytest.raises(SerializationError) as info:
        payload.encode_arguments("reports.build", args, kwargs)
    assert info.value.task == "reports.build"
    assert info.value.where == where
    message = str(info.value)
    assert "'reports.build'" in message
    assert where in message


def test_serialization_error_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        payload.encode_arguments("t", [{1}], {})


def test_dumps_is_compact_and_keeps_unicode() -> None:
    assert payload.dumps({"a": [1, 2], "s": "é"}) == '{"a":[1,2],"s":"é"}'


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        payload.dumps({"x": math.nan})


MALFORMED: list[tuple[str, str | bytes, str]] = [
    ("not json", "{nope", "not valid JSON"),
    ("empty", "", "not valid JSON"),
    ("truncated", '{"a": [1, 2', "not valid JSON"),
    ("bad utf-8 bytes", b"\xff\xfe{", "not valid JSON"),
    ("unknown tag", '{"__hexq__": "pickle", "v": "x"}', "unknown value tag 'pickle'"),
    ("non-str tag", '{"__hexq__": 5, "v": "x"}', "unknown value tag 5"),
    ("bad date", '{"__hexq__": "date", "v": "2024-02-30"}', "bad date value"),
    ("bad datetime", '{"__hexq__": "datetime", "v": "yesterday"}', "bad datetime value"),
    ("datetime not str", '{"__hexq__": "datetime", "v": 5}', "bad datetime value"),
    ("bad time", '{"__hexq__": "time", "v": "25:00"}', "bad time value"),
    ("bad decimal", '{"__hexq__": "decimal", "v": "1.2.3"}', "bad decimal value"),
    ("bad uuid", '{"__hexq__": "uuid", "v": "not-a-uuid"}', "bad uuid value"),
    ("bad base64", '{"__hexq__": "bytes", "v": "!!!"}', "bad bytes value"),
    ("short timedelta", '{"__hexq__": "timedelta", "v": [1]}', "bad timedelta value"),
    ("timedelta not list", '{"__hexq__": "timedelta", "v": "x"}', "bad timedelta value"),
    ("huge timedelta", '{"__hexq__": "timedelta", "v": [1e300, 0, 0]}', "bad timedelta value"),
    ("dict tag not pairs", '{"__hexq__": "dict", "v": 5}', "bad dict value"),
    ("dict tag bad pair", '{"__hexq__": "dict", "v": [[1, 2, 3]]}', "bad dict value"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, "not valid JSON"),
]


@pytest.mark.parametrize(("label", "text", "expected"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_loads_raises_malformed_payload_with_useful_message(label: str, text: str | bytes,
                                                            expected: str) -> None:
    with pytest.raises(MalformedPayloadError, match=expected.replace("(", r"\(")):
        payload.loads(text)


@pytest.mark.parametrize("text", ['{"__hexq__": "bytes", "v": 5}', '{"__hexq__": "uuid", "v": 5}'])
def test_non_string_bytes_or_uuid_tag_is_malformed(text: str) -> None:
    with pytest.raises(MalformedPayloadError):
        payload.loads(text)


def test_objects_that_only_look_partly_like_tags_are_left_alone() -> None:
    # Three keys, or no "v": not a tagged value, so returned as the plain dict it is.
    assert payload.loads('{"__hexq__": "bytes", "v": "AA==", "x": 1}') == {
        "__hexq__": "bytes", "v": "AA==", "x": 1}
    assert payload.loads('{"__hexq__": "bytes", "w": 1}') == {"__hexq__": "bytes", "w": 1}
