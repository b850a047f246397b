"""One app spread over N partitions: the Broker port over N ``RedisBroker``s, one per hash tag.

Each partition is a whole copy of the key layout under its own hash tag (``partitions.py``), so every script
stays inside one slot and, on a Redis Cluster, each partition lives on one node: N partitions spread one app
over up to N nodes. What lives where:

- tasks: a runnable task goes to the next partition in turn (each process starts at a random one, so
  producers do not all begin on the same node); a partition that cannot be reached is skipped and the task
  stored in the next. An eta task with a dedup key goes to the partition its key names (crc32), so that
  enqueueing it again finds and moves the waiting one.
- a unique task goes to the partition its lock's key names (crc32), where the script that stores it takes
  the lock: lock and task share a slot, and every producer finds the lock in the same place (global).
- cron claims, worker heartbeats, broadcasts (the copies in each worker's '@' queue are written by one
  script next to the heartbeats it reads) and the recorded partition count (``{p}:meta``): partition 0;
  except the claims of a unique task's schedule, in the partition of its lock.
- ownership, leases, dead letters, crash counts and kept outcomes (``keep_result``): in the partition the task
  is in (a task never changes partition). A consumer's lease is renewed in every partition, and a dead
  consumer is recovered in every partition. A handle knows only its task's id: ``task_state`` asks every
  partition, and ``wait_outcome`` blocks in the one that holds the task or its outcome.

Serving: a child reserves from one partition per call, and stays on a partition while it has work, so that
acknowledgements ride on the next reservation as with one partition. How long it stays depends on what the
batch was: from the child's highest queue, nothing can be waiting for a higher one, so it stays for up to
``STICKY_RESERVATIONS`` reservations in a row (no partition starves while another is busy); from a lower
queue, a higher-priority task may be waiting in another partition, so the next reservation starts at the
next partition. Strict priority holds within a partition; across partitions a higher-priority task waits
behind at most N - 1 lower-priority batches of each busy child (each sized to about 1 ms of work when a
higher queue could preempt it, ``BatchPlanner``) plus the task each is running. An idle child
sweeps every partition once, then blocks on its *home* partition's wake list (children of a worker get
homes in turn), for the whole idle wait when its worker's children cover every partition, else for at most
``SWEEP_WAIT`` so that a partition nobody blocks on is still looked at often.

Rate limits: a script stays in one slot, so the partitions cannot share one limit's state atomically. Each
partition enforces an equal share of every limit on its own (``RateLimits.split``: the rate divided by N, the
burst too, at least 1 each), with no extra round trip. Together they never exceed the limit (the bursts
may add up to N), but when the limited tasks are not spread evenly (a backlog in one partition, eta tasks
placed by their dedup key) the whole runs below it: a partition with work cannot borrow the share of an
idle one.

Changing N changes every tag but partition 0's, so the count is recorded in ``{p}:meta`` by the first process
that runs with N > 1, and a process with another N is refused (``ConfigError``) instead of stranding tasks.
"""

from __future__ import annotations

import itertools
import random
import threading
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, TypeVar

from hexq.core.errors import BrokerUnavailableError, ConfigError
from hexq.core.ports import (
    Cancelled,
    DeadLetter,
    Delivery,
    InFlight,
    MinuteTally,
    OutcomeRecord,
    OutgoingTask,
    QueueStats,
    Reservation,
    TaskState,
    Unrun,
    WorkerBeat,
)
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits

if TYPE_CHECKING:
    from hexq.adapters.redis.broker import RedisBroker
    from hexq.adapters.redis.cluster import ClusterRouter

T = TypeVar("T")
STICKY_RESERVATIONS = 4
SWEEP_WAIT = 0.1


def _top_queue(queues: Sequence[str]) -> str | None:
    """The highest-priority app queue a child serves (its own '@' broadcast queue comes before it)."""
    return next((queue for queue in queues if not queue.startswith("@")), None)


class PartitionedBroker:
    def __init__(self, partitions: Sequence[RedisBroker], *, home: int = 0, covers_all: bool = True,
                 router: ClusterRouter | None = None) -> None:
        self._parts = list(partitions)
        self._n = len(self._parts)
        self._meta_key = self._parts[0].keys.meta
        self._turn = itertools.count(random.randrange(self._n))
        self._home = home % self._n
        self._idle_cap = None if covers_all else SWEEP_WAIT
        self._router = router
        self._lock = threading.Lock()  # settlements may come from another thread of the child
        self._owner: dict[str, int] = {}  # task id -> partition, for tasks handed out and not settled
        self._unsent: dict[str, dict[int, list[str]]] = {}  # acks a partition could not take yet, by consumer
        self._kept: dict[str, OutcomeRecord] = {}  # outcomes to store with their task's ack, until it is sent
        self._start: dict[str, int] = {}
        self._streak: dict[str, int] = {}
        self._layout_checked = False
        self._cron_home: dict[str, int] = {}  # schedule key -> the partition its ticks are claimed in
        self._shares: dict[RateLimits, RateLimits] = {}  # a worker's limits, each split N ways (read once)

    @property
    def partitions(self) -> list[RedisBroker]:
        return list(self._parts)

    # -- the recorded layout -------------------------------------------------------------------------
    def _check_layout(self) -> None:
        if self._layout_checked or self._n == 1:  # one partition is today's layout: nothing to record
            return
        recorded = self._parts[0].record_partitions(self._n)
        if recorded != self._n:
            raise ConfigError(
                f"this app's keys are spread over {recorded} partitions ({self._meta_key} says so), but this "
                f"process was started with partitions={self._n}: every producer, worker and scheduler of one "
                "prefix must use the same count. To change it, stop the producers, let the workers empty every "
                f"partition (hexq info shows each), stop them, DEL {self._meta_key}, and start everything with "
                "the new count")
        self._layout_checked = True

    # -- producing -----------------------------------------------------------------------------------
    def _fixed_partition(self, task: OutgoingTask) -> int | None:
        if task.queue.startswith("@"):
            return 0
        if task.unique is not None:
            # A unique task and its lock share a slot, and every producer looks for the lock in the same
            # partition: the lock is global. Never skipped for another partition when down.
            return self.partition_of(task.unique.key)
        if task.dedup_key is not None:
            return zlib.crc32(task.dedup_key.encode()) % self._n
        return None

    def partition_of(self, key: str) -> int:
        """The partition a key (a dedup key, a unique task's lock) names."""
        return zlib.crc32(key.encode()) % self._n

    def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        self._check_layout()
        if len(tasks) == 1:
            fixed = self._fixed_partition(tasks[0])
            if fixed is not None:
                return self._parts[fixed].enqueue(tasks)
            return self._anywhere(lambda part: part.enqueue(tasks))
        groups: dict[int, list[int]] = {}  # partition -> the places of its tasks in ``tasks``
        for place, task in enumerate(tasks):
            fixed = self._fixed_partition(task)
            groups.setdefault(next(self._turn) % self._n if fixed is None else fixed, []).append(place)
        used = [task.id for task in tasks]
        for index, places in groups.items():
            for place, stored in zip(places, self._parts[index].enqueue([tasks[p] for p in places]), strict=True):
                used[place] = stored
        return used

    def _anywhere(self, store: Callable[[RedisBroker], T]) -> T:
        """Store in the next partition in turn, or the one after it if that one cannot be reached: a task
        belongs to no partition in particular. A reply lost after the store may store it twice, which
        at-least-once delivery allows."""
        first = next(self._turn) % self._n
        failure: BrokerUnavailableError | None = None
        for step in range(self._n):
            try:
                return store(self._parts[(first + step) % self._n])
            except BrokerUnavailableError as exc:
                failure = failure or exc
        assert failure is not None
        raise failure

    def cancel(self, task_id: str, now_ms: int, queues: Sequence[str] = (),
               outcome: OutcomeRecord | None = None) -> Cancelled:
        """The first partition that holds the task says what it was; every partition is asked otherwise
        (ids do not name their partition)."""
        self._check_layout()
        found = Cancelled.UNKNOWN
        for part in self._parts:
            found = part.cancel(task_id, now_ms, queues, outcome)
            if found is not Cancelled.UNKNOWN:
                return found
        return found

    def broadcast(self, task: OutgoingTask, now_ms: int) -> int:
        self._check_layout()  # as enqueue does: every write of a process with another partition count is refused
        return self._parts[0].broadcast(task, now_ms)

    # -- consuming -----------------------------------------------------------------------------------
    def _by_partition(self, ids: Iterable[str]) -> dict[int, list[str]]:
        """Ids grouped by the partition that handed them out; an id this process never received (or no
        longer remembers) goes to every partition, where settling an unknown id does nothing."""
        groups: dict[int, list[str]] = {}
        with self._lock:
            for task_id in ids:
                owner = self._owner.get(task_id)
                for index in (range(self._n) if owner is None else (owner,)):
                    groups.setdefault(index, []).append(task_id)
        return groups

    def _forget(self, ids: Iterable[str]) -> None:
        with self._lock:
            for task_id in ids:
                self._owner.pop(task_id, None)
                if self._kept:
                    self._kept.pop(task_id, None)

    def _keep(self, outcomes: Sequence[OutcomeRecord]) -> None:
        if outcomes:
            with self._lock:
                self._kept.update((outcome.task_id, outcome) for outcome in outcomes)

    def _outcomes_of(self, ids: Sequence[str]) -> list[OutcomeRecord]:
        """The kept outcomes of these acknowledged ids, sent with them to their partition."""
        if not self._kept:
            return []
        with self._lock:
            return [self._kept[task_id] for task_id in ids if task_id in self._kept]

    def _pending_acks(self, consumer: str, acks: Sequence[str]) -> dict[int, list[str]]:
        pending = self._by_partition(acks)
        for index, ids in self._unsent.pop(consumer, {}).items():
            pending.setdefault(index, []).extend(ids)
        return pending

    def _keep_unsent(self, consumer: str, index: int, ids: list[str]) -> None:
        self._unsent.setdefault(consumer, {}).setdefault(index, []).extend(ids)

    def _flush_acks(self, consumer: str, pending: dict[int, list[str]]) -> None:
        """Acknowledge what is left; what a partition cannot take now is kept and sent with a later call."""
        for index, ids in pending.items():
            try:
                self._parts[index].ack(consumer, ids, self._outcomes_of(ids))
                self._forget(ids)
            except BrokerUnavailableError:
                self._keep_unsent(consumer, index, ids)

    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0, rates: RateLimits = NO_RATE_LIMITS,
                outcomes: Sequence[OutcomeRecord] = ()) -> Reservation:
        self._check_layout()
        self._keep(outcomes)
        if rates:
            rates = self._shares.get(rates) or self._shares.setdefault(rates, rates.split(self._n))
        pending = self._pending_acks(consumer, acks)
        start = self._start.get(consumer, self._home)
        order = [(start + step) % self._n for step in range(self._n)]
        if wait >= 0.001:
            self._flush_acks(consumer, pending)
            pending = {}
            order = [index for index in order if index != self._home] + [self._home]
        etas: list[int] = []
        failure: BrokerUnavailableError | None = None
        answered = 0
        for index in order:
            blocking = wait >= 0.001 and index == self._home
            own_acks = pending.pop(index, [])
            try:
                reservation = self._parts[index].reserve(
                    consumer, queues, limit, now_ms, lease_ms, own_acks,
                    min(wait, self._idle_cap or wait) if blocking else 0.0, rates, self._outcomes_of(own_acks))
            except BrokerUnavailableError as exc:
                # One partition's node is down (a failover): serve the others meanwhile.
                failure = failure or exc
                if own_acks:
                    self._keep_unsent(consumer, index, own_acks)
                continue
            answered += 1
            self._forget(own_acks)
            if reservation.deliveries:
                self._flush_acks(consumer, pending)
                return self._took(consumer, start, index, reservation, _top_queue(queues))
            if reservation.next_eta_ms is not None:
                etas.append(reservation.next_eta_ms)
        self._flush_acks(consumer, pending)
        if failure is not None and answered == 0:
            raise failure  # nothing answered: the caller backs off, as with one server
        return Reservation((), min(etas) if etas else None)

    def _took(self, consumer: str, start: int, index: int, reservation: Reservation, top: str | None) -> Reservation:
        with self._lock:
            for delivery in reservation.deliveries:
                self._owner[delivery.id] = index
        streak = self._streak.get(consumer, 0) + 1 if index == start else 1
        served = reservation.deliveries[0].queue
        # Below the top queue, look in the next partition first: it may hold higher-priority work. A worker's
        # own broadcast queue ('@', served first) ranks above everything, so it never counts as below.
        limit = STICKY_RESERVATIONS if served == top or served.startswith("@") else 1
        if streak >= limit:  # let the other partitions be served first next time
            self._start[consumer], self._streak[consumer] = (index + 1) % self._n, 0
        else:
            self._start[consumer], self._streak[consumer] = index, streak
        return reservation

    def ack(self, consumer: str, ids: Sequence[str], outcomes: Sequence[OutcomeRecord] = ()) -> None:
        self._keep(outcomes)
        for index, group in self._by_partition(ids).items():
            self._parts[index].ack(consumer, group, self._outcomes_of(group))
            self._forget(group)

    def _owner_of(self, task_id: str) -> int | None:
        with self._lock:
            known = self._owner.get(task_id)
        if known is not None:
            return known
        for index, part in enumerate(self._parts):  # the parent settling for a dead child: ask each
            found = part.lookup(task_id)
            if found is not None and found.queue:
                return index
        return None

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        index = self._owner_of(task.id)
        if index is None:
            # Owned nowhere (recovered meanwhile): the task was handed back already; storing the retry
            # anyway keeps it, as the single-partition script would.
            index = 0
        self._parts[index].retry(consumer, task)
        self._forget((task.id,))

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int, outcome: OutcomeRecord | None = None, *, traceback: str = "") -> None:
        index = self._owner_of(task_id)
        self._parts[0 if index is None else index].dead_letter(consumer, task_id, queue, payload, reason, now_ms,
                                                               outcome, traceback=traceback)
        self._forget((task_id,))

    def discard(self, consumer: str, task_id: str, queue: str, why: Unrun,
                outcome: OutcomeRecord | None = None) -> None:
        index = self._owner_of(task_id)
        self._parts[0 if index is None else index].discard(consumer, task_id, queue, why, outcome)
        self._forget((task_id,))

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        released = 0
        for index, group in self._by_partition(ids).items():
            released += self._parts[index].release(consumer, group)
            self._forget(group)
        return released

    # -- results -------------------------------------------------------------------------------------
    def _states(self, task_id: str, now_ms: int) -> list[TaskState]:
        """The task's state in each partition, in partition order (one round trip each)."""
        return self._every(lambda part: part.task_state(task_id, now_ms))

    def _holder(self, task_id: str, now_ms: int) -> int | None:
        """The partition that holds the task, else the one that holds its outcome, else None."""
        states = self._states(task_id, now_ms)
        live = [index for index, state in enumerate(states) if state.live is not None]
        kept = [index for index, state in enumerate(states) if state.outcome is not None]
        return (live or kept)[0] if live or kept else None

    def record_outcome(self, outcome: OutcomeRecord) -> None:
        index = self._holder(outcome.task_id, outcome.finished_ms)
        self._parts[0 if index is None else index].record_outcome(outcome)

    def task_state(self, task_id: str, now_ms: int) -> TaskState:
        states = self._states(task_id, now_ms)
        live = next((state.live for state in states if state.live is not None), None)
        return TaskState(live, next((state.outcome for state in states if state.outcome is not None), None))

    def wait_outcome(self, task_id: str, now_ms: int, timeout: float) -> str | None:
        # A task never moves to another partition, so its outcome is stored where the task is: block there.
        # Held nowhere: None at once (the caller's task_state then says it is unknown).
        index = self._holder(task_id, now_ms)
        return None if index is None else self._parts[index].wait_outcome(task_id, now_ms, timeout)

    # -- supervision ---------------------------------------------------------------------------------
    def _every(self, call: Callable[[RedisBroker], T]) -> list[T]:
        """``call`` on every partition, even when some fail (a lease left unrenewed in a reachable partition
        would hand running tasks to someone else); the first failure is raised after all were tried."""
        results: list[T] = []
        failure: BrokerUnavailableError | None = None
        for part in self._parts:
            try:
                results.append(call(part))
            except BrokerUnavailableError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return results

    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> dict[str, str]:
        return {task_id: consumer for requests in self._every(lambda part: part.renew_leases(consumers, until_ms))
                for task_id, consumer in requests.items()}

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        return sum(self._every(lambda part: part.recover_consumer(consumer, crashed_ids)))

    def lookup(self, task_id: str) -> Delivery | None:
        with self._lock:
            known = self._owner.get(task_id)
        order = [known] if known is not None else []
        for index in [*order, *(i for i in range(self._n) if i != known)]:
            found = self._parts[index].lookup(task_id)
            if found is not None:
                return found
        return None

    def heartbeat(self, worker_id: str, info: str, now_ms: int, tally: MinuteTally | None = None) -> None:
        self._check_layout()
        self._parts[0].heartbeat(worker_id, info, now_ms, tally)

    def forget_worker(self, worker_id: str) -> None:
        self._parts[0].forget_worker(worker_id)

    # -- cron ----------------------------------------------------------------------------------------
    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        """In partition 0, except a unique task's tick: claimed in the partition of its lock, where the claim,
        the lock and the task share a slot (one script, exactly once as ever)."""
        self._check_layout()
        index = 0 if task.unique is None else self.partition_of(task.unique.key)
        self._cron_home[schedule_key] = index
        return self._parts[index].claim_cron_tick(schedule_key, fire_ms, task)

    def last_cron_tick(self, schedule_key: str) -> int | None:
        """Where this process last claimed the schedule's ticks; before its first claim, the latest tick
        recorded in any partition (a schedule whose task became unique, or stopped being, has older ticks
        in another partition), which is then where it looks until it claims."""
        index = self._cron_home.get(schedule_key)
        if index is not None:
            return self._parts[index].last_cron_tick(schedule_key)
        recorded = [(tick, i) for i, part in enumerate(self._parts)
                    if (tick := part.last_cron_tick(schedule_key)) is not None]
        latest, self._cron_home[schedule_key] = max(recorded, default=(None, 0))
        return latest

    # -- inspection and administration ---------------------------------------------------------------
    def partition_stats(self, queues: Sequence[str]) -> list[list[QueueStats]]:
        """``queue_stats`` of each partition, in partition order (``hexq info`` shows them). Checks the
        recorded partition count first: a worker's start-up probe reads this, so a worker started with
        another count is refused at once instead of its children failing one by one."""
        self._check_layout()
        return [part.queue_stats(queues) for part in self._parts]

    def partition_nodes(self) -> list[str | None]:
        """The ``host:port`` serving each partition on a cluster (None on one server), for ``hexq info``."""
        if self._router is None:
            return [None] * self._n
        return ["{}:{}".format(*self._router.primary_for(part.keys.tag)) for part in self._parts]

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        per_partition = self.partition_stats(queues)
        return [QueueStats(rows[0].name, sum(r.pending for r in rows), sum(r.eta for r in rows),
                           sum(r.in_flight for r in rows), sum(r.expired for r in rows))
                for rows in zip(*per_partition, strict=True)]

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        rows = [row for part in self._parts for row in part.in_flight(limit)]
        return sorted(rows, key=lambda row: row.since_ms)[:limit]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = [row for part in self._parts for row in part.dead_letters(limit)]
        return sorted(rows, key=lambda row: row.failed_at_ms, reverse=True)[:max(limit, 0)]

    def dead_count(self) -> int:
        return sum(part.dead_count() for part in self._parts)

    def find_dead(self, task_id: str) -> list[DeadLetter]:
        rows = [row for part in self._parts for row in part.find_dead(task_id)]
        return sorted(rows, key=lambda row: row.failed_at_ms, reverse=True)

    def workers(self) -> list[WorkerBeat]:
        return self._parts[0].workers()

    def tallies(self, from_ms: int, to_ms: int) -> list[MinuteTally]:
        return self._parts[0].tallies(from_ms, to_ms)  # written by heartbeats, which live in partition 0

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        return sum(part.requeue_dead(ids) for part in self._parts)

    def purge_dead(self) -> int:
        return sum(part.purge_dead() for part in self._parts)

    def delete_dead(self, ids: Sequence[str]) -> int:
        # Atomic per partition; a letter lives in the partition its task was in.
        return sum(part.delete_dead(ids) for part in self._parts) if ids else 0

    def purge_queue(self, queue: str) -> tuple[int, int]:
        counts = [part.purge_queue(queue) for part in self._parts]
        return sum(c[0] for c in counts), sum(c[1] for c in counts)

    def close(self) -> None:
        for part in self._parts:
            part.close()
        if self._router is not None:
            self._router.close()

