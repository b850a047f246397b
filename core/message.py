"""The task envelope: what travels through the broker for one task run."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

import attrs

from hexq.core import payload, trace_context
from hexq.core.errors import MalformedPayloadError, PayloadTooLargeError, SignatureError

ENVELOPE_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024
# The longest task id, in UTF-8 bytes, a worker can run: the board that tells the worker parent which task
# each child runs (adapters/posix/board.py) has room for this much and no more.
MAX_TASK_ID_BYTES = 255


def stored_text(raw: bytes | None) -> str | bytes | None:
    """A payload as a broker returns it: UTF-8 text, or the raw bytes when they are not UTF-8, so that an
    entry hexq did not write reaches ``Codec.decode`` and is dead-lettered as malformed instead of failing
    every reservation."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


@attrs.frozen
class TaskMessage:
    """One request to run a task. ``retries`` counts retries already used (0 on the first run)."""

    id: str
    name: str
    queue: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = attrs.field(factory=dict)
    retries: int = 0
    enqueued_at: float = 0.0
    eta: float | None = None
    broadcast: bool = False
    # The deadline, epoch seconds: a run not started by then never starts (written only when set).
    expires: float | None = None
    # The producer's trace context (core/trace_context.py), written only by a producer that traces; a retry
    # keeps it, so every attempt belongs to the producer's trace.
    trace: Mapping[str, str] | None = None

    def fingerprint(self) -> str:
        """Identity of an eta task for deduplication: task name, queue, args and kwargs (WakaQ's rule)."""
        native_args, native_kwargs = payload.encode_arguments(self.name, self.args, self.kwargs)
        body = json.dumps({"t": self.name, "q": self.queue, "a": native_args, "k": native_kwargs},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(body.encode()).hexdigest()


@attrs.frozen
class Codec:
    """Encodes and decodes envelopes; signs and verifies them when a signing key is configured."""

    signing_key: bytes | None = None
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES

    def encode(self, message: TaskMessage) -> str:
        return self.encode_fields(message.id, message.name, message.queue, message.args, message.kwargs,
                                  message.retries, message.enqueued_at, message.eta, message.broadcast,
                                  message.expires, trace=message.trace)

    def encode_fields(self, task_id: str, name: str, queue: str, args: tuple[Any, ...] | list[Any],
                      kwargs: dict[str, Any], retries: int = 0, enqueued_at: float = 0.0,
                      eta: float | None = None, broadcast: bool = False, expires: float | None = None, *,
                      trace: Mapping[str, str] | None = None) -> str:
        """``encode`` without building a TaskMessage first: the enqueue hot path."""
        native_args, native_kwargs = payload.encode_arguments(name, args, kwargs)
        document: dict[str, Any] = {
            "v": ENVELOPE_VERSION,
            "id": task_id,
            "task": name,
            "queue": queue,
            "args": native_args,
            "kwargs": native_kwargs,
            "retries": retries,
            "enqueued_at": enqueued_at,
        }
        if eta is not None:
            document["eta"] = eta
        if broadcast:
            document["broadcast"] = True
        if expires is not None:
            document["expires"] = expires
        if trace is not None:
            document["trace"] = trace
        text = payload.dumps(document)
        if self.signing_key is not None:
            text = payload.dumps({"sig": self._sign(text), "body": text})
        # A UTF-8 character takes at most 4 bytes: only texts that might be too big are measured.
        if len(text) * 4 > self.max_payload_bytes:
            size = len(text.encode())
            if size > self.max_payload_bytes:
                raise PayloadTooLargeError(name, size, self.max_payload_bytes)
        return text

    def decode(self, raw: str | bytes) -> TaskMessage:
        """Parse an envelope found in the broker; MalformedPayloadError explains what is wrong."""
        if isinstance(raw, bytes):
            try:
                raw = raw.decode()
            except UnicodeDecodeError as exc:
                raise MalformedPayloadError(f"payload is not UTF-8: {exc}") from exc
        if len(raw) > self.max_payload_bytes * 2:
            raise MalformedPayloadError(f"payload of {len(raw)} bytes is over twice max_payload_bytes")
        document = payload.loads(raw)
        if self.signing_key is not None:
            document = self._verified(document)
        if not isinstance(document, dict):
            raise MalformedPayloadError(f"envelope must be a JSON object, got {type(document).__name__}")
        version = document.get("v")
        if version != ENVELOPE_VERSION:
            raise MalformedPayloadError(
                f"envelope version {version!r} is not supported by this hexq (speaks {ENVELOPE_VERSION}); "
                "upgrade the workers before the producers"
            )
        task_id = _field(document, "id", str)
        return TaskMessage(
            id=task_id,
            name=_field(document, "task", str),
            queue=_field(document, "queue", str),
            args=tuple(_field(document, "args", list)),
            kwargs=_field(document, "kwargs", dict),
            retries=_non_negative(_field(document, "retries", int), "retries"),
            enqueued_at=float(_field(document, "enqueued_at", (int, float))),
            eta=_optional_number(document.get("eta"), "eta"),
            broadcast=_flag(document.get("broadcast", False)),
            expires=_optional_number(document.get("expires"), "expires"),
            trace=trace_context.carried(document.get("trace"), task_id),
        )

    def _sign(self, text: str) -> str:
        assert self.signing_key is not None
        return hmac.new(self.signing_key, text.encode(), hashlib.sha256).hexdigest()

    def _verified(self, document: Any) -> Any:
        if not isinstance(document, dict) or set(document) != {"sig", "body"}:
            raise SignatureError("payload is not signed, but this app requires signed payloads")
        body, signature = document["body"], document["sig"]
        if not isinstance(body, str) or not isinstance(signature, str):
            raise SignatureError("signed payload has a malformed body or signature")
        if not hmac.compare_digest(self._sign(body), signature):
            raise SignatureError("payload signature does not match: forged, or signed with another key")
        return payload.loads(body)


def _field(document: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in document:
        raise MalformedPayloadError(f"envelope is missing the field {key!r}")
    value = document[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise MalformedPayloadError(f"envelope field {key!r} has the wrong type: {value!r}")
    return value


def _non_negative(value: int, key: str) -> int:
    if value < 0:
        raise MalformedPayloadError(f"envelope field {key!r} must not be negative: {value!r}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise MalformedPayloadError(f"envelope field 'broadcast' must be true or false: {value!r}")
    return value


def _optional_number(value: Any, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedPayloadError(f"envelope field {key!r} has the wrong type: {value!r}")
    return float(value)
