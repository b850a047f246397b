"""The worker child's loop on the in-memory broker: priority, batching, release on stop, async, outages."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
from service_fixtures import enqueue, make_app

from hexq.core.errors import BrokerUnavailableError
from hexq.core.ports import Reservation
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits
from hexq.core.services.runner import TaskRunner
from hexq.entrypoints.child_driver import ChildConfig, ChildLoop


def build_loop(app: Any, broker: Any, clock: Any, **config: Any) -> ChildLoop:
    runner = TaskRunner(app.registry, app.codec, broker, clock, "c1", random.random)
    config.setdefault("queues", ("high", "low"))
    config.setdefault("slots", 1)
    config.setdefault("lease_ms", 10_000)
    config.setdefault("idle_wait", 0.01)
    return ChildLoop(runner, broker, clock, ChildConfig(consumer="c1", **config))


def test_serves_the_higher_priority_queue_first_and_acknowledges_everything() -> None:
    app, broker, clock = make_app()
    order: list[str] = []

    @app.task(queue="low")
    def low(n: int) -> None:
        order.append(f"low{n}")

    @app.task(queue="high")
    def high(n: int) -> None:
        order.append(f"high{n}")

    for n in range(3):
        enqueue(app, low, n)
    for n in range(2):
        enqueue(app, high, n)
    loop = build_loop(app, broker, clock, max_tasks=5)
    assert asyncio.run(loop.run()) == 0
    assert order == ["high0", "high1", "low0", "low1", "low2"]
    assert [(s.pending, s.in_flight) for s in broker.queue_stats(["high", "low"])] == [(0, 0), (0, 0)]


def test_stop_mid_batch_hands_unstarted_tasks_back_in_order() -> None:
    app, broker, clock = make_app()
    ran: list[int] = []
    holder: dict[str, ChildLoop] = {}

    @app.task(queue="low")
    def job(n: int) -> None:
        ran.append(n)
        if n == 1:
            holder["loop"].request_stop()

    for n in range(6):
        enqueue(app, job, n)
    loop = build_loop(app, broker, clock, prefetch_max=10)
    loop.planner._ewma = 1e-6  # as if tasks were known to be fast: reserve big batches
    holder["loop"] = loop
    asyncio.run(loop.run())
    assert ran[:2] == [0, 1]
    assert len(ran) < 6
    left = broker.reserve("probe", ["low"], 100, int(clock.now() * 1000), 1000).deliveries
    assert [app.codec.decode(d.payload or "").args[0] for d in left] == list(range(len(ran), 6))
    assert all(d.crashes == 0 for d in left)


def test_async_tasks_run_concurrently_up_to_the_slot_count() -> None:
    app, broker, clock = make_app()
    state = {"now": 0, "peak": 0}

    @app.task(queue="low")
    async def slow() -> None:
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1

    for _ in range(6):
        enqueue(app, slow)
    loop = build_loop(app, broker, clock, slots=3, max_tasks=6)
    asyncio.run(loop.run())
    assert state["peak"] == 3
    assert broker.queue_stats(["low"])[0].pending == 0


class FlakyBroker:
    """Delegates to a real MemoryBroker but fails the first ``failures`` reservations."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0, rates: RateLimits = NO_RATE_LIMITS) -> Reservation:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailableError("connection refused")
        return self.inner.reserve(consumer, queues, limit, now_ms, lease_ms, acks, wait, rates)  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_broker_outage_is_waited_out_and_nothing_is_lost() -> None:
    app, broker, clock = make_app()
    done: list[int] = []

    @app.task(queue="low")
    def job(n: int) -> None:
        done.append(n)

    for n in range(3):
        enqueue(app, job, n)
    flaky = FlakyBroker(broker, failures=2)
    runner = TaskRunner(app.registry, app.codec, flaky, clock, "c1", random.random)  # type: ignore[arg-type]
    loop = ChildLoop(runner, flaky, clock,  # type: ignore[arg-type]
                     ChildConfig("c1", ("high", "low"), 1, 10_000, max_tasks=3, idle_wait=0.01, backoff_max=0.05))
    asyncio.run(loop.run())
    assert sorted(done) == [0, 1, 2]


class RetryRefusingBroker:
    """Refuses the first ``failures`` retries and dead letters, as a broker that went away would."""

    def __init__(self, inner: Any, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    def _refuse(self) -> None:
        if self.failures:
            self.failures -= 1
            raise BrokerUnavailableError("connection refused")

    def retry(self, *args: Any) -> None:
        self._refuse()
        self.inner.retry(*args)

    def dead_letter(self, *args: Any, **kwargs: Any) -> None:
        self._refuse()
        self.inner.dead_letter(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.mark.parametrize("retry_on", [(ValueError,), ()], ids=["retried", "dead-lettered"])
def test_a_failure_the_broker_could_not_take_is_sent_again_not_left_owned_forever(retry_on: Any) -> None:
    # The task stays owned by this live child, whose lease its parent keeps renewing: if the child dropped
    # the outcome, nobody would ever settle the task.
    app, broker, clock = make_app()

    @app.task(queue="low", retry_on=retry_on, max_retries=1, backoff=0)
    def fails() -> None:
        raise ValueError("no")

    task_id = enqueue(app, fails)
    flaky = RetryRefusingBroker(broker, failures=2)
    runner = TaskRunner(app.registry, app.codec, flaky, clock, "c1", random.random)  # type: ignore[arg-type]
    loop = ChildLoop(runner, flaky, clock,  # type: ignore[arg-type]
                     ChildConfig("c1", ("high", "low"), 1, 10_000, max_tasks=1, idle_wait=0.01, backoff_max=0.05))
    asyncio.run(loop.run())
    assert broker.in_flight() == [] and runner.pending_settles == []
    if retry_on:
        (again,) = broker.reserve("probe", ["low"], 5, int(clock.now() * 1000), 1000).deliveries
        assert again.id == task_id and app.codec.decode(again.payload or "").retries == 1
    else:
        assert [d.id for d in broker.dead_letters()] == [task_id]


@pytest.mark.parametrize("max_tasks", [1, 4])
def test_max_tasks_makes_the_child_exit_after_that_many(max_tasks: int) -> None:
    app, broker, clock = make_app()

    @app.task(queue="low")
    def job() -> None:
        return None

    for _ in range(10):
        enqueue(app, job)
    loop = build_loop(app, broker, clock, max_tasks=max_tasks, prefetch_max=8)
    asyncio.run(loop.run())
    assert loop.done == max_tasks
    stats = broker.queue_stats(["low"])[0]
    assert (stats.pending, stats.in_flight) == (10 - max_tasks, 0)


class RecordingBroker:
    """Delegates to a real MemoryBroker, noting each reservation's limit and the queue that served it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reservations: list[tuple[int, str | None]] = []

    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0, rates: RateLimits = NO_RATE_LIMITS) -> Reservation:
        reservation: Reservation = self.inner.reserve(consumer, queues, limit, now_ms, lease_ms, acks, wait, rates)
        served = reservation.deliveries[0].queue if reservation.deliveries else None
        self.reservations.append((limit, served))
        return reservation

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_batch_from_a_lower_queue_is_small_and_one_nothing_can_preempt_is_large() -> None:
    app, broker, clock = make_app()

    @app.task(queue="high")
    def high() -> None:
        clock.advance(0.002)  # every task takes 2 ms

    @app.task(queue="low")
    def low() -> None:
        clock.advance(0.002)

    for _ in range(6):
        enqueue(app, high)
    for _ in range(4):
        enqueue(app, low)
    recording = RecordingBroker(broker)
    runner = TaskRunner(app.registry, app.codec, recording, clock, "c1", random.random)  # type: ignore[arg-type]
    # As a worker child serves them: its broadcast queue first, then the app's queues by priority.
    config = ChildConfig("c1", ("@broadcast.w1", "high", "low"), 1, 10_000, max_tasks=10, idle_wait=0.01)
    asyncio.run(ChildLoop(runner, recording, clock, config).run())  # type: ignore[arg-type]
    # The first batch is 1 task (nothing measured yet). "high" has only the broadcasts above it: 5 ms
    # batches (2 tasks) while they come back full. The short one says "high" ran dry, so the next batch
    # (from "low", below "high") gets 1 ms: a single 2 ms task, and a high-priority task sent meanwhile
    # waits behind one low task, not two.
    assert recording.reservations == [(1, "high"), (2, "high"), (2, "high"), (2, "high"),
                                      (1, "low"), (1, "low"), (1, "low"), (1, "low")]
