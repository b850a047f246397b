"""The worker child's driver: reserve tasks by strict priority, run them, acknowledge in batches.

One asyncio loop per child. Sync tasks run inline on it (SIGALRM enforces their soft timeout); async tasks
run concurrently up to ``slots``. How many tasks to reserve, and how long to wait when idle, is decided by
the pure ``BatchPlanner`` (``hexq.core.services.batching``); running one task is the ``TaskRunner``'s job.
This driver owns what they must not do: the event loop, waiting, and moving blocking broker calls to a
thread while async tasks need the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs

from hexq.core.errors import BrokerError, HexqError
from hexq.core.message import TaskMessage
from hexq.core.ports import Clock, Consumer, Delivery
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits
from hexq.core.registry import TaskDef
from hexq.core.services.batching import BatchPlanner
from hexq.core.services.outage import OutageLog
from hexq.core.services.runner import TaskRunner

log = logging.getLogger("hexq.worker")
T = TypeVar("T")


def _nothing() -> None:
    pass


@attrs.frozen
class ChildConfig:
    consumer: str
    queues: tuple[str, ...]  # served in this order: the first non-empty one wins
    slots: int  # tasks running at once (1 + async concurrency)
    lease_ms: int
    max_tasks: int | None = None
    prefetch_max: int = 64  # the largest batch a reservation takes
    idle_wait: float = 1.0
    backoff_max: float = 5.0
    rates: RateLimits = NO_RATE_LIMITS  # enforced by the broker in each reservation


@attrs.define
class ChildLoop:
    runner: TaskRunner
    broker: Consumer
    clock: Clock
    config: ChildConfig
    on_started: Sequence[Callable[[], Any]] = ()
    # Writes the log lines this child keeps (entrypoints/logs.py): called at each batch boundary, before a
    # reservation (which may block) or a back-off, and before the loop returns.
    flush_logs: Callable[[], None] = _nothing
    stopping: bool = False
    planner: BatchPlanner = attrs.field(init=False)
    _free_slots: list[int] = attrs.field(factory=list)
    _running: set[asyncio.Task[None]] = attrs.field(factory=set)
    _outage: OutageLog = attrs.field(factory=lambda: OutageLog(log))

    def __attrs_post_init__(self) -> None:
        config = self.config
        self.planner = BatchPlanner(config.queues, config.max_tasks, prefetch_max=config.prefetch_max,
                                    idle_wait_max=config.idle_wait, backoff_max=config.backoff_max)

    @property
    def done(self) -> int:
        return self.planner.done

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
        while not self.stopping and not self.planner.quota_reached:
            if not self._free_slots and self._running:
                await asyncio.wait(self._running, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                if self.runner.pending_settles:
                    await self._io(self.runner.flush_settles)  # outcomes the broker could not take before
            except BrokerError as exc:
                failures += 1
                self._outage.failed(self.clock.monotonic(), exc)
                await asyncio.sleep(self.planner.backoff(failures))
                continue
            acks, outcomes = self.runner.take_acks(), self.runner.take_outcomes()
            self.flush_logs()
            try:
                reservation = await self._io(
                    self.broker.reserve, self.config.consumer, self.config.queues,
                    self.planner.size(len(self._running)), int(self.clock.now() * 1000), self.config.lease_ms,
                    acks, wait, self.config.rates,
                    *((outcomes,) if outcomes else ()),  # kept outcomes (keep_result), if any
                )
            except BrokerError as exc:
                # Unreachable, refusing our credentials, or out of memory: wait it out, never crash-loop, and
                # say so once per outage, not once per retry.
                self.runner.give_back(acks, outcomes)
                failures += 1
                self._outage.failed(self.clock.monotonic(), exc)
                self.flush_logs()
                await asyncio.sleep(self.planner.backoff(failures))
                wait = 0.0
                continue
            failures = 0
            self._outage.succeeded(self.clock.monotonic())
            wait = 0.0 if reservation.deliveries else self.planner.idle_wait(reservation.next_eta_ms,
                                                                              self.clock.now())
            if reservation.deliveries:
                await self._run_batch(reservation.deliveries)
        await self._shutdown()
        self.flush_logs()
        return 0

    async def _run_batch(self, deliveries: Sequence[Delivery]) -> None:
        self.planner.reserved(deliveries)
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

    async def _run_one(self, delivery: Delivery, message: TaskMessage, task: TaskDef, slot: int) -> None:
        started = self.clock.monotonic()
        try:
            await self.runner.run_prepared(delivery, message, task, slot)
        except BrokerError as exc:
            # The outcome could not be written: it is kept (acks, and the runner's pending settles) and sent
            # before the next reservation; the task stays owned by this child meanwhile.
            log.warning("could not record the outcome of task %s yet (%s); it is sent when the broker is back",
                        delivery.id, exc)
        finally:
            self._free_slots.append(slot)
            self.planner.ran(self.clock.monotonic() - started)

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
                self.runner.flush_settles()  # the acks first, then any kept retry or dead letter
                return
            except BrokerError as exc:
                log.warning("could not acknowledge finished tasks (%s), attempt %d", exc, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Call the (blocking) broker: directly when nothing else needs the loop, else in a thread."""
        if self._running:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
