"""Which outcomes a worker keeps (``keep_result``), and the records it writes for them.

Nothing is built, and nothing is sent, for a task whose ``keep_result`` resolves to nothing (the default):
the worker's broker calls stay as they are. A kept outcome travels with the task's acknowledgement or dead
letter (``Consumer.reserve``/``ack``/``dead_letter``), in the round trip that ends the task anyway.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import attrs

from hexq.core.errors import HexqError
from hexq.core.message import Codec
from hexq.core.outcome import ErrorInfo, Outcome, encode_outcome, result_outcome
from hexq.core.policy import FailureKind, Limits
from hexq.core.ports import OutcomeRecord, Unrun
from hexq.core.registry import Registry
from hexq.core.status import TaskStatus

log = logging.getLogger("hexq.worker")
# A dead-letter reason that starts with an exception's name ("UnknownTaskError: unknown task ...").
_NAMED = re.compile(r"([A-Z]\w*(?:Error|Exception)): ")
_FAILURE_TYPES = {"soft_timeout": "SoftTimeout", "hard_timeout": "HardTimeout", "crash": "WorkerDied"}
# A cancelled or expired task keeps its outcome even where keep_result is unset (its status must read
# cancelled or expired): for the task's keep_result when it has one, else this long.
UNRUN_KEEP_MS = 24 * 3600 * 1000
_UNRUN_TYPES = {"cancelled": "TaskCancelled", "expired": "DeadlinePassed"}


@attrs.define
class OutcomeKeeper:
    registry: Registry
    codec: Codec

    def keep_ms(self, limits: Limits | None, queue: str) -> int | None:
        """How long to keep an outcome: the task's resolved limits, else (a task that could not be decoded or
        is not registered) its queue's setting, else the app's."""
        if limits is not None:
            return limits.keep_result_ms
        try:
            seconds = self.registry.queues.get(queue).keep_result
        except HexqError:
            seconds = None
        if seconds is None:
            seconds = self.registry.defaults.keep_result
        return max(1, round(seconds * 1000)) if seconds else None

    def succeeded(self, task_id: str, name: str, value: Any, keep_ms: int, now_ms: int) -> OutcomeRecord:
        """The success record; a value that cannot be kept (not JSON, too big) makes it a failed one, said in
        the log. The task is not retried either way: it ran, and would return the same value again."""
        document, not_kept = result_outcome(Outcome(TaskStatus.SUCCEEDED, name, now_ms, value),
                                            self.codec.max_payload_bytes)
        if not_kept is not None:
            log.error("task %s %s: its outcome is recorded as failed: %s", task_id, name, not_kept)
        return OutcomeRecord(task_id, document, keep_ms, now_ms)

    def failed(self, task_id: str, name: str, kind: FailureKind, error: BaseException | None, reason: str,
               keep_ms: int, now_ms: int) -> OutcomeRecord:
        """The record of a task given up on: failed (its code raised or timed out), or dead (its worker died
        under it too often)."""
        info = ErrorInfo.of(error) if error is not None else ErrorInfo(_FAILURE_TYPES.get(kind, kind), reason)
        status = TaskStatus.DEAD if kind == "crash" else TaskStatus.FAILED
        return self._record(task_id, Outcome(status, name, now_ms, error=info), keep_ms)

    def unrun(self, task_id: str, name: str, why: Unrun, detail: str, limits: Limits | None, queue: str,
              now_ms: int) -> OutcomeRecord:
        """The record of a task that ended without running (again): cancelled, or expired (its deadline passed
        before it started). Always written, kept ``keep_result`` or ``UNRUN_KEEP_MS``."""
        keep_ms = self.keep_ms(limits, queue) or UNRUN_KEEP_MS
        outcome = Outcome(TaskStatus(why), name, now_ms, error=ErrorInfo(_UNRUN_TYPES[why], detail))
        return self._record(task_id, outcome, keep_ms)

    def rejected(self, task_id: str, name: str, reason: str, keep_ms: int, now_ms: int) -> OutcomeRecord:
        """The record of a task dead-lettered without running (malformed, unknown, poison)."""
        named = _NAMED.match(reason)
        info = ErrorInfo(named.group(1), reason[named.end():]) if named else ErrorInfo("DeadLetter", reason)
        return self._record(task_id, Outcome(TaskStatus.DEAD, name, now_ms, error=info), keep_ms)

    def _record(self, task_id: str, outcome: Outcome, keep_ms: int) -> OutcomeRecord:
        try:
            document = encode_outcome(outcome, self.codec.max_payload_bytes)
        except Exception:  # a traceback of over max_payload_bytes: keep the error without it
            assert outcome.error is not None
            error = attrs.evolve(outcome.error, message=outcome.error.message[:1000], traceback="")
            document = encode_outcome(attrs.evolve(outcome, error=error), self.codec.max_payload_bytes)
        return OutcomeRecord(task_id, document, keep_ms, outcome.finished_at_ms)
