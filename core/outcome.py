"""The terminal record of a task ("its outcome"), kept for ``keep_result``: one JSON document per task id.

Written by the worker when a task ends (succeeded, failed, dead), and by cancellation and deadlines
(cancelled, expired); read by ``TaskHandle.result()`` and ``.status()``. The document uses the argument
codec (``payload.py``): JSON only, with the same tagged round trips (datetime, Decimal, bytes...), so a value
comes back as an argument would (a tuple comes back as a list)::

    {"v": 1, "status": "succeeded", "task": "add", "finished_at_ms": 1700000000000, "result": 3}
    {"v": 1, "status": "failed", "task": "add", "finished_at_ms": ..., "error":
        {"type": "ValueError", "message": "boom", "traceback": "Traceback (most recent call last): ..."}}

Its size is bounded by the app's ``max_payload_bytes``, as payloads are. A return value that cannot be
encoded, or is too big, becomes a ``failed`` outcome saying so (``result_outcome``): the task's side effects
happened, so it is not retried (the same value would come out again) and not dead-lettered.
"""

from __future__ import annotations

import traceback
from typing import Any

import attrs

from hexq.core import payload
from hexq.core.errors import MalformedPayloadError
from hexq.core.policy import safe_str
from hexq.core.status import TERMINAL, TaskStatus

OUTCOME_VERSION = 1
# Tracebacks are for people: the deepest part is kept when one is longer than this (a recursion error).
MAX_TRACEBACK_CHARS = 16_000


@attrs.frozen
class ErrorInfo:
    """A remote exception, as text: its type's name, its message, its formatted traceback (may be empty)."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def of(cls, error: BaseException) -> ErrorInfo:
        text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
        return cls(type(error).__name__, safe_str(error), text)


@attrs.frozen
class Outcome:
    """How a task ended. ``value`` is its return value (succeeded only); ``error`` says why it did not
    succeed (every other status)."""

    status: TaskStatus
    task: str
    finished_at_ms: int
    value: Any = None
    error: ErrorInfo | None = None

    def __attrs_post_init__(self) -> None:
        if self.status not in TERMINAL:
            raise ValueError(f"an outcome is one of {sorted(s.value for s in TERMINAL)}, not {self.status.value!r}")


class ResultNotKept(Exception):
    """A return value that cannot be kept (not encodable, or too big): becomes a failed outcome."""


def encode_outcome(outcome: Outcome, max_bytes: int) -> str:
    """The outcome's document. Raises ResultNotKept when its value cannot be encoded or the document is over
    ``max_bytes`` in UTF-8 (use ``result_outcome`` to turn that into a failed outcome)."""
    document: dict[str, Any] = {"v": OUTCOME_VERSION, "status": outcome.status.value, "task": outcome.task,
                                "finished_at_ms": outcome.finished_at_ms}
    if outcome.status is TaskStatus.SUCCEEDED:
        try:
            document["result"] = payload.native_value(outcome.value, "result")
        except ValueError as exc:
            raise ResultNotKept(f"task {outcome.task!r} returned a value that cannot be kept as JSON ({exc}); "
                                "return JSON types, datetime, date, time, timedelta, Decimal, UUID or bytes") from None
    if outcome.error is not None:
        document["error"] = {"type": outcome.error.type, "message": outcome.error.message,
                             "traceback": outcome.error.traceback}
    text = payload.dumps(document)
    if len(text) * 4 > max_bytes:  # a UTF-8 character takes at most 4 bytes: most need no measuring
        size = len(text.encode())
        if size > max_bytes:
            raise ResultNotKept(f"task {outcome.task!r} returned a value too big to keep: its outcome is {size} "
                                f"bytes as JSON, over the limit of {max_bytes} bytes (max_payload_bytes); store big "
                                "data elsewhere and return a reference, or raise HexQ(max_payload_bytes=...)")
    return text


def result_outcome(outcome: Outcome, max_bytes: int) -> tuple[str, str | None]:
    """``encode_outcome``, or, when the value cannot be kept, a failed outcome saying why: (document, the
    reason it was not kept or None)."""
    try:
        return encode_outcome(outcome, max_bytes), None
    except ResultNotKept as exc:
        reason = str(exc)
        failed = Outcome(TaskStatus.FAILED, outcome.task, outcome.finished_at_ms,
                         error=ErrorInfo("ResultNotKept", reason))
        return encode_outcome(failed, max_bytes), reason


def decode_outcome(text: str | bytes) -> Outcome:
    """Parse a stored outcome; MalformedPayloadError says what is wrong with one hexq did not write."""
    document = payload.loads(text)
    if not isinstance(document, dict) or document.get("v") != OUTCOME_VERSION:
        raise MalformedPayloadError(f"not a hexq outcome record of version {OUTCOME_VERSION}: {str(text)[:200]!r}")
    try:
        status = TaskStatus(document["status"])
        error = document.get("error")
        info = None if error is None else ErrorInfo(str(error["type"]), str(error["message"]),
                                                     str(error.get("traceback", "")))
        return Outcome(status, str(document["task"]), int(document["finished_at_ms"]), document.get("result"),
                       info)
    except (KeyError, TypeError, ValueError) as exc:
        raise MalformedPayloadError(f"malformed outcome record ({exc!r}): {str(text)[:200]!r}") from None
