"""A complete Broker held in process memory; thread-safe, no I/O. Same contract as the Redis adapter."""

from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Sequence

import attrs

from hexq.core.ports import (
    DeadLetter,
    Delivery,
    InFlight,
    OutgoingTask,
    QueueStats,
    Reservation,
    WorkerBeat,
)


@attrs.define
class _Owned:
    queue: str
    since_ms: int


class _Subscription:
    def __init__(self, broker: MemoryBroker) -> None:
        self._broker = broker
        self._inbox: deque[str] = deque()
        self._ready = threading.Condition()

    def deliver(self, payload: str) -> None:
        with self._ready:
            self._inbox.append(payload)
            self._ready.notify_all()

    def get(self, timeout: float) -> str | None:
        with self._ready:
            if not self._inbox:
                self._ready.wait(timeout)
            return self._inbox.popleft() if self._inbox else None

    def close(self) -> None:
        self._broker._unsubscribe(self)


# Same rule as the Redis adapter (see _lib.lua): an expired lease is recovered only if it is still not
# renewed this long after a reservation first saw it expired, so an outage that stopped every renewal
# does not hand live workers' tasks to others.
EXPIRY_GRACE_MS = 3000
STALE_WORKER_MS = 10 * 60 * 1000  # same as the Redis adapter


class MemoryBroker:
    """Dicts and deques behind one lock; every method is atomic because it holds the lock throughout."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._queues: dict[str, deque[str]] = {}
        self._eta: dict[str, list[tuple[int, str]]] = {}  # queue -> sorted (eta_ms, id)
        self._eta_keys: dict[str, dict[str, str]] = {}  # queue -> dedup key -> id
        self._payloads: dict[str, str] = {}
        self._crashes: dict[str, int] = {}
        self._owned: dict[str, dict[str, _Owned]] = {}  # consumer -> id -> ownership
        self._leases: dict[str, int] = {}  # consumer -> lease deadline ms
        self._suspects: dict[str, int] = {}  # consumer -> when a lease was first seen expired (ms)
        self._dead: list[DeadLetter] = []
        self._cron: dict[str, int] = {}
        self._beats: dict[str, WorkerBeat] = {}
        self._subscribers: list[_Subscription] = []
        self._wakeups = 0

    # -- producing ---------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[OutgoingTask]) -> None:
        with self._lock:
            for task in tasks:
                self._store(task)
            self._wakeups += len(tasks)
            self._lock.notify_all()

    def _store(self, task: OutgoingTask) -> None:
        if task.eta_ms is None:
            self._payloads[task.id] = task.payload
            self._queues.setdefault(task.queue, deque()).append(task.id)
            return
        keys = self._eta_keys.setdefault(task.queue, {})
        waiting = self._eta.setdefault(task.queue, [])
        task_id = task.id
        if task.dedup_key is not None and task.dedup_key in keys:
            task_id = keys[task.dedup_key]
            waiting[:] = [(ms, i) for ms, i in waiting if i != task_id]
        if task.dedup_key is not None:
            keys[task.dedup_key] = task_id
        self._payloads[task_id] = task.payload
        bisect.insort(waiting, (task.eta_ms, task_id))

    # -- consuming ---------------------------------------------------------------------------------
    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0) -> Reservation:
        if wait > 0:
            self.ack(consumer, acks)
            acks = ()
            self.wait_for_work(wait)
        with self._lock:
            self._ack(consumer, acks)
            for queue in queues:
                self._promote(queue, now_ms)
            self._recover_expired(now_ms)
            taken: list[Delivery] = []
            for queue in queues:
                pending = self._queues.get(queue)
                if not pending:
                    continue
                owned = self._owned.setdefault(consumer, {})
                while pending and len(taken) < limit:
                    task_id = pending.popleft()
                    owned[task_id] = _Owned(queue, now_ms)
                    taken.append(Delivery(task_id, queue, self._payloads.get(task_id),
                                          self._crashes.get(task_id, 0)))
                break
            if taken:
                self._leases[consumer] = now_ms + lease_ms
            next_eta = min((w[0][0] for q in queues if (w := self._eta.get(q))), default=None)
            return Reservation(tuple(taken), next_eta)

    def _promote(self, queue: str, now_ms: int) -> None:
        waiting = self._eta.get(queue)
        if not waiting:
            return
        split = bisect.bisect_right(waiting, (now_ms, "\U0010ffff"))
        due, waiting[:] = waiting[:split], waiting[split:]
        if due:
            keys = self._eta_keys.get(queue, {})
            due_ids = {task_id for _, task_id in due}
            for key in [k for k, i in keys.items() if i in due_ids]:
                del keys[key]
            self._queues.setdefault(queue, deque()).extend(task_id for _, task_id in due)

    def wait_for_work(self, timeout: float) -> bool:
        with self._lock:
            if self._wakeups == 0:
                self._lock.wait(timeout)
            woken = self._wakeups > 0
            self._wakeups = max(0, self._wakeups - 1)
            return woken

    def ack(self, consumer: str, ids: Sequence[str]) -> None:
        with self._lock:
            self._ack(consumer, ids)

    def _ack(self, consumer: str, ids: Sequence[str]) -> None:
        owned = self._owned.get(consumer, {})
        for task_id in ids:
            owned.pop(task_id, None)
            self._payloads.pop(task_id, None)
            self._crashes.pop(task_id, None)

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        with self._lock:
            self._owned.get(consumer, {}).pop(task.id, None)
            self._store(attrs.evolve(task, dedup_key=None))
            self._crashes.pop(task.id, None)
            self._wakeups += 1
            self._lock.notify_all()

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int) -> None:
        with self._lock:
            self._owned.get(consumer, {}).pop(task_id, None)
            self._payloads.pop(task_id, None)
            self._crashes.pop(task_id, None)
            self._dead.append(DeadLetter(task_id, queue, payload, reason, now_ms))

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        with self._lock:
            owned = self._owned.get(consumer, {})
            back = [(i, owned.pop(i)) for i in ids if i in owned]
            for task_id, ownership in reversed(back):
                self._queues.setdefault(ownership.queue, deque()).appendleft(task_id)
            if back:
                self._wakeups += 1
                self._lock.notify_all()
            return len(back)

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        with self._lock:
            return self._recover(consumer, set(crashed_ids))

    def _recover(self, consumer: str, crashed: set[str]) -> int:
        owned = self._owned.pop(consumer, {})
        self._leases.pop(consumer, None)
        self._suspects.pop(consumer, None)
        for task_id, ownership in reversed(list(owned.items())):
            if task_id in crashed:
                self._crashes[task_id] = self._crashes.get(task_id, 0) + 1
            self._queues.setdefault(ownership.queue, deque()).appendleft(task_id)
        if owned:
            self._wakeups += 1
            self._lock.notify_all()
        return len(owned)

    def recover_expired(self, now_ms: int) -> int:
        with self._lock:
            return self._recover_expired(now_ms)

    def _recover_expired(self, now_ms: int) -> int:
        recovered = 0
        for consumer in [c for c, until in self._leases.items() if until < now_ms]:
            seen = self._suspects.setdefault(consumer, now_ms)
            if now_ms - seen >= EXPIRY_GRACE_MS:
                # Nobody knows which of an expired consumer's tasks had started: count a crash for each.
                recovered += self._recover(consumer, set(self._owned.get(consumer, {})))
        return recovered

    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> None:
        with self._lock:
            for consumer in consumers:
                self._leases[consumer] = until_ms
                self._suspects.pop(consumer, None)

    def fetch_payload(self, task_id: str) -> str | None:
        with self._lock:
            return self._payloads.get(task_id)

    # -- broadcast, cron, workers ------------------------------------------------------------------
    def publish_broadcast(self, payload: str) -> int:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.deliver(payload)
        return len(subscribers)

    def subscribe_broadcast(self) -> _Subscription:
        subscription = _Subscription(self)
        with self._lock:
            self._subscribers.append(subscription)
        return subscription

    def _unsubscribe(self, subscription: _Subscription) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        with self._lock:
            if self._cron.get(schedule_key, -1) >= fire_ms:
                return False
            self._cron[schedule_key] = fire_ms
            self._store(task)
            self._wakeups += 1
            self._lock.notify_all()
            return True

    def last_cron_tick(self, schedule_key: str) -> int | None:
        with self._lock:
            return self._cron.get(schedule_key)

    def heartbeat(self, worker_id: str, info: str, now_ms: int) -> None:
        with self._lock:
            self._beats[worker_id] = WorkerBeat(worker_id, now_ms, info)
            for stale in [w for w, b in self._beats.items() if b.last_beat_ms < now_ms - STALE_WORKER_MS]:
                del self._beats[stale]  # a worker that died without a goodbye

    def forget_worker(self, worker_id: str) -> None:
        with self._lock:
            self._beats.pop(worker_id, None)

    def workers(self) -> list[WorkerBeat]:
        with self._lock:
            return sorted(self._beats.values(), key=lambda b: -b.last_beat_ms)

    # -- inspection and operations -----------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        with self._lock:
            flying: dict[str, int] = {}
            for owned in self._owned.values():
                for ownership in owned.values():
                    flying[ownership.queue] = flying.get(ownership.queue, 0) + 1
            return [QueueStats(q, len(self._queues.get(q, ())), len(self._eta.get(q, ())), flying.get(q, 0))
                    for q in queues]

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        with self._lock:
            rows = [InFlight(i, o.queue, c, o.since_ms) for c, owned in self._owned.items()
                    for i, o in owned.items()]
        return sorted(rows, key=lambda r: r.since_ms)[:limit]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        with self._lock:
            return list(reversed(self._dead))[:limit]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._lock:
            wanted = None if ids is None else set(ids)
            chosen = [d for d in self._dead if wanted is None or d.id in wanted]
            self._dead = [d for d in self._dead if d not in chosen]
            requeued = 0
            for letter in chosen:
                if letter.payload is not None:
                    self._store(OutgoingTask(letter.id, letter.queue, letter.payload))
                    requeued += 1
            if requeued:
                self._wakeups += requeued
                self._lock.notify_all()
            return requeued

    def purge_dead(self) -> int:
        with self._lock:
            count, self._dead = len(self._dead), []
            return count

    def purge_queue(self, queue: str) -> tuple[int, int]:
        with self._lock:
            pending = self._queues.pop(queue, deque())
            waiting = self._eta.pop(queue, [])
            self._eta_keys.pop(queue, None)
            for task_id in [*pending, *(i for _, i in waiting)]:
                self._payloads.pop(task_id, None)
                self._crashes.pop(task_id, None)
            return len(pending), len(waiting)

    def close(self) -> None:
        return None
