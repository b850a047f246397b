"""The task envelope: encoding, decoding errors, size limit, signing and the eta fingerprint."""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any

import attrs
import pytest

from hexq.core import payload
from hexq.core.errors import (
    MalformedPayloadError,
    PayloadTooLargeError,
    SerializationError,
    SignatureError,
)
from hexq.core.message import DEFAULT_MAX_PAYLOAD_BYTES, ENVELOPE_VERSION, Codec, TaskMessage

MESSAGE = TaskMessage(
    id="abc123",
    name="reports.build",
    queue="high",
    args=(1, "two", date(2024, 2, 29), (3, 4)),
    kwargs={"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "amount": Decimal("9.99"), "raw": b"\x00"},
    retries=2,
    enqueued_at=1_700_000_000.25,
    eta=1_700_000_060.5,
    broadcast=False,
)


def envelope(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "v": ENVELOPE_VERSION, "id": "x", "task": "t", "queue": "q", "args": [], "kwargs": {},
        "retries": 0, "enqueued_at": 1.0,
    }
    for key, value in changes.items():
        if value is _DROP:
            document.pop(key)
        else:
            document[key] = value
    return document


_DROP = object()


def test_round_trip_keeps_every_field() -> None:
    codec = Codec()
    decoded = codec.decode(codec.encode(MESSAGE))
    assert decoded == attrs.evolve(MESSAGE, args=(1, "two", date(2024, 2, 29), [3, 4]))


def test_round_trip_of_bytes_input_and_broadcast_flag() -> None:
    codec = Codec()
    message = TaskMessage("i", "t", "q", broadcast=True)
    assert codec.decode(codec.encode(message).encode()) == message


def test_envelope_has_version_and_id_and_optional_fields_only_when_set() -> None:
    codec = Codec()
    document = json.loads(codec.encode(TaskMessage("the-id", "t", "q")))
    assert document["v"] == ENVELOPE_VERSION == 1
    assert document["id"] == "the-id"
    assert document["task"] == "t" and document["queue"] == "q"
    assert "eta" not in document and "broadcast" not in document and "expires" not in document
    with_eta = json.loads(codec.encode(attrs.evolve(MESSAGE, broadcast=True, expires=1_700_000_060.5)))
    assert with_eta["eta"] == MESSAGE.eta and with_eta["broadcast"] is True
    assert with_eta["expires"] == 1_700_000_060.5


def test_the_deadline_round_trips() -> None:
    codec = Codec()
    message = TaskMessage("i", "t", "q", expires=1_700_000_060.25)
    assert codec.decode(codec.encode(message)) == message


def test_the_trace_context_round_trips_signed_and_is_written_only_when_set() -> None:
    codec = Codec(b"k" * 16)
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": "a=b"}
    message = TaskMessage("i", "t", "q", trace=carrier)
    assert codec.decode(codec.encode(message)) == message
    assert codec.decode(codec.encode(attrs.evolve(message, retries=1))).trace == carrier  # a retry keeps it
    assert "trace" not in json.loads(Codec().encode(TaskMessage("i", "t", "q")))


def test_encode_refuses_bad_arguments_naming_task_and_path() -> None:
    with pytest.raises(SerializationError) as info:
        Codec().encode(TaskMessage("i", "mytask", "q", args=(1,), kwargs={"tags": {"a"}}))
    assert info.value.task == "mytask" and info.value.where == "tags"


DECODE_ERRORS: list[tuple[str, str | bytes, str]] = [
    ("not json", "hello", "not valid JSON"),
    ("json list", "[1, 2]", "must be a JSON object, got list"),
    ("json string", '"x"', "must be a JSON object, got str"),
    ("json null", "null", "must be a JSON object, got NoneType"),
    ("no version", json.dumps(envelope(v=_DROP)), "version None is not supported"),
    ("newer version", json.dumps(envelope(v=2)), "version 2 is not supported.*upgrade the workers"),
    ("version as string", json.dumps(envelope(v="1")), "version '1' is not supported"),
    ("missing id", json.dumps(envelope(id=_DROP)), "missing the field 'id'"),
    ("missing task", json.dumps(envelope(task=_DROP)), "missing the field 'task'"),
    ("missing queue", json.dumps(envelope(queue=_DROP)), "missing the field 'queue'"),
    ("missing args", json.dumps(envelope(args=_DROP)), "missing the field 'args'"),
    ("missing kwargs", json.dumps(envelope(kwargs=_DROP)), "missing the field 'kwargs'"),
    ("missing retries", json.dumps(envelope(retries=_DROP)), "missing the field 'retries'"),
    ("missing enqueued_at", json.dumps(envelope(enqueued_at=_DROP)), "missing the field 'enqueued_at'"),
    ("id not str", json.dumps(envelope(id=5)), "field 'id' has the wrong type: 5"),
    ("task not str", json.dumps(envelope(task=None)), "field 'task' has the wrong type: None"),
    ("args not list", json.dumps(envelope(args={"a": 1})), "field 'args' has the wrong type"),
    ("kwargs not dict", json.dumps(envelope(kwargs=[1])), "field 'kwargs' has the wrong type"),
    ("retries bool", json.dumps(envelope(retries=True)), "field 'retries' has the wrong type: True"),
    ("retries float", json.dumps(envelope(retries=1.5)), "field 'retries' has the wrong type"),
    ("enqueued_at str", json.dumps(envelope(enqueued_at="now")), "field 'enqueued_at' has the wrong type"),
    ("enqueued_at bool", json.dumps(envelope(enqueued_at=False)), "field 'enqueued_at' has the wrong"),
    ("eta str", json.dumps(envelope(eta="soon")), "field 'eta' has the wrong type"),
    ("eta bool", json.dumps(envelope(eta=True)), "field 'eta' has the wrong type"),
    ("expires str", json.dumps(envelope(expires="soon")), "field 'expires' has the wrong type"),
    ("unknown tag in args", json.dumps(envelope(args=[{"__hexq__": "pickle", "v": ""}])),
     "unknown value tag 'pickle'"),
    ("bytes not utf-8", b'{"v": 1, "id": "\xff"}', "not UTF-8"),
]


@pytest.mark.parametrize(("label", "raw", "expected"), DECODE_ERRORS, ids=[d[0] for d in DECODE_ERRORS])
def test_decode_errors_are_malformed_payload_with_useful_message(label: str, raw: str | bytes,
                                                                 expected: str) -> None:
    with pytest.raises(MalformedPayloadError, match=expected):
        Codec().decode(raw)


def test_decode_accepts_int_enqueued_at_and_eta() -> None:
    decoded = Codec().decode(json.dumps(envelope(enqueued_at=5, eta=7)))
    assert decoded.enqueued_at == 5.0 and decoded.eta == 7.0
    assert isinstance(decoded.enqueued_at, float) and isinstance(decoded.eta, float)


def test_decode_ignores_unknown_extra_fields() -> None:
    assert Codec().decode(json.dumps(envelope(extra="x"))).id == "x"


# -- size limit -------------------------------------------------------------------------------------


def test_payload_over_the_limit_is_refused_with_sizes() -> None:
    codec = Codec(max_payload_bytes=200)
    with pytest.raises(PayloadTooLargeError) as info:
        codec.encode(TaskMessage("i", "big", "q", args=("x" * 500,)))
    assert info.value.task == "big" and info.value.limit == 200 and info.value.size > 500
    assert "max_payload_bytes" in str(info.value)


def test_limit_counts_utf8_bytes_not_characters() -> None:
    message = TaskMessage("i", "t", "q", args=("é" * 100,))
    size = len(Codec().encode(message).encode())
    assert len(Codec().encode(message)) < size
    assert Codec(max_payload_bytes=size).encode(message)
    with pytest.raises(PayloadTooLargeError):
        Codec(max_payload_bytes=size - 1).encode(message)


def test_default_limit_is_one_mebibyte() -> None:
    assert Codec().max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES == 1024 * 1024


def test_decode_refuses_absurdly_large_payloads() -> None:
    codec = Codec(max_payload_bytes=100)
    with pytest.raises(MalformedPayloadError, match="over twice max_payload_bytes"):
        codec.decode(json.dumps(envelope(args=["x" * 300])))


# -- signing ----------------------------------------------------------------------------------------


def test_signed_round_trip() -> None:
    codec = Codec(signing_key=b"secret")
    text = codec.encode(MESSAGE)
    assert set(json.loads(text)) == {"sig", "body"}
    assert codec.decode(text) == Codec().decode(Codec().encode(MESSAGE))


def test_signature_counts_toward_the_size_limit() -> None:
    message = TaskMessage("i", "t", "q")
    unsigned = len(Codec().encode(message))
    with pytest.raises(PayloadTooLargeError):
        Codec(signing_key=b"k", max_payload_bytes=unsigned).encode(message)


def _forged_body(text: str) -> str:
    document = json.loads(text)
    body = json.loads(document["body"])
    body["args"] = ["rm -rf /"]
    document["body"] = payload.dumps(body)
    return payload.dumps(document)


SIGNATURE_FAILURES: list[tuple[str, Any]] = [
    ("unsigned", lambda signed, plain: plain),
    ("wrong key", lambda signed, plain: Codec(signing_key=b"other").encode(MESSAGE)),
    ("forged body", lambda signed, plain: _forged_body(signed)),
    ("forged signature", lambda signed, plain: payload.dumps({**json.loads(signed), "sig": "0" * 64})),
    ("missing signature", lambda signed, plain: payload.dumps({"body": json.loads(signed)["body"]})),
    ("extra key", lambda signed, plain: payload.dumps({**json.loads(signed), "x": 1})),
    ("body not str", lambda signed, plain: payload.dumps({"sig": "00", "body": {"v": 1}})),
    ("sig not str", lambda signed, plain: payload.dumps({"sig": 5, "body": json.loads(signed)["body"]})),
    ("a list", lambda signed, plain: "[]"),
]


@pytest.mark.parametrize(("label", "make"), SIGNATURE_FAILURES, ids=[s[0] for s in SIGNATURE_FAILURES])
def test_unsigned_forged_or_wrong_key_payloads_raise_signature_error(label: str, make: Any) -> None:
    codec = Codec(signing_key=b"secret")
    raw = make(codec.encode(MESSAGE), Codec().encode(MESSAGE))
    with pytest.raises(SignatureError):
        codec.decode(raw)


def test_signature_error_is_a_malformed_payload() -> None:
    assert issubclass(SignatureError, MalformedPayloadError)


def test_app_without_key_does_not_accept_signed_payload_as_a_task() -> None:
    signed = Codec(signing_key=b"secret").encode(MESSAGE)
    with pytest.raises(MalformedPayloadError):
        Codec().decode(signed)


# -- fingerprint ------------------------------------------------------------------------------------

BASE = TaskMessage("id-1", "t", "q", args=(1, [2, 3]), kwargs={"a": date(2024, 1, 1)})

SAME_FINGERPRINT = [
    ("another id", attrs.evolve(BASE, id="id-2")),
    ("another eta", attrs.evolve(BASE, eta=123.0)),
    ("retries and enqueue time", attrs.evolve(BASE, retries=3, enqueued_at=99.0)),
    ("tuple instead of list", attrs.evolve(BASE, args=(1, (2, 3)))),
]

DIFFERENT_FINGERPRINT = [
    ("another name", attrs.evolve(BASE, name="u")),
    ("another queue", attrs.evolve(BASE, queue="r")),
    ("another arg", attrs.evolve(BASE, args=(1, [2, 4]))),
    ("args order", attrs.evolve(BASE, args=([2, 3], 1))),
    ("another kwarg value", attrs.evolve(BASE, kwargs={"a": date(2024, 1, 2)})),
    ("another kwarg name", attrs.evolve(BASE, kwargs={"b": date(2024, 1, 1)})),
    ("arg moved to kwargs", attrs.evolve(BASE, args=(1,), kwargs={"a": date(2024, 1, 1), "x": [2, 3]})),
    ("str instead of date", attrs.evolve(BASE, kwargs={"a": "2024-01-01"})),
    ("str instead of int", attrs.evolve(BASE, args=("1", [2, 3]))),
]


@pytest.mark.parametrize(("label", "other"), SAME_FINGERPRINT, ids=[s[0] for s in SAME_FINGERPRINT])
def test_fingerprint_equal_for_same_name_queue_args_kwargs(label: str, other: TaskMessage) -> None:
    assert other.fingerprint() == BASE.fingerprint()


@pytest.mark.parametrize(("label", "other"), DIFFERENT_FINGERPRINT, ids=[d[0] for d in DIFFERENT_FINGERPRINT])
def test_fingerprint_differs_otherwise(label: str, other: TaskMessage) -> None:
    assert other.fingerprint() != BASE.fingerprint()


def test_fingerprint_ignores_kwargs_order() -> None:
    first = TaskMessage("1", "t", "q", kwargs={"a": 1, "b": {"x": 1, "y": 2}})
    second = TaskMessage("2", "t", "q", kwargs={"b": {"y": 2, "x": 1}, "a": 1})
    assert first.kwargs == second.kwargs
    assert first.fingerprint() == second.fingerprint()
