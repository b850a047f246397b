"""Ports to the machine a worker runs on: time, processes, the shared running board, metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hexq.core.ports.records import ChildExit


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards, shared by a worker parent and its
        children (deadlines written by a child are read by the parent)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Pause the caller; a fake clock advances instead of blocking."""
        ...


class RunningBoard(Protocol):
    """Memory shared between a worker parent and its children: which tasks each child is running now.

    A child writes, the parent reads; no system call per task, so telling the parent costs nothing on the
    hot path. Deadlines are in the Clock's monotonic time, which all processes of a worker share. Task ids
    are never cut: an id longer than the board holds is refused by ``started``.
    """

    def started(self, child: int, slot: int, task_id: str, hard_deadline: float) -> None: ...

    def finished(self, child: int, slot: int) -> None: ...

    def running(self, child: int) -> list[tuple[str, float]]:
        """(task id, hard deadline) of each task the child is running; a deadline of 0.0 means none."""
        ...

    def reset(self, child: int) -> None: ...

    def request_cancel(self, child: int, task_ids: Sequence[str]) -> None:
        """The parent's side, the other way round: the ids of the child's tasks whose cancellation is requested
        (replacing the previous list). Written by the parent only, read by the child when it is interrupted."""
        ...

    def cancel_requests(self, child: int) -> frozenset[str]:
        """The child's side: the ids its parent last asked it to cancel."""
        ...


class ProcessControl(Protocol):
    """Starting, signalling and watching worker children, and reading memory use.

    The function a child runs is given to the adapter when it is built (by the composition root), so that
    children can be started from a process that holds no threads and no locks.
    """

    def start_child(self, index: int, consumer: str) -> int:
        """Start child ``index`` serving as ``consumer`` in a new process; returns its pid."""
        ...

    def terminate(self, pid: int) -> None:
        """Ask a child to finish its current work and exit (SIGTERM)."""
        ...

    def kill(self, pid: int) -> None:
        """Stop a child at once (SIGKILL); it gets no chance to clean up."""
        ...

    def interrupt(self, pid: int) -> None:
        """Tell a child to read its cancellation requests from the board now (SIGUSR1)."""
        ...

    def reap(self) -> list[ChildExit]:
        """Children that have exited since the last call, without blocking."""
        ...

    def memory_percent(self) -> float:
        """Share of the machine's RAM in use, 0-100."""
        ...

    def rss(self, pid: int) -> int:
        """Resident memory of a process in bytes; 0 if it is gone."""
        ...


class Metrics(Protocol):
    """Counters and timings for monitoring. Implementations must be cheap: they are on the per-task path."""

    def enqueued(self, task: str, queue: str, count: int) -> None: ...

    def started(self, task: str, queue: str) -> None: ...

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        """``outcome`` is one of ``succeeded``, ``retried``, ``dead_lettered``, ``expired`` (a failure is retried,
        dead-lettered, or dropped because its retry would start after its deadline, so ``failed`` = retried +
        dead_lettered + expired)."""
        ...

    def recovered(self, count: int) -> None:
        """Tasks put back in their queues after the process running them died."""
        ...

    def expired(self, task: str, queue: str) -> None:
        """A task dropped unrun: its deadline (``expires``) passed before it could start."""
        ...

    def queue_depths(self, pending: dict[str, int], eta: dict[str, int], in_flight: dict[str, int]) -> None: ...


class NoMetrics:
    """The default: metrics off, nothing recorded."""

    def enqueued(self, task: str, queue: str, count: int) -> None:
        return None

    def started(self, task: str, queue: str) -> None:
        return None

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        return None

    def recovered(self, count: int) -> None:
        return None

    def expired(self, task: str, queue: str) -> None:
        return None

    def queue_depths(self, pending: dict[str, int], eta: dict[str, int], in_flight: dict[str, int]) -> None:
        return None
