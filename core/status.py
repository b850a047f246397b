"""What a task's handle reports: ``TaskStatus``, the life cycle of one task id as its broker records it."""

from __future__ import annotations

import enum


class TaskStatus(str, enum.Enum):
    """Where a task is in its life, as ``handle.status()`` reads it from the broker.

    Live states (the broker holds the task): ``QUEUED`` (runnable, waiting for a worker), ``SCHEDULED``
    (waiting for its eta, or for a retry's delay), ``RUNNING`` (a worker child owns it).

    Terminal states (the broker keeps a record of how it ended, for ``keep_result``): ``SUCCEEDED``,
    ``FAILED`` (its own code raised or timed out on its last attempt, or its return value could not be kept),
    ``DEAD`` (dead-lettered without its code failing: its worker died under it ``max_deliveries`` times, its
    payload could not be decoded, its name is not registered), ``CANCELLED``, ``EXPIRED`` (its deadline
    passed before it started).

    ``UNKNOWN``: the broker holds neither the task nor a record of it: it never existed, its record's
    ``keep_result`` ran out, or it ended without keeping one (``keep_result`` unset for it).

    A ``str`` enum: ``TaskStatus.SUCCEEDED == "succeeded"``.
    """

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    UNKNOWN = "unknown"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """True for the states that have an outcome record (succeeded, failed, dead, cancelled, expired)."""
        return self in TERMINAL


LIVE = frozenset({TaskStatus.QUEUED, TaskStatus.SCHEDULED, TaskStatus.RUNNING})
TERMINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.DEAD, TaskStatus.CANCELLED,
                      TaskStatus.EXPIRED})
