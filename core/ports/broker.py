"""The broker, split by the roles its callers play: producing, consuming, supervising a worker's
consumers, scheduling, inspecting and administering. One adapter class implements them all (``Broker``);
each service depends only on the role it uses, and the contract suite is organised the same way.

Every method states its contract; ``tests/unit/broker_contract.py`` checks each adapter against it. Times
cross the boundary as integer milliseconds since the epoch, passed in by the caller, so adapters never read
a clock of their own and tests control time. The rules that are policy rather than storage (how long an
expired lease is only suspected, when a silent worker is forgotten, which workers count as live) come from
``hexq.core.rules`` and are handed to the adapter by the composition root.

Cancellation: ``Producer.cancel`` removes a task that is not owned, and *marks* one that is. A mark lasts as
long as the task is owned and is honoured by every way an owned task ends other than an acknowledgement:
``retry``, ``dead_letter``, ``release`` and the recovery of a dead consumer (``recover_consumer``, and expired
leases in ``reserve``) end a marked task as ``discard(..., "cancelled")`` does instead of storing it again,
so a cancelled task never runs again; ``renew_leases`` tells the worker parent about its children's marked
tasks, and forgets marks whose task is no longer owned (acknowledged: it finished before it could be stopped).

Vocabulary: a *consumer* is one worker child; it *owns* the tasks it reserved until it acknowledges,
retries, dead-letters or releases them. A consumer's lease is renewed by ``renew_leases``. An expired lease
is first only *suspected* by the ``reserve`` call that sees it; a later reservation at least
``LeaseRules.expiry_grace_ms`` (by the callers' ``now_ms``) after that puts the consumer's tasks back at the
head of their queues, crash counted, unless the lease was renewed meanwhile. The grace exists because
nobody can renew while the store is unreachable: after an outage longer than the lease, live workers get the
chance to renew before their running tasks are handed to someone else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hexq.core.ports.records import (
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


class Producer(Protocol):
    """What ``.delay()`` and ``.broadcast()`` need."""

    def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        """Store tasks; each one is stored atomically (payload and queue entry together) and in order.
        Returns, for each task in order, the id it is stored under.

        Runnable tasks go to the tail of their queue (FIFO); eta tasks to the queue's eta set. Several tasks
        may be sent in one round trip. Raises BrokerFullError if the store refused the write for lack of
        memory, BrokerUnavailableError if it cannot be reached; in both cases the caller may retry.

        Unique tasks (``task.unique`` set): in the same atomic step, the task takes its lock
        (``unique.key``) for ``unique.window_ms`` and is stored; if another stored task holds that lock, this
        one is not stored and the holder's id is returned in its place (also for a duplicate earlier in the
        same call). A lock whose holder is no longer stored (its payload gone) counts as free, and a task
        holding its own lock (the same id sent again after a lost reply) is not stored twice. The lock is
        global: every producer of the app sees it, whatever queue or partition. It is released, if the task
        still holds it, by ``ack``, ``dead_letter``, ``discard`` and ``purge_queue`` of the task (its id names its lock:
        ``hexq.core.unique.lock_of``), and it expires after ``window_ms``; ``retry``, ``release`` and
        crash recovery keep it. Tasks that are not unique never touch a lock.
        """
        ...

    def broadcast(self, task: OutgoingTask, now_ms: int) -> int:
        """Store one copy of ``task`` (a runnable task: no eta, no dedup key) for every live worker, at the
        tail of the worker's private queue ``hexq.core.queues.broadcast_queue(worker_id)``, which its
        children serve first; returns how many copies were stored.

        A worker is live when its last ``heartbeat`` is at least ``now_ms - LeaseRules.live_worker_ms``
        (or later). Atomic: every live worker gets its copy or none does (on BrokerUnavailableError a lost
        reply cannot tell which; sending again may run it twice on a worker). Each copy has an id of its own
        (the task's id, '.', a number; so at most 11 bytes longer): acknowledging or dead-lettering one never
        touches another. A copy is an ordinary task from then on (leases, crash recovery, at least once). A
        worker whose first heartbeat comes after the call does not get it; with no live worker nothing is
        stored and 0 is returned. ``task.queue`` is not used (the payload names the queue it was sent to).
        """
        ...


class AsyncProducer(Protocol):
    """What ``await task.adelay()`` needs: ``Producer.enqueue`` for an event loop."""

    async def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        """``Producer.enqueue``, awaited, with the same contract: the same atomic store (on Redis the same MULTI
        and scripts, unique locks included), the same ids returned, the same errors. It never blocks the
        event loop: it waits for the network without holding the loop, or runs the blocking call in a thread
        (an adapter says which)."""
        ...

    async def aclose(self) -> None:
        """Release the connections this producer opened. It may still be used afterwards (it opens new ones)."""
        ...


class Canceller(Protocol):
    """What ``app.cancel()``, a handle's ``.cancel()`` and ``hexq cancel`` need."""

    def cancel(self, task_id: str, now_ms: int, queues: Sequence[str] = (),
               outcome: OutcomeRecord | None = None) -> Cancelled:
        """Atomically cancel one task, and say what was found (see the module docstring). ``queues`` are the
        queues it may be in (the app's); an adapter that cannot tell a task's queue from its id looks there.
        ``outcome`` is its "cancelled" outcome to keep (``Results``), stored when the task ends cancelled.

        - queued, or waiting for its eta or a retry's delay: removed (queue or eta entry, payload, crash count,
          eta dedup key, unique lock) and ``outcome`` stored, so it never runs; ``Cancelled.REMOVED``;
        - owned by a consumer (running, or reserved and not started): marked, with ``outcome``, which is
          stored by whatever drops it (``discard`` stores its own if given one); nothing else changes; the
          worker parent learns of it at its next ``renew_leases``; ``Cancelled.RUNNING``, again each time
          (the latest ``outcome`` kept) until the task ends;
        - not stored, but an outcome of it is kept (unexpired at ``now_ms``): nothing changes;
          ``Cancelled.FINISHED``;
        - anything else: nothing changes; ``Cancelled.UNKNOWN``.

        A stored task in none of ``queues`` (and whose queue the adapter cannot tell) loses its payload, so
        whoever reserves it skips it: it never runs either.
        """
        ...


class Consumer(Protocol):
    """What a worker child needs: take tasks by priority and settle each one."""

    def reserve(
        self,
        consumer: str,
        queues: Sequence[str],
        limit: int,
        now_ms: int,
        lease_ms: int,
        acks: Sequence[str] = (),
        wait: float = 0.0,
        rates: RateLimits = NO_RATE_LIMITS,
        outcomes: Sequence[OutcomeRecord] = (),
    ) -> Reservation:
        """Atomically: acknowledge ``acks``; move eta tasks due at ``now_ms`` of ``queues`` to the tail of
        their queue; suspect or put back the tasks of consumers whose lease has expired (see the module
        docstring); then take up to ``limit`` tasks from the head of the first non-empty queue in
        ``queues`` (strict priority: a lower queue is never served while a higher one has tasks), owned by
        ``consumer`` with a lease until ``now_ms + lease_ms``. An empty result means every served queue was
        empty (or, with ``rates``, held back by a limit: see below). A lease has expired only once
        ``now_ms`` is past its deadline; an adapter may recover a bounded number of expired consumers per
        call (later reservations recover the rest).

        With ``wait`` > 0 (the caller's last reservation was empty) the acks are applied first, then the
        call blocks up to ``wait`` seconds until a task may have been stored (wake-ups may be spurious; a
        task stored just before the call is not missed), then reserves as above, so that an idle worker
        takes a new task in one round trip. ``now_ms`` is not advanced by the wait: an eta task that falls
        due during the wait is taken by the next call, never early.

        ``rates`` (``hexq.core.rate_limit``; empty by default, and then none of this costs anything): the
        limits the caller enforces, each global to every consumer of the store, applied atomically with the
        take by the arithmetic of ``RateGate`` at ``now_ms`` and the state stored per limit. A queue over its
        own limit is skipped as if empty (lower queues are served; its tasks stay at its head); the take from
        a limited queue is at most what the limit allows at ``now_ms``. A task over its own task limit is
        moved, in the same step, to its queue's eta set at the time ``RateGate.admit`` gives (its id, payload
        and crash count unchanged, no attempt counted), and the take goes on with the tasks behind it (at
        most 1000 looked at per queue). ``next_eta_ms`` is then also bounded by the earliest time a task held
        back by a limit may be taken, so an idle caller waits until then and not longer. Broadcast queues
        ('@...') are never limited.

        ``outcomes``: the kept outcomes of acknowledged tasks (each one's id is in ``acks``), stored in the same
        atomic step as the acks (``Results.record_outcome``'s rule), so keeping results costs no round trip."""
        ...

    def ack(self, consumer: str, ids: Sequence[str], outcomes: Sequence[OutcomeRecord] = ()) -> None:
        """Forget finished tasks (payload and ownership). Unknown or already acknowledged ids are ignored.
        ``outcomes`` (each for an id in ``ids``) are stored in the same atomic step, as ``reserve`` does."""
        ...

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        """Atomically replace the owned task ``task.id`` with ``task`` (new payload): to the eta set when
        ``eta_ms`` is set, else to the tail of its queue; ownership ends and the crash count is reset. A task
        marked cancelled is discarded instead."""
        ...

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int, outcome: OutcomeRecord | None = None, *, traceback: str = "") -> None:
        """Atomically end ownership of ``task_id``, drop its stored payload and append a dead letter, and store
        ``outcome`` (the task's kept outcome, failed or dead) when given; a task marked cancelled is discarded
        instead (no dead letter, no outcome stored). ``traceback`` (the failure's, "" when there is none) is
        kept in the dead letter as given and read back by ``dead_letters`` and ``find_dead``."""
        ...

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        """Hand back owned tasks that never started: to the head of their queues, order kept, no crash
        counted; those marked cancelled are discarded instead. Returns how many were handed back."""
        ...

    def discard(self, consumer: str, task_id: str, queue: str, why: Unrun,
                outcome: OutcomeRecord | None = None) -> None:
        """Atomically end the owned task ``task_id`` for good without running it (again): end ownership, drop
        its payload, crash count and cancellation mark, store ``outcome`` (else the one its mark carries,
        if any) and, for ``why`` "expired" (its deadline passed before it started), add one to ``queue``'s
        expired count (``QueueStats.expired``). Like ``dead_letter``, the payload goes even if ``consumer``
        no longer owns it; an unknown id only counts (and keeps ``outcome``)."""
        ...


class Results(Protocol):
    """What task handles need (``keep_result``): each task's kept outcome, and where a task is.

    An outcome is one JSON document per task id (``hexq.core.outcome``), stored with a time to live; a later
    one replaces it. It is written with the acknowledgement or the dead letter that ends the task
    (``Consumer.reserve``/``ack``/``dead_letter``'s ``outcomes``), or on its own by ``record_outcome``
    (cancellation, deadlines). ``requeue_dead`` drops the outcome of each task it requeues, which will have a
    new one."""

    def record_outcome(self, outcome: OutcomeRecord) -> None:
        """Store ``outcome`` for ``outcome.task_id`` (replacing any earlier one), kept ``ttl_ms``, and wake every
        ``wait_outcome`` of that id. The task itself is not touched."""
        ...

    def task_state(self, task_id: str, now_ms: int) -> TaskState:
        """In one atomic read: RUNNING if a consumer owns the task; SCHEDULED if it waits in an eta set with an
        eta after ``now_ms`` (QUEUED once due, as the next reservation will promote it); QUEUED if it is
        otherwise stored; else not live (None). ``outcome``: the kept outcome, if any and not expired at
        ``now_ms`` (both may be set: a requeued or redelivered task that had ended once)."""
        ...

    def wait_outcome(self, task_id: str, now_ms: int, timeout: float) -> str | None:
        """The kept outcome of ``task_id``, waiting up to ``timeout`` seconds for one to be stored; None if none
        came. Blocks on the broker's own notification (no polling loop on Redis); may return None before the
        timeout (a spurious wake-up, or a task that is nowhere), so callers re-check ``task_state``. Many
        waiters of one id are all woken, and none of them consumes the outcome."""
        ...


class Supervision(Protocol):
    """What a worker parent needs to keep its children's consumers alive and clean up after dead ones."""

    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> dict[str, str]:
        """Extend the leases of live consumers (and clear any suspicion of them). Returns the cancellation
        requests for the tasks they own, task id -> the consumer that owns it (``Producer.cancel``), and
        forgets the marks of tasks nobody owns any more."""
        ...

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        """The consumer died: put every task it owned back at the head of its queue (those marked cancelled
        are discarded instead). The ids in ``crashed_ids`` were running and get their crash count raised.
        Returns how many went back."""
        ...

    def lookup(self, task_id: str) -> Delivery | None:
        """A stored task (queued, waiting or owned): its payload, its crash count, and the queue it is
        owned from ("" when nobody owns it). An owned task whose payload is gone (acknowledged late by a
        consumer whose lease had expired) has payload None; None is returned only when there is neither a
        payload nor an owner. Not necessarily an atomic snapshot: a task settled meanwhile may show either
        way, which is why callers act on it only through the atomic methods."""
        ...

    def heartbeat(self, worker_id: str, info: str, now_ms: int, tally: MinuteTally | None = None) -> None:
        """Record that a worker parent is alive (shown by ``info``). Workers whose heartbeat is older than
        ``LeaseRules.stale_worker_ms`` (they died without ``forget_worker``) are forgotten as
        ``forget_worker`` does, in the same call.

        With ``tally``, in the same atomic step and round trip: add its ``done`` and ``failed`` counts to the
        per-minute counters of ``tally.minute_ms``, and set its ``pending`` and ``eta`` samples there; a
        minute's counters are kept at least ``LeaseRules.tally_ttl_ms`` after it, then dropped. No tally, no
        counter written. (A heartbeat whose reply is lost and is sent again counts twice: these are for a
        chart, not for accounting.)"""
        ...

    def forget_worker(self, worker_id: str) -> None:
        """On a worker's clean exit, atomically: remove its heartbeat, and its private broadcast queue with
        the copies waiting there (a broadcast stored meanwhile cannot be left behind). Copies its children
        still own are not touched (they are settled as any task). Unknown workers are ignored."""
        ...


class CronStore(Protocol):
    """What the scheduler needs: exactly-once claims of cron ticks."""

    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        """Atomically: if ``fire_ms`` is later than the last tick recorded for ``schedule_key``, record it
        and enqueue ``task``; return True. Otherwise do nothing and return False. This makes each tick fire
        exactly once however many schedulers race for it. A unique ``task`` whose lock is held is not stored,
        but the tick is still recorded (and True returned): the run still waiting or running stands for it."""
        ...

    def last_cron_tick(self, schedule_key: str) -> int | None:
        """The last tick recorded by ``claim_cron_tick`` for this schedule, in epoch milliseconds."""
        ...


class Inspection(Protocol):
    """Read-only views for ``hexq info``, metrics and dashboards; none of them changes anything."""

    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        """Pending, waiting-eta and in-flight counts per queue, in the order given, with how many of the
        queue's tasks ever expired (``Consumer.discard``)."""
        ...

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        """Owned tasks with their consumer and reservation time, oldest first."""
        ...

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The newest dead letters first."""
        ...

    def dead_count(self) -> int:
        """How many dead letters there are, without fetching them."""
        ...

    def find_dead(self, task_id: str) -> list[DeadLetter]:
        """The dead letters whose id is exactly ``task_id``, newest first; [] when there are none (usually
        one: a task is dead-lettered once unless it was requeued and died again, or a raw entry reused an id).
        May scan every dead letter; meant for an operator's search, not a hot path."""
        ...

    def workers(self) -> list[WorkerBeat]:
        """Every worker heartbeat recorded, newest first."""
        ...

    def tallies(self, from_ms: int, to_ms: int) -> list[MinuteTally]:
        """The per-minute counters written by ``heartbeat`` for the minutes from the one holding ``from_ms`` to
        the one holding ``to_ms``, oldest first; minutes with nothing recorded are left out. Each is the sum of
        every worker's increments, with the latest depth samples. At most a day is read."""
        ...


class Administration(Protocol):
    """Operator actions behind ``hexq purge`` and ``hexq dead``."""

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all, or those with these ids) back to the tail of their queue, with their
        crash count reset and their kept outcome dropped. Dead letters without a payload are dropped. Returns
        how many were requeued."""
        ...

    def purge_dead(self) -> int:
        """Delete every dead letter; returns how many."""
        ...

    def delete_dead(self, ids: Sequence[str]) -> int:
        """Delete the dead letters with these ids (every letter of an id that has several); unknown ids are
        ignored, an empty list deletes nothing. Atomic. Returns how many were deleted."""
        ...

    def purge_queue(self, queue: str) -> tuple[int, int]:
        """Delete a queue's pending tasks and its eta set; returns (pending deleted, eta deleted)."""
        ...


class Broker(Producer, Canceller, Consumer, Results, Supervision, CronStore, Inspection, Administration,
             Protocol):
    """Every role at once: what an adapter implements."""

    def close(self) -> None:
        """Release connections. The broker may not be used afterwards."""
        ...
