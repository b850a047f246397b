"""Ports to the machine a worker runs on: time, processes, the shared running board, metrics, traces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from hexq.core.ports.records import ChildExit, OutgoingTask


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


class SendSpan(Protocol):
    """The span of one send (``.delay()``, a batch, a broadcast, a cron tick), started before its tasks are
    encoded so that they carry its context."""

    @property
    def carrier(self) -> dict[str, str] | None:
        """What each envelope of this send carries (W3C ``traceparent``/``tracestate``); None: nothing, and the
        envelopes get no ``trace`` field."""
        ...

    def end(self, sent: Sequence[OutgoingTask], error: BaseException | None = None) -> None:
        """The send is over: ``sent`` were stored, or ``error`` (then raised to the caller) says why not."""
        ...


class RunSpan(Protocol):
    """The span of one run of a task, in a worker (or in-process, for ``memory://``)."""

    def end(self, outcome: str | None, failure: str | None = None, error: BaseException | None = None) -> None:
        """The run is over: ``outcome`` is ``succeeded``, ``retried``, ``dead_lettered`` or ``expired`` (None: it
        was interrupted, and the task goes back to its queue), ``failure`` the kind of failure (``exception``,
        ``soft_timeout``, ``hard_timeout``) and ``error`` the exception. Only the first call counts."""
        ...


class Tracing(Protocol):
    """Traces across producers and workers (``adapters/otel``: OpenTelemetry); ``NoTracing`` by default.

    A producer's span context travels in each envelope it sends; a worker runs each task in a span that is a
    child of it, so a trace goes from the code that called ``.delay()`` to every attempt of the task.
    """

    def send(self, task: str, count: int, *, broadcast: bool = False, cron: str | None = None) -> SendSpan:
        """Start the span of sending ``count`` runs of ``task`` (the first task's name, for a mixed batch): a
        child of the caller's active span, if any. ``cron`` names the schedule of a cron tick, which starts
        a trace of its own."""
        ...

    def run(self, task: str, task_id: str, queue: str, attempt: int, carried: Mapping[str, str] | None, *,
            current: bool = True, ran_for: float = 0.0) -> RunSpan:
        """Start the span of attempt ``attempt`` of a task: a child of the ``carried`` context (none: a trace
        of its own). ``current``: the task's body runs inside it (spans it starts are its children; ``end``
        must then be called in the same context). ``ran_for``: a run seen once over (a hard timeout, recorded
        by the worker parent), which started that many seconds ago."""
        ...

    def flush(self) -> None:
        """Export what is still buffered: a worker process calls it before it exits (``os._exit`` runs no
        exit handlers)."""
        ...


class _NoSpan:
    carrier = None

    def end(self, *args: object, **kwargs: object) -> None:
        return None


NO_SPAN = _NoSpan()


class NoTracing:
    """The default: tracing off. Nothing is started and no envelope gets a ``trace`` field; callers on hot paths
    also check ``isinstance(tracing, NoTracing)`` to skip even these calls."""

    def send(self, task: str, count: int, *, broadcast: bool = False, cron: str | None = None) -> SendSpan:
        return NO_SPAN

    def run(self, task: str, task_id: str, queue: str, attempt: int, carried: Mapping[str, str] | None, *,
            current: bool = True, ran_for: float = 0.0) -> RunSpan:
        return NO_SPAN

    def flush(self) -> None:
        return None
