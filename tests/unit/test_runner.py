"""TaskRunner against the in-memory broker and a fake clock: what happens to each delivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.errors import SoftTimeout
from hexq.core.message import Codec, TaskMessage
from hexq.core.policy import AppDefaults, TaskOptions
from hexq.core.ports import Delivery, OutgoingTask
from hexq.core.queues import Queue, QueueSet
from hexq.core.registry import Registry, TaskDef, current_attempt, current_task
from hexq.core.services.runner import TaskRunner

CONSUMER = "child-1"
LEASE_MS = 30_000


@attrs.define
class RecordingReporter:
    events: list[tuple[Any, ...]] = attrs.field(factory=list)

    def started(self, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None:
        self.events.append(("started", slot, task_id, soft_deadline, hard_deadline))

    def finished(self, slot: int) -> None:
        self.events.append(("finished", slot))


@attrs.define
class RecordingAlarm:
    events: list[Any] = attrs.field(factory=list)

    def arm(self, seconds: float) -> None:
        self.events.append(("arm", seconds))

    def disarm(self) -> None:
        self.events.append("disarm")


@attrs.define
class World:
    registry: Registry
    broker: MemoryBroker
    clock: FakeClock
    runner: TaskRunner
    calls: list[Any]

    @property
    def codec(self) -> Codec:
        return self.runner.codec

    def task(self, name: str, fn: Callable[..., Any], **options: Any) -> None:
        self.registry.add(TaskDef(name, fn, TaskOptions(**options)))

    def now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def put(self, payload: str, task_id: str = "t1", queue: str = "default") -> None:
        self.broker.enqueue([OutgoingTask(task_id, queue, payload)])

    def send(self, name: str, *args: Any, task_id: str = "t1", queue: str = "default", retries: int = 0,
             broadcast: bool = False, **kwargs: Any) -> None:
        message = TaskMessage(task_id, name, queue, args, kwargs, retries, self.clock.now(), None, broadcast)
        self.put(self.codec.encode(message), task_id, queue)

    def reserve(self, queues: tuple[str, ...] = ("default", "high")) -> Delivery:
        [delivery] = self.broker.reserve(CONSUMER, list(queues), 1, self.now_ms(), LEASE_MS).deliveries
        return delivery

    def run(self, delivery: Delivery | None = None) -> None:
        asyncio.run(self.runner.run(delivery or self.reserve()))

    def stats(self, queue: str = "default") -> tuple[int, int, int]:
        [stats] = self.broker.queue_stats([queue])
        return stats.pending, stats.eta, stats.in_flight

    def dead_reasons(self) -> list[str]:
        return [d.reason for d in self.broker.dead_letters()]


def make_world(*, defer_acks: bool = False, max_retries: int | None = None, max_deliveries: int = 5,
               signing_key: bytes | None = None, **runner_options: Any) -> World:
    registry = Registry(QueueSet.build([(0, "high"), Queue("default", max_retries=None)]),
                        AppDefaults(max_retries=max_retries, max_deliveries=max_deliveries))
    broker, clock = MemoryBroker(), FakeClock()
    runner = TaskRunner(registry, Codec(signing_key), broker, clock, CONSUMER, lambda: 0.5,
                        defer_acks=defer_acks, **runner_options)
    world = World(registry, broker, clock, runner, [])

    def add(x: int, y: int) -> None:
        world.calls.append(("add", x + y, current_attempt.get()))

    world.task("add", add)
    return world


# -- deliveries that cannot run -----------------------------------------------------------------------

MALFORMED = [
    ("not json", "{not json", "MalformedPayloadError: not valid JSON"),
    ("a list", "[1, 2]", "MalformedPayloadError: envelope must be a JSON object, got list"),
    ("newer version", json.dumps({"v": 99, "id": "t1"}), "MalformedPayloadError: envelope version 99"),
    ("missing field", json.dumps({"v": 1, "id": "t1", "task": "add", "queue": "default", "args": [],
                                  "kwargs": {}, "retries": 0}), "missing the field 'enqueued_at'"),
    ("unknown tag", json.dumps({"v": 1, "id": "t1", "task": "add", "queue": "default",
                                "args": [{"__hexq__": "pickle", "v": "x"}], "kwargs": {}, "retries": 0,
                                "enqueued_at": 0}), "unknown value tag 'pickle'"),
]


@pytest.mark.parametrize(("label", "payload", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_payload_is_dead_lettered_with_its_reason(label: str, payload: str, reason: str) -> None:
    world = make_world()
    world.put(payload)
    world.run()
    [letter] = world.broker.dead_letters()
    assert (letter.id, letter.queue, letter.payload) == ("t1", "default", payload)
    assert reason in letter.reason
    assert letter.failed_at_ms == world.now_ms()
    assert world.stats() == (0, 0, 0)
    assert world.runner.stats.dead == 1 and world.calls == []


def test_unsigned_payload_for_a_signing_app_is_dead_lettered() -> None:
    world = make_world(signing_key=b"k")
    world.put(Codec().encode(TaskMessage("t1", "add", "default", (1, 2))))
    world.run()
    assert world.dead_reasons()[0].startswith("SignatureError: payload is not signed")
    assert world.calls == []


def test_signed_payload_runs() -> None:
    world = make_world(signing_key=b"k")
    world.send("add", 1, 2)
    world.run()
    assert world.calls == [("add", 3, 1)]


def test_unknown_task_is_dead_lettered_naming_it() -> None:
    world = make_world()
    world.send("reports.missing", 1)
    world.run()
    [reason] = world.dead_reasons()
    assert reason.startswith("UnknownTaskError: unknown task 'reports.missing'")
    assert "add" in reason  # lists what is registered
    assert world.stats() == (0, 0, 0)


def test_delivery_without_payload_is_acknowledged_and_skipped() -> None:
    world = make_world(defer_acks=True)
    world.send("add", 1, 2)
    world.broker.ack("someone-else", ["t1"])  # the payload is gone, the queue entry is not
    delivery = world.reserve()
    assert delivery.payload is None
    world.run(delivery)
    assert world.calls == [] and world.broker.dead_letters() == []
    assert world.runner.pending_acks == ["t1"]
    world.runner.flush_acks()
    assert world.stats() == (0, 0, 0)
    assert world.runner.stats == type(world.runner.stats)()


# (crashes, max_deliveries, runs)
CRASHES = [(1, 5, True), (4, 5, True), (5, 5, False), (7, 5, False), (1, 1, False), (2, 3, True)]


@pytest.mark.parametrize(("crashes", "max_deliveries", "runs"), CRASHES)
def test_task_that_crashed_its_worker_too_often_is_dead_lettered(crashes: int, max_deliveries: int,
                                                                 runs: bool) -> None:
    world = make_world(max_deliveries=max_deliveries)
    world.send("add", 1, 2)
    for _ in range(crashes):
        world.reserve()
        world.broker.recover_consumer(CONSUMER, ["t1"])
    delivery = world.reserve()
    assert delivery.crashes == crashes
    world.run(delivery)
    if runs:
        assert world.calls == [("add", 3, crashes + 1)]  # each crash counts as an attempt
        assert world.broker.dead_letters() == []
    else:
        assert world.calls == []
        assert world.dead_reasons() == [
            f"worker died while running it {crashes} times (max_deliveries={max_deliveries})"]
    assert world.stats() == (0, 0, 0)


# -- failures -----------------------------------------------------------------------------------------


class CustomBase(BaseException):
    pass


BASE_EXCEPTIONS = [SystemExit(3), KeyboardInterrupt("ctrl-c"), CustomBase("odd"), GeneratorExit()]


@pytest.mark.parametrize("error", BASE_EXCEPTIONS, ids=repr)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_base_exceptions_from_a_task_are_failures_not_crashes(error: BaseException, kind: str) -> None:
    world = make_world(max_retries=3)

    def sync_boom() -> None:
        raise error

    async def async_boom() -> None:
        raise error

    world.task("boom", sync_boom if kind == "sync" else async_boom)
    world.send("boom")
    world.run()  # must not raise
    assert world.dead_reasons() == [f"raised {type(error).__name__}: {error}"]
    assert world.runner.stats.failed == 1 and world.runner.stats.dead == 1
    assert world.stats() == (0, 0, 0)


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt("ctrl-c")], ids=repr)
def test_base_exceptions_from_an_async_task_with_soft_timeout_do_not_escape(error: BaseException) -> None:
    world = make_world()

    async def boom() -> None:
        raise error

    world.task("boom", boom, soft_timeout=5.0)
    world.send("boom")
    try:
        world.run()
    except BaseException as escaped:
        pytest.fail(f"{type(escaped).__name__} escaped the runner")
    assert world.dead_reasons() == [f"raised {type(error).__name__}: {error}"]


def test_exception_with_retry_on_is_retried_later_with_backoff() -> None:
    world = make_world()

    def flaky(n: int) -> None:
        raise ConnectionError("down")

    world.task("flaky", flaky, retry_on=(ConnectionError,), max_retries=2, backoff=4.0)
    world.send("flaky", 7, retries=1)
    world.run()
    assert world.stats() == (0, 1, 0)
    assert world.runner.stats.retried == 1 and world.broker.dead_letters() == []
    payload = world.broker.fetch_payload("t1")
    assert payload is not None
    retried = world.codec.decode(payload)
    # retries_used=1: ceiling 4 * 2**1 = 8, times rand 0.5.
    assert (retried.retries, retried.eta, retried.args) == (2, world.clock.now() + 4.0, (7,))
    world.clock.advance(3.9)
    assert world.broker.reserve(CONSUMER, ["default"], 1, world.now_ms(), LEASE_MS).deliveries == ()
    world.clock.advance(0.1)
    world.run()
    assert world.dead_reasons() == ["raised ConnectionError: down; gave up after 2 retries (max_retries=2)"]


def test_soft_timeout_is_retried_at_once_then_dead_lettered() -> None:
    world = make_world(max_retries=1)
    runs: list[int] = []

    def slow() -> None:
        runs.append(current_attempt.get())
        raise SoftTimeout("alarm")  # what the SIGALRM handler raises in a worker child

    world.task("slow", slow, soft_timeout=1.0)
    world.send("slow")
    world.run()
    assert world.stats() == (1, 0, 0)  # back at the tail of its queue, no wait
    world.run()
    assert runs == [1, 2]
    assert world.dead_reasons() == ["soft timeout; gave up after 1 retries (max_retries=1)"]


def test_async_soft_timeout_cancels_the_task() -> None:
    world = make_world(max_retries=0)
    cancelled: list[bool] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    world.task("slow", slow, soft_timeout=0.01)
    world.send("slow")
    world.run()
    assert cancelled == [True]
    assert world.dead_reasons() == ["soft timeout; gave up after 0 retries (max_retries=0)"]


def test_failed_broadcast_is_dead_lettered_not_retried() -> None:
    world = make_world()

    def boom() -> None:
        raise ConnectionError("x")

    world.task("boom", boom, retry_on=(ConnectionError,), max_retries=5)
    world.send("boom", broadcast=True)
    world.run()
    assert world.dead_reasons() == ["broadcast task failed"]
    assert world.stats() == (0, 0, 0)


def test_task_on_an_undeclared_queue_still_runs_with_default_limits() -> None:
    world = make_world()
    world.send("add", 2, 2, queue="elsewhere")
    world.run(world.reserve(("elsewhere",)))
    assert world.calls == [("add", 4, 1)]


# -- acknowledgements ---------------------------------------------------------------------------------


def test_acks_are_deferred_until_taken_or_flushed() -> None:
    world = make_world(defer_acks=True)
    world.send("add", 1, 1, task_id="a")
    world.send("add", 2, 2, task_id="b")
    world.run()
    world.run()
    assert [c[1] for c in world.calls] == [2, 4]
    assert world.stats() == (0, 0, 2)  # still owned: nothing told the broker yet
    assert world.runner.pending_acks == ["a", "b"]
    assert world.runner.take_acks() == ["a", "b"]
    assert world.runner.pending_acks == [] and world.runner.take_acks() == []
    world.broker.reserve(CONSUMER, ["default"], 1, world.now_ms(), LEASE_MS, acks=["a", "b"])
    assert world.stats() == (0, 0, 0)


def test_flush_acks_acknowledges_pending_ones() -> None:
    world = make_world(defer_acks=True)
    world.send("add", 1, 1)
    world.run()
    assert world.stats() == (0, 0, 1)
    world.runner.flush_acks()
    assert world.stats() == (0, 0, 0) and world.runner.pending_acks == []
    world.runner.flush_acks()  # nothing pending: a no-op


def test_acks_are_immediate_without_deferral() -> None:
    world = make_world(defer_acks=False)
    world.send("add", 1, 1)
    world.run()
    assert world.stats() == (0, 0, 0) and world.runner.pending_acks == []


def test_dead_lettering_flushes_earlier_acks_first() -> None:
    world = make_world(defer_acks=True)
    world.send("add", 1, 1, task_id="a")
    world.put("garbage", task_id="b")
    world.run()
    assert world.runner.pending_acks == ["a"]
    world.run()
    assert world.runner.pending_acks == []
    assert world.stats() == (0, 0, 0)
    assert [d.id for d in world.broker.dead_letters()] == ["b"]


def test_a_lost_lease_after_success_does_not_run_the_task_twice() -> None:
    world = make_world(defer_acks=True)
    world.send("add", 1, 1)
    world.run()
    world.clock.advance(LEASE_MS / 1000 + 1)  # the ack was not sent before the lease ran out
    world.runner.flush_acks()  # ... it arrives late, but it does arrive
    assert world.broker.reserve("other", ["default"], 10, world.now_ms(), LEASE_MS).deliveries == ()
    assert len(world.calls) == 1


# -- reporting, alarms, context -----------------------------------------------------------------------


def test_reporter_gets_deadlines_and_alarm_is_armed_for_sync_tasks() -> None:
    reporter, alarm = RecordingReporter(), RecordingAlarm()
    world = make_world(reporter=reporter, alarm=alarm, monotonic=lambda: 500.0)
    world.task("limited", lambda: None, soft_timeout=2.0, hard_timeout=3.0)
    world.send("limited", task_id="x")
    world.run()
    world.send("add", 1, 1, task_id="y")
    asyncio.run(world.runner.run(world.reserve(), slot=3))
    assert reporter.events == [
        ("started", 0, "x", 502.0, 503.0), ("finished", 0),
        ("started", 3, "y", 0.0, 0.0), ("finished", 3),
    ]
    assert alarm.events == [("arm", 2.0), "disarm"]


def test_alarm_is_disarmed_when_the_task_fails() -> None:
    alarm = RecordingAlarm()
    world = make_world(alarm=alarm)

    def boom() -> None:
        raise ValueError("x")

    world.task("boom", boom, soft_timeout=2.0)
    world.send("boom")
    world.run()
    assert alarm.events == [("arm", 2.0), "disarm"]


def test_current_task_is_set_during_the_run_only() -> None:
    world = make_world()
    seen: list[Any] = []

    async def job(*args: Any, **kwargs: Any) -> None:
        seen.append(current_task.get())

    world.task("job", job, soft_timeout=5.0)
    world.send("job", 1, task_id="ctx", k="v")
    world.run()
    [message] = seen
    assert (message.id, message.name, message.args, message.kwargs) == ("ctx", "job", (1,), {"k": "v"})
    assert current_task.get() is None and current_attempt.get() == 0


def test_fail_outside_retries_a_hard_timeout_then_dead_letters() -> None:
    world = make_world(max_retries=1)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    world.send("stuck")
    delivery = world.reserve()
    world.runner.fail_outside("t1", delivery.payload, "hard_timeout")
    assert world.stats() == (1, 0, 0)
    delivery = world.reserve()
    assert delivery.payload is not None and world.codec.decode(delivery.payload).retries == 1
    world.runner.fail_outside("t1", delivery.payload, "hard_timeout")
    assert world.dead_reasons() == ["hard timeout; gave up after 1 retries (max_retries=1)"]
    assert world.stats() == (0, 0, 0)
