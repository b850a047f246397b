"""The one line a worker logs when a task finishes, as Celery users expect it::

    mytask[0187a9c4…] succeeded in 0.003 s (queue default, attempt 1)
    mytask[0187a9c4…] failed in 0.010 s (queue default, attempt 1): raised ValueError: boom; retrying in 1.730 s
    mytask[0187a9c4…] timed out in 30.001 s (queue default, attempt 4): soft timeout; gave up …; dead-lettered
    mytask[0187a9c4…] hard-killed after 60.000 s (queue default, attempt 1): hard timeout; retrying at once

A success is logged at INFO on the ``hexq.task`` logger, and only when the app asks for it (``log_tasks``, on by
default); a failure is always logged, at ERROR with the traceback (an exception) or WARNING (a timeout), in
this same single line: it replaces the separate "failed" and "will retry" lines of earlier versions. The record
carries the fields as attributes too (``task_name``, ``task_id``, ``task_queue``, ``task_attempt``,
``task_outcome``, ``task_duration``) for structured log handlers.
"""

from __future__ import annotations

import logging

from hexq.core.message import TaskMessage
from hexq.core.policy import FailureKind

log = logging.getLogger("hexq.task")

SUCCEEDED, RETRIED, DEAD_LETTERED, EXPIRED, CANCELLED = "succeeded", "retried", "dead_lettered", "expired", "cancelled"

_VERB: dict[FailureKind, str] = {
    "exception": "failed",
    "soft_timeout": "timed out",
    "hard_timeout": "hard-killed",
    "crash": "died",
}


def _fields(message: TaskMessage, attempt: int, outcome: str, duration: float) -> dict[str, object]:
    return {"task_name": message.name, "task_id": message.id, "task_queue": message.queue,
            "task_attempt": attempt, "task_outcome": outcome, "task_duration": duration}


_SUCCEEDED_LINE = "%s[%s] succeeded in %.3f s (queue %s, attempt %d)"


def log_succeeded(message: TaskMessage, attempt: int, duration: float) -> None:
    """The INFO line of a success; the caller checks ``log_tasks``. This one is on every task's path, so it
    skips what ``Logger.info`` does that it does not need: the level is checked first (a worker logging at
    WARNING pays one cached comparison), and the record is made directly, its fields set as attributes, with
    no walk up the stack to find the caller and no ``extra`` dict to check (together about a quarter of the
    cost of a line; the handler's formatting and write are the rest)."""
    if log.isEnabledFor(logging.INFO):
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, _SUCCEEDED_LINE,
                                (message.name, message.id, duration, message.queue, attempt), None, "log_succeeded")
        record.task_name, record.task_id, record.task_queue = message.name, message.id, message.queue
        record.task_attempt, record.task_outcome, record.task_duration = attempt, SUCCEEDED, duration
        log.handle(record)


def log_failed(message: TaskMessage, attempt: int, duration: float, kind: FailureKind,
               error: BaseException | None, reason: str, retry_in: float | None, hard_timeout: float | None,
               *, expired: bool = False) -> str:
    """Log the line of a failed run and what follows it, and return that outcome: another attempt in
    ``retry_in`` seconds (``retried``), or (None) the dead-letter list (``dead_lettered``), or (``expired``)
    nothing: its retry would start after its deadline. ``duration`` is 0 for
    a run seen from outside (the worker parent killed it at its hard timeout): the line then gives the hard
    timeout, which is how long it ran."""
    if kind == "hard_timeout" and not duration and hard_timeout is not None:
        duration = hard_timeout
    if expired:
        outcome, then = EXPIRED, "expired: its retry would start after its deadline; not retried"
    elif retry_in is None:
        outcome, then = DEAD_LETTERED, "dead-lettered"
    else:
        outcome, then = RETRIED, f"retrying in {retry_in:.3f} s" if retry_in > 0 else "retrying at once"
    level = logging.ERROR if kind == "exception" else logging.WARNING
    log.log(level, "%s[%s] %s %s %.3f s (queue %s, attempt %d): %s; %s", message.name, message.id, _VERB[kind],
            "after" if kind == "hard_timeout" else "in", duration, message.queue, attempt, reason, then,
            exc_info=error if kind == "exception" else None, extra=_fields(message, attempt, outcome, duration))
    return outcome


def log_cancelled(message: TaskMessage, attempt: int, duration: float | None) -> None:
    """The WARNING line of a task stopped because its cancellation was requested (``duration`` None: it was
    reserved and never started)."""
    if duration is None:
        log.warning("%s[%s] cancelled before it started (queue %s, attempt %d); not run", message.name, message.id,
                    message.queue, attempt, extra=_fields(message, attempt, CANCELLED, 0.0))
        return
    log.warning("%s[%s] cancelled in %.3f s (queue %s, attempt %d): stopped at the request; not retried",
                message.name, message.id, duration, message.queue, attempt,
                extra=_fields(message, attempt, CANCELLED, duration))
