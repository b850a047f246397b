"""The ports: what the core needs from the outside world, as ``typing.Protocol``s.

Every broker method states its contract; the shared contract suite in ``tests/unit/broker_contract.py``
checks each adapter against it. Times cross the broker boundary as integer milliseconds since the epoch,
passed in by the caller, so that adapters never read a clock of their own and tests control time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import attrs


@attrs.frozen
class OutgoingTask:
    """An encoded task ready to be stored.

    ``eta_ms`` None means "runnable now" (appended to the tail of ``queue``). With ``eta_ms`` set the task
    waits in the queue's eta set; if ``dedup_key`` is set and a waiting eta task of the same queue has the
    same key, that one is replaced (its eta and payload updated) instead of adding a second.
    """

    id: str
    queue: str
    payload: str
    eta_ms: int | None = None
    dedup_key: str | None = None


@attrs.frozen
class Delivery:
    """A reserved task. ``payload`` is None when the id had no stored payload (already acknowledged by a
    consumer whose lease had expired, or an entry hexq did not write); ``crashes`` counts how often a
    process died while running this task."""

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
    id: str
    queue: str
    payload: str | None
    reason: str
    failed_at_ms: int


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


@attrs.frozen
class WorkerBeat:
    worker_id: str
    last_beat_ms: int
    info: str  # JSON text written by the worker (host, pid, queues, children)


class Broker(Protocol):
    """Durable storage of tasks, with leases that make delivery at-least-once.

    Vocabulary: a *consumer* is one worker child; it *owns* the tasks it reserved until it acknowledges,
    retries, dead-letters or releases them. A consumer's lease is renewed by ``renew_leases``. An expired
    lease is first only *suspected* by the ``reserve`` or ``recover_expired`` call that sees it; a later
    such call at least 3 seconds (by the callers' ``now_ms``) after that puts the consumer's tasks back at
    the head of their queues, unless the lease was renewed meanwhile. The grace exists because nobody can
    renew while the store is unreachable: after an outage longer than the lease, live workers get the
    chance to renew before their running tasks are handed to someone else.
    """

    def enqueue(self, tasks: Sequence[OutgoingTask]) -> None:
        """Store tasks; each one is stored atomically (payload and queue entry together) and in order.

        Runnable tasks go to the tail of their queue (FIFO); eta tasks to the queue's eta set. Several tasks
        may be sent in one round trip. Raises BrokerFullError if the store refused the write for lack of
        memory, BrokerUnavailableError if it cannot be reached; in both cases the caller may retry.
        """
        ...

    def reserve(
        self,
        consumer: str,
        queues: Sequence[str],
        limit: int,
        now_ms: int,
        lease_ms: int,
        acks: Sequence[str] = (),
        wait: float = 0.0,
    ) -> Reservation:
        """Atomically: acknowledge ``acks``; move eta tasks due at ``now_ms`` of ``queues`` to the tail of
        their queue; put back the tasks of consumers whose lease has expired; then take up to ``limit``
        tasks from the head of the first non-empty queue in ``queues`` (strict priority: a lower queue is
        never served while a higher one has tasks), owned by ``consumer`` with a lease until
        ``now_ms + lease_ms``. An empty result means every served queue was empty.

        With ``wait`` > 0 (the caller's last reservation was empty) the acks are applied first, then the
        call blocks up to ``wait`` seconds as ``wait_for_work`` does, then reserves as above, so that an
        idle worker takes a new task in one round trip. ``now_ms`` is not advanced by the wait: an eta
        task that falls due during the wait is taken by the next call, never early."""
        ...

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds until a task may have been enqueued; True if woken by one.
        Wake-ups may be spurious; a task enqueued just before the call must not be missed."""
        ...

    def ack(self, consumer: str, ids: Sequence[str]) -> None:
        """Forget finished tasks (payload and ownership). Unknown or already acknowledged ids are ignored."""
        ...

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        """Atomically replace the owned task ``task.id`` with ``task`` (new payload): to the eta set when
        ``eta_ms`` is set, else to the tail of its queue; ownership ends."""
        ...

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int) -> None:
        """Atomically end ownership of ``task_id``, drop its stored payload and append a dead letter."""
        ...

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        """Hand back owned tasks that never started: to the head of their queues, order kept, no crash
        counted. Returns how many were handed back."""
        ...

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        """The consumer died: put every task it owned back at the head of its queue. The ids in
        ``crashed_ids`` were running and get their crash count raised. Returns how many went back."""
        ...

    def recover_expired(self, now_ms: int) -> int:
        """Put back the tasks of every consumer whose lease expired before ``now_ms`` (crash counted)."""
        ...

    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> None:
        """Extend the leases of live consumers; called periodically by their worker parent."""
        ...

    def fetch_payload(self, task_id: str) -> str | bytes | None:
        """The stored payload of a task that is queued, waiting or owned; None if there is none."""
        ...

    def publish_broadcast(self, payload: str) -> int:
        """Send a payload to every subscribed worker; returns how many received it."""
        ...

    def subscribe_broadcast(self) -> BroadcastSubscription:
        """Start receiving broadcasts; only payloads published after this returns are received."""
        ...

    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        """Atomically: if ``fire_ms`` is later than the last tick recorded for ``schedule_key``, record it
        and enqueue ``task``; return True. Otherwise do nothing and return False. This makes each tick fire
        exactly once however many schedulers race for it."""
        ...

    def last_cron_tick(self, schedule_key: str) -> int | None:
        """The last tick recorded by ``claim_cron_tick`` for this schedule, in epoch milliseconds."""
        ...

    def heartbeat(self, worker_id: str, info: str, now_ms: int) -> None:
        """Record that a worker parent is alive (shown by ``info``). Heartbeats older than 10 minutes
        (workers that died without ``forget_worker``) are dropped."""
        ...

    def forget_worker(self, worker_id: str) -> None:
        """Remove a worker's heartbeat, on clean exit."""
        ...

    def workers(self) -> list[WorkerBeat]:
        """Every worker heartbeat recorded, newest first."""
        ...

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """Pending, waiting-eta and in-flight counts per queue, in the order given."""
        ...

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        """Owned tasks with their consumer and reservation time, oldest first."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        ...

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or those with these ids) back to the tail of their queue, with their
        crash count reset. Dead letters without a payload are dropped. Returns how many were requeued."""
        ...

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many."""
        ...

    def purge_queue(self, queue: str) -> tuple[int, int]:
        """Delete a queue's pending tasks and its eta set; returns (pending deleted, eta deleted)."""
        ...

    def close(self) -> None:
        """Release connections. The broker may not be used afterwards."""
        ...


class BroadcastSubscription(Protocol):
    def get(self, timeout: float) -> str | bytes | None:
        """The next broadcast payload, or None after ``timeout`` seconds without one. Bytes only when
        what was published is not UTF-8 text."""
        ...

    def close(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Wall-clock time, seconds since the epoch (UTC)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards; for measuring durations."""
        ...

    def sleep(self, seconds: float) -> None:
        """Pause the caller; a fake clock advances instead of blocking."""
        ...


@attrs.frozen
class ChildExit:
    pid: int
    code: int | None  # exit status, or None when killed by a signal
    signal: int | None


class RunningBoard(Protocol):
    """Memory shared between a worker parent and its children: which tasks each child is running now.

    A child writes, the parent reads; no system call per task, so telling the parent costs nothing on the
    hot path. Deadlines are in the ProcessControl's monotonic clock, which all processes share.
    """

    def started(self, child: int, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None:
        ...

    def finished(self, child: int, slot: int) -> None: ...

    def running(self, child: int) -> list[tuple[str, float, float]]:
        """(task id, soft deadline, hard deadline) of each task the child is running; 0.0 = none."""
        ...

    def reset(self, child: int) -> None: ...


class ProcessControl(Protocol):
    """Starting, signalling and watching worker children, and reading memory use."""

    def board(self, children: int, slots: int) -> RunningBoard:
        """Create the shared running-task board; call before starting children so they inherit it."""
        ...

    def start_child(self, target: Callable[[], int]) -> int:
        """Run ``target`` in a new child process (its return value is the exit code); returns the pid."""
        ...

    def terminate(self, pid: int) -> None:
        """Ask a child to finish its current work and exit (SIGTERM)."""
        ...

    def interrupt_task(self, pid: int) -> None:
        """Ask a child to abandon its current sync task by raising SoftTimeout in it."""
        ...

    def kill(self, pid: int) -> None:
        """Stop a child at once (SIGKILL); it gets no chance to clean up."""
        ...

    def reap(self) -> list[ChildExit]:
        """Children that have exited since the last call, without blocking."""
        ...

    def is_alive(self, pid: int) -> bool: ...

    def memory_percent(self) -> float:
        """Share of the machine's RAM in use, 0-100."""
        ...

    def rss(self, pid: int) -> int:
        """Resident memory of a process in bytes; 0 if it is gone."""
        ...

    def monotonic(self) -> float:
        """The monotonic clock shared by parent and children, in seconds."""
        ...


class Metrics(Protocol):
    """Counters and timings for monitoring. Implementations must be cheap: they are on the per-task path."""

    def enqueued(self, task: str, queue: str, count: int) -> None: ...

    def started(self, task: str, queue: str) -> None: ...

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        """``outcome`` is one of ``succeeded``, ``retried``, ``dead_lettered`` (a failure is retried or
        dead-lettered, so ``failed`` = retried + dead_lettered)."""
        ...

    def recovered(self, count: int) -> None:
        """Tasks put back in their queues after the process running them died."""
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

    def queue_depths(self, pending: dict[str, int], eta: dict[str, int], in_flight: dict[str, int]) -> None:
        return None
