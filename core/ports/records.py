"""The values that cross the ports: plain frozen records, no behaviour."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Literal

import attrs

from hexq.core.status import TaskStatus

# Why an owned task ends without running (again): its deadline passed, or it was cancelled.
Unrun = Literal["expired", "cancelled"]


class Cancelled(str, enum.Enum):
    """What cancelling one task id found (``Producer.cancel``); the value is what ``hexq cancel`` prints."""

    REMOVED = "cancelled"  # it was queued or waiting (its eta, a retry's delay): removed, it never runs
    RUNNING = "cancelling"  # a worker holds it (running, or reserved): marked, and its worker stops it
    FINISHED = "finished"  # it had already ended (its record says how): nothing done
    UNKNOWN = "unknown"  # no trace of it (never existed, or its record has expired): nothing done


@attrs.frozen
class UniqueLock:
    """The lock a unique task takes when it is stored (``hexq.core.unique``): ``key`` names it (32 hex
    digits, also the end of the task's id), and it lasts ``window_ms`` from ``since_ms`` (the producer's clock)
    unless the task ends first."""

    key: str
    since_ms: int
    window_ms: int

    @property
    def until_ms(self) -> int:
        return self.since_ms + self.window_ms


@attrs.frozen
class OutgoingTask:
    """An encoded task ready to be stored.

    ``eta_ms`` None means "runnable now" (appended to the tail of ``queue``). With ``eta_ms`` set the task
    waits in the queue's eta set; if ``dedup_key`` is set and a waiting eta task of the same queue has the
    same key, that one is replaced (its eta and payload updated) instead of adding a second. With ``unique``
    set (a unique task, whose id ends with the lock's key) the task is stored only if it takes that lock
    (see ``Producer.enqueue``).
    """

    id: str
    queue: str
    payload: str
    eta_ms: int | None = None
    dedup_key: str | None = None
    unique: UniqueLock | None = None


@attrs.frozen
class Delivery:
    """A stored task as a consumer sees it. ``payload`` is None when the id had no stored payload (already
    acknowledged by a consumer whose lease had expired, or an entry hexq did not write); ``crashes`` counts
    how often a process died while running this task."""

    id: str
    queue: str
    payload: str | bytes | None  # bytes only when what is stored is not UTF-8 text
    crashes: int = 0


@attrs.frozen
class Reservation:
    deliveries: tuple[Delivery, ...]
    next_eta_ms: int | None  # earliest waiting eta among the served queues, to bound the idle wait


@attrs.frozen
class DeadLetter:
    """A task given up on. ``traceback`` is the formatted traceback of the exception its last attempt raised
    (its deepest part when long, see ``hexq.core.tracebacks``), "" when there was none: a hard timeout, a worker that
    died under it too often, a payload that could not run, or a record written before hexq kept it."""

    id: str
    queue: str
    payload: str | None
    reason: str
    failed_at_ms: int
    traceback: str = ""


@attrs.frozen
class InFlight:
    id: str
    queue: str
    consumer: str
    since_ms: int


@attrs.frozen
class QueueStats:
    name: str
    pending: int
    eta: int
    in_flight: int
    expired: int = 0  # tasks of the queue ever dropped unrun because their deadline had passed


@attrs.frozen
class MinuteTally:
    """Per-minute counters for the dashboard's chart, per queue: tasks done (succeeded) and failed (each failed
    run: retried or dead-lettered), and the pending and eta depths sampled in that minute.

    Written by ``Supervision.heartbeat`` as increments of ``done`` and ``failed`` (what a worker counted since its
    last beat) and samples of ``pending`` and ``eta`` (the latest write of a minute wins); read back by
    ``Inspection.tallies`` as the minute's sums. ``minute_ms`` is the start of the minute (epoch ms, a multiple
    of 60 000). Mappings: queue name -> count; a queue absent counts 0 (no sample for the depths)."""

    minute_ms: int
    done: Mapping[str, int] = attrs.field(factory=dict)
    failed: Mapping[str, int] = attrs.field(factory=dict)
    pending: Mapping[str, int] = attrs.field(factory=dict)
    eta: Mapping[str, int] = attrs.field(factory=dict)

    @property
    def empty(self) -> bool:
        return not (any(self.done.values()) or any(self.failed.values()) or self.pending or self.eta)


@attrs.frozen
class WorkerBeat:
    worker_id: str
    last_beat_ms: int
    info: str  # JSON text written by the worker (host, pid, queues, children)


@attrs.frozen
class ChildExit:
    pid: int
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None


@attrs.frozen
class OutcomeRecord:
    """A task's outcome to keep (``keep_result``): ``document`` (JSON, ``hexq.core.outcome``) stored under the
    task id for ``ttl_ms`` from ``finished_ms`` (the writer's clock; Redis counts the TTL from when it stores
    it, SQLite keeps ``finished_ms + ttl_ms``). A later record of the same id replaces it."""

    task_id: str
    document: str
    ttl_ms: int
    finished_ms: int


@attrs.frozen
class TaskState:
    """A task id as the broker sees it, read atomically: ``live`` is QUEUED, SCHEDULED or RUNNING while the
    broker holds the task (None when it does not), ``outcome`` the kept outcome document, if any."""

    live: TaskStatus | None
    outcome: str | None = None
