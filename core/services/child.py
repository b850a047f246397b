"""The worker child's loop: reserve tasks by strict priority, run them, acknowledge in batches.

One asyncio loop per child. Sync tasks run inline on it (SIGALRM enforces their soft timeout); async
tasks run concurrently up to ``slots``. Reservations are batched to save round trips, but a batch is
sized by its tasks' measured duration so that it takes about ``preemptible_batch_seconds`` (1 ms) to run
when it comes from a queue below another one, ``target_batch_seconds`` (5 ms) when nothing can preempt
it: a higher-priority task enqueued meanwhile waits at most about that long, so priorities stay strict in
practice while fast tasks are amortised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from hexq.core.errors import BrokerError, HexqError
from hexq.core.ports import Clock, Consumer, Delivery
from hexq.core.services.outage import OutageLog
from hexq.core.services.runner import TaskRunner

log = logging.getLogger("hexq.worker")
T = TypeVar("T")


@attrs.frozen
class ChildConfig:
    consumer: str
    queues: tuple[str, ...]  # served in this order: the first non-empty one wins
    slots: int  # tasks running at once (1 + async concurrency)
    lease_ms: int
    max_tasks: int | None = None
    prefetch_max: int = 64
    target_batch_seconds: float = 0.005
    # The budget of a batch expected from a queue that a higher one can preempt (see _batch_size).
    preemptible_batch_seconds: float = 0.001
    idle_wait: float = 1.0
    backoff_max: float = 5.0


@attrs.define
class ChildLoop:
    runner: TaskRunner
    broker: Consumer
    clock: Clock
    config: ChildConfig
    on_started: Sequence[Callable[[], Any]] = ()
    stopping: bool = False
    done: int = 0
    _ewma: float = 0.0
    _limit: int = 0  # the limit of the last reservation
    _preemptible: bool = False  # whether the next batch is expected from a preemptible queue
    _free_slots: list[int] = attrs.field(factory=list)
    _running: set[asyncio.Task[None]] = attrs.field(factory=set)
    _outage: OutageLog = attrs.field(factory=lambda: OutageLog(log))

    def request_stop(self) -> None:
        self.stopping = True

    async def run(self) -> int:
        self._free_slots = list(range(self.config.slots - 1, -1, -1))
        for hook in self.on_started:
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        failures = 0
        wait = 0.0  # after an empty reservation: how long the next one may block for new work
        while not self.stopping and not self._quota_reached():
            if not self._free_slots and self._running:
                await asyncio.wait(self._running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            acks = self.runner.take_acks()
            try:
                reservation = await self._io(
                    self.broker.reserve, self.config.consumer, self.config.queues, self._batch_size(),
                    int(self.clock.now() * 1000), self.config.lease_ms, acks, wait,
                )
            except BrokerError as exc:
                # Unreachable, refusing our credentials, or out of memory: wait it out, never crash-loop, and
                # say so once per outage, not once per retry.
                self.runner.pending_acks[:0] = acks
                failures += 1
                self._outage.failed(self.clock.monotonic(), exc)
                await asyncio.sleep(min(self.config.backoff_max, 0.1 * 2 ** min(failures, 6)))
                wait = 0.0
                continue
            failures = 0
            self._outage.succeeded(self.clock.monotonic())
            if not reservation.deliveries:
                wait = self._idle_wait(reservation.next_eta_ms)
                continue
            wait = 0.0
            await self._run_batch(reservation.deliveries)
        await self._shutdown()
        return 0

    def _quota_reached(self) -> bool:
        return self.config.max_tasks is not None and self.done >= self.config.max_tasks

    def _batch_size(self) -> int:
        size = self.config.prefetch_max
        if self._ewma > 0:
            # A batch from a queue with a higher one above it is what a new higher-priority task waits
            # behind, so it gets a small budget; a batch that nothing can preempt gets the large one.
            budget = self.config.target_batch_seconds
            if self._preemptible:
                budget = self.config.preemptible_batch_seconds
            size = int(budget / self._ewma)
        elif self.done == 0:
            size = 1  # nothing measured yet: do not grab a batch of possibly long tasks
        # Free slots bound how many tasks run at once, not how many are reserved: sync tasks run one
        # after another from the batch, and the batch is sized by their measured duration.
        size = max(1, min(size, self.config.prefetch_max))
        if self.config.max_tasks is not None:
            size = max(1, min(size, self.config.max_tasks - self.done - len(self._running)))
        self._limit = size
        return size

    def _expect_next(self, deliveries: Sequence[Delivery]) -> None:
        """Guess where the next batch comes from, as a reservation only says where it came from: from
        the same queue if this batch filled its limit (there is probably more), else from a lower one.
        Preemptible: some app queue ranks above it ('@' queues, the worker's broadcasts, do not count)."""
        if not deliveries:
            return
        queues = self.config.queues
        rank = queues.index(deliveries[0].queue) if deliveries[0].queue in queues else 0
        above = any(not queue.startswith("@") for queue in queues[:rank])
        self._preemptible = above or len(deliveries) < self._limit

    def _idle_wait(self, next_eta_ms: int | None) -> float:
        """How long an idle child may block for new work: until the next eta falls due, at most
        ``idle_wait`` (which also bounds how late it notices a stop request)."""
        wait = self.config.idle_wait
        if next_eta_ms is not None and next_eta_ms > 0:  # a corrupt (negative) eta must not spin us
            wait = min(wait, max(0.0, next_eta_ms / 1000 - self.clock.now()))
        return wait

    async def _run_batch(self, deliveries: Sequence[Delivery]) -> None:
        self._expect_next(deliveries)
        for index, delivery in enumerate(deliveries):
            if self.stopping:
                await self._release(deliveries[index:])
                return
            prepared = self.runner.prepare(delivery)
            if prepared is None:
                continue
            message, task = prepared
            while not self._free_slots:
                await asyncio.wait(self._running, return_when=asyncio.FIRST_COMPLETED)
            slot = self._free_slots.pop()
            if task.is_async:
                job = asyncio.ensure_future(self._run_one(delivery, message, task, slot))
                self._running.add(job)
                job.add_done_callback(self._running.discard)
            else:
                await self._run_one(delivery, message, task, slot)
        if self._running:
            await asyncio.sleep(0)  # let async tasks make progress between batches

    async def _run_one(self, delivery: Delivery, message: Any, task: Any, slot: int) -> None:
        started = self.clock.monotonic()
        try:
            await self.runner.run_prepared(delivery, message, task, slot)
        except BrokerError as exc:
            # The outcome could not be written; the task stays owned and is settled later (acks are
            # kept) or comes back when this child's lease ends.
            log.warning("could not record the outcome of task %s (%s)", delivery.id, exc)
        finally:
            self._free_slots.append(slot)
            self.done += 1
        self._measure(self.clock.monotonic() - started)

    def _measure(self, seconds: float) -> None:
        self._ewma = seconds if self._ewma == 0 else 0.8 * self._ewma + 0.2 * seconds
        self._ewma = max(self._ewma, 1e-6)

    async def _release(self, deliveries: Sequence[Delivery]) -> None:
        ids = [d.id for d in deliveries]
        try:
            await self._io(self.broker.release, self.config.consumer, ids)
        except HexqError as exc:
            # The parent recovers this consumer's tasks when we exit, so nothing is lost.
            log.warning("could not hand back %d reserved tasks (%s); the parent will", len(ids), exc)

    async def _shutdown(self) -> None:
        if self._running:
            log.info("waiting for %d running async tasks before exiting", len(self._running))
            await asyncio.wait(self._running)
        for attempt in range(5):
            try:
                self.runner.flush_acks()
                return
            except BrokerError as exc:
                log.warning("could not acknowledge finished tasks (%s), attempt %d", exc, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the (blocking) broker: directly when nothing else needs the loop, else in a thread."""
        if self._running:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
