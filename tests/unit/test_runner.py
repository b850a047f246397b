"""TaskRunner against the in-memory broker and a fake clock: what happens to each delivery."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.errors import BrokerUnavailableError, SoftTimeout
from hexq.core.message import Codec, TaskMessage
from hexq.core.policy import AppDefaults, TaskOptions
from hexq.core.ports import Delivery, OutgoingTask
from hexq.core.queues import Queue, QueueSet
from hexq.core.registry import Registry, TaskDef, current_attempt, current_task
from hexq.core.services import cancellation
from hexq.core.services import runner as runner_module
from hexq.core.services.runner import TaskRunner
from hexq.core.tracebacks import MAX_DEAD_TRACEBACK_CHARS

CONSUMER = "child-1"
LEASE_MS = 30_000


@attrs.define
class RecordingReporter:
    events: list[tuple[Any, ...]] = attrs.field(factory=list)

    def started(self, slot: int, task_id: str, hard_deadline: float) -> None:
        self.events.append(("started", slot, task_id, hard_deadline))

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

    def stored(self, task_id: str = "t1") -> TaskMessage:
        """The task as the broker now holds it (after a retry: its next attempt)."""
        delivery = self.broker.lookup(task_id)
        assert delivery is not None and delivery.payload is not None
        return self.codec.decode(delivery.payload)

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
    assert world.calls == []


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


@pytest.mark.usefixtures("strategy")
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
    assert world.stats() == (0, 0, 0)


@pytest.mark.usefixtures("strategy")
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
    assert world.broker.dead_letters() == []
    retried = world.stored()
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


def test_a_dead_letter_keeps_the_traceback_of_its_last_attempt() -> None:
    world = make_world(max_retries=1)
    attempts: list[int] = []

    def parse_invoice(text: str) -> None:
        attempts.append(current_attempt.get())
        raise ValueError(f"attempt {attempts[-1]}: bad invoice {text!r}")

    world.task("parse_invoice", parse_invoice, retry_on=(ValueError,))
    world.send("parse_invoice", "x")
    world.run()
    assert world.broker.dead_letters() == []  # retried: no dead letter, no traceback kept yet
    world.clock.advance(60)
    world.run()
    [letter] = world.broker.dead_letters()
    assert letter.traceback.startswith("Traceback (most recent call last):")
    assert "in parse_invoice" in letter.traceback and 'raise ValueError(f"attempt' in letter.traceback
    assert letter.traceback.rstrip().endswith("ValueError: attempt 2: bad invoice 'x'")  # the last attempt's
    assert world.broker.find_dead("t1") == [letter]


def test_a_soft_timeout_dead_letter_keeps_where_the_task_was_stopped() -> None:
    world = make_world(max_retries=0)

    def slow_report() -> None:
        raise SoftTimeout("alarm")  # what the SIGALRM handler raises in a worker child, inside the task

    world.task("slow_report", slow_report, soft_timeout=1.0)
    world.send("slow_report")
    world.run()
    [letter] = world.broker.dead_letters()
    assert "in slow_report" in letter.traceback and "SoftTimeout: alarm" in letter.traceback


def test_a_long_traceback_is_cut_to_its_deepest_part_saying_so() -> None:
    world = make_world(max_retries=0)

    def recurse(n: int) -> None:
        if n == 0:
            # The cause comes first in the traceback: 20,000 characters that are cut.
            raise RuntimeError("at the bottom") from ValueError("x" * 20_000)
        recurse(n - 1)

    world.task("recurse", recurse)
    world.send("recurse", 3)
    world.run()
    [letter] = world.broker.dead_letters()
    first, rest = letter.traceback.split("\n", 1)
    assert first.startswith("[traceback cut: its first ") and first.endswith(" characters are not kept]")
    assert len(rest) <= MAX_DEAD_TRACEBACK_CHARS and "x" * 10 not in rest  # the cut is at a line's start
    assert rest.lstrip("\n").startswith("The above exception was the direct cause")
    assert rest.rstrip().endswith("RuntimeError: at the bottom")


def test_dead_letters_of_failures_without_an_exception_have_no_traceback() -> None:
    world = make_world(max_retries=0, max_deliveries=1)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    world.send("stuck", task_id="hard")
    world.runner.fail_outside(world.reserve(), "hard_timeout")  # killed by the worker parent
    world.send("add", 1, 2, task_id="poison")
    world.reserve()
    world.broker.recover_consumer(CONSUMER, ["poison"])  # its worker died under it: a crash loop
    world.run()
    world.put("{not json", task_id="malformed")
    world.run()
    letters = {d.id: d for d in world.broker.dead_letters()}
    assert set(letters) == {"hard", "poison", "malformed"}
    assert [letters[i].traceback for i in ("hard", "poison", "malformed")] == ["", "", ""]


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
    world = make_world(reporter=reporter, alarm=alarm)
    world.clock.mono = 500.0
    world.task("limited", lambda: None, soft_timeout=2.0, hard_timeout=3.0)
    world.send("limited", task_id="x")
    world.run()
    world.send("add", 1, 1, task_id="y")
    asyncio.run(world.runner.run(world.reserve(), slot=3))
    assert reporter.events == [
        ("started", 0, "x", 503.0), ("finished", 0),
        ("started", 3, "y", 0.0), ("finished", 3),
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
    world.runner.fail_outside(world.reserve(), "hard_timeout")
    assert world.stats() == (1, 0, 0)
    delivery = world.reserve()
    assert delivery.payload is not None and world.codec.decode(delivery.payload).retries == 1
    world.runner.fail_outside(delivery, "hard_timeout")
    assert world.dead_reasons() == ["hard timeout; gave up after 1 retries (max_retries=1)"]
    assert world.stats() == (0, 0, 0)


def crash_once_then_reserve(world: World) -> Delivery:
    world.reserve()
    world.broker.recover_consumer(CONSUMER, ["t1"])  # the worker running it died
    delivery = world.reserve()
    assert delivery.crashes == 1
    return delivery


def test_fail_outside_counts_earlier_crashes_as_attempts() -> None:
    world = make_world(max_retries=2)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    world.send("stuck")
    world.runner.fail_outside(crash_once_then_reserve(world), "hard_timeout")
    assert world.stored().retries == 2  # the crash and this timeout
    world.runner.fail_outside(world.reserve(), "hard_timeout")
    assert world.dead_reasons() == ["hard timeout; gave up after 2 retries (max_retries=2)"]


def test_fail_outside_counts_attempts_as_a_run_in_the_child_does() -> None:
    def retries_after_one_crash_and_a_timeout(inside: bool) -> int:
        world = make_world(max_retries=5)

        def slow() -> None:
            raise SoftTimeout("alarm")

        world.task("slow", slow, soft_timeout=1.0, hard_timeout=10.0)
        world.send("slow")
        delivery = crash_once_then_reserve(world)
        if inside:
            world.run(delivery)
        else:
            world.runner.fail_outside(delivery, "hard_timeout")
        return world.stored().retries

    assert retries_after_one_crash_and_a_timeout(True) == retries_after_one_crash_and_a_timeout(False) == 2


def test_fail_outside_dead_letters_a_malformed_payload_on_its_queue() -> None:
    world = make_world()
    world.put("garbage", queue="high")
    world.runner.fail_outside(world.reserve(), "hard_timeout")
    [letter] = world.broker.dead_letters()
    assert (letter.id, letter.queue, letter.payload) == ("t1", "high", "garbage")


def test_fail_outside_acts_for_the_consumer_that_owns_the_task() -> None:
    world = make_world(max_retries=1)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    world.send("stuck")
    [delivery] = world.broker.reserve("dead-child", ["default"], 1, world.now_ms(), LEASE_MS).deliveries
    world.runner.fail_outside(delivery, "hard_timeout", consumer="dead-child")
    assert world.stats() == (1, 0, 0)  # retried, and no longer owned by the dead child
    assert world.stored().retries == 1


def test_fail_outside_ignores_a_task_already_settled_elsewhere() -> None:
    world = make_world()
    world.runner.fail_outside(Delivery("t1", "default", None), "hard_timeout")
    assert world.broker.dead_letters() == [] and world.stats() == (0, 0, 0)


class Outage:
    """The world's broker, refusing every write that settles a task while ``down``, as one gone away would."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if name not in ("ack", "retry", "dead_letter"):
            return attribute

        def write(*args: Any) -> Any:
            if self.down:
                raise BrokerUnavailableError("connection refused")
            return attribute(*args)

        return write


def test_fail_outside_keeps_no_refused_write_to_send_again_later() -> None:
    """The worker parent records a hard timeout for the dead child's consumer and, if the broker refuses
    it, settles the whole child again later from a fresh lookup. A refused write kept as well would be sent
    with the next hard timeout, even though the task was settled meanwhile: it would run again."""
    world = make_world(max_retries=2)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    outage = Outage(world.broker)
    recorder = attrs.evolve(world.runner, broker=outage, consumer="worker-parent")
    world.send("stuck", task_id="t1")
    [t1] = world.broker.reserve("dead-child-1", ["default"], 1, world.now_ms(), LEASE_MS).deliveries
    outage.down = True
    with pytest.raises(BrokerUnavailableError):
        recorder.fail_outside(t1, "hard_timeout", consumer="dead-child-1")
    outage.down = False
    # Meanwhile t1 went back (its consumer recovered), ran elsewhere and was acknowledged: the parent's
    # fresh lookup finds nothing to record.
    world.broker.recover_consumer("dead-child-1", ["t1"])
    world.run()
    assert world.broker.lookup("t1") is None
    world.send("stuck", task_id="t2")
    [t2] = world.broker.reserve("dead-child-2", ["default"], 1, world.now_ms(), LEASE_MS).deliveries
    recorder.fail_outside(t2, "hard_timeout", consumer="dead-child-2")
    assert world.broker.lookup("t1") is None, "t1's refused retry was sent with t2's"
    assert world.stored("t2").retries == 1 and world.stats() == (1, 0, 0)
    assert recorder.pending_settles == [] and world.runner.pending_settles == []


def test_a_retry_is_kept_when_the_acks_before_it_are_refused() -> None:
    """Acks go first, and are sent with the retry when the task fails; if the broker refuses them, the retry
    must be kept as well, or the failed task stays owned by this live consumer with nothing to settle it."""
    world = make_world(defer_acks=True, max_retries=2)

    def flaky() -> None:
        raise ValueError("try again")

    world.task("flaky", flaky, retry_on=(ValueError,))
    outage = Outage(world.broker)
    world.runner.broker = outage
    world.send("add", 1, 2, task_id="t1")
    world.send("flaky", task_id="t2")
    world.run()  # t1 succeeds: its ack waits for the next reservation
    outage.down = True
    with pytest.raises(BrokerUnavailableError):
        world.run()  # t2 fails: the acks, then its retry, are refused
    outage.down = False
    world.runner.flush_settles()
    assert world.broker.in_flight() == []
    assert world.stored("t2").retries == 1 and world.broker.lookup("t1") is None


# -- task ids the running board cannot hold -----------------------------------------------------------


def test_a_task_id_over_255_utf8_bytes_is_dead_lettered_before_it_is_reported() -> None:
    reporter = RecordingReporter()
    world = make_world(reporter=reporter)
    long_id = "\u00e9" * 128  # 128 characters, 256 bytes in UTF-8
    world.send("add", 1, 2, task_id=long_id)
    world.run()
    assert world.calls == [] and reporter.events == []
    [letter] = world.broker.dead_letters()
    assert letter.id == long_id
    assert letter.reason == "task id is 256 bytes long in UTF-8, over the 255 a worker can track"
    assert world.stats() == (0, 0, 0)


def test_a_task_id_of_255_utf8_bytes_runs() -> None:
    reporter = RecordingReporter()
    world = make_world(reporter=reporter)
    task_id = "\u00e9" * 127 + "x"
    world.send("add", 1, 2, task_id=task_id)
    world.run()
    assert world.calls == [("add", 3, 1)]
    assert reporter.events == [("started", 0, task_id, 0.0), ("finished", 0)]


# -- timeouts that cannot work together ---------------------------------------------------------------


def test_a_soft_timeout_not_below_the_hard_one_is_dropped_at_run_time_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alarm = RecordingAlarm()
    world = make_world(alarm=alarm)
    # Declared in another config (where it was valid): this worker's app has a hard timeout of 60s, the task
    # a soft one of 100s.
    world.task("long", lambda: None, soft_timeout=100.0)
    world.registry.defaults = AppDefaults(hard_timeout=60.0)
    for task_id in ("a", "b"):
        world.send("long", task_id=task_id)
        world.run()
    assert alarm.events == []  # the hard timeout still holds; the soft one could never fire first
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["task long on queue default: soft_timeout 100s (from the task) is not below "
                        "hard_timeout 60s (from the app); running it without a soft timeout"]


# -- CancelledError: the task's own, or the worker's asyncio task being cancelled ---------------------

# Every way the runner tells them apart on this Python (the fallback for 3.10 works everywhere).
CANCELLATION_STRATEGIES = [s for s in (getattr(cancellation, "run_checking_cancelling", None),
                                       cancellation.run_in_own_task) if s is not None]


@pytest.fixture(params=CANCELLATION_STRATEGIES, ids=lambda s: s.__name__)
def strategy(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(runner_module, "run_task_body", request.param)
    return request.param


async def awaits_a_cancelled_future() -> None:
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


def raises_cancelled_error() -> None:
    raise asyncio.CancelledError("from the task")


CANCELLING_TASKS = [("async, no soft timeout", awaits_a_cancelled_future, None),
                    ("async, soft timeout", awaits_a_cancelled_future, 5.0),
                    ("sync", raises_cancelled_error, None),
                    ("sync, soft timeout", raises_cancelled_error, 5.0)]


@pytest.mark.usefixtures("strategy")
@pytest.mark.parametrize(("label", "fn", "soft_timeout"), CANCELLING_TASKS, ids=[c[0] for c in CANCELLING_TASKS])
def test_a_cancelled_error_from_the_task_is_an_exception_not_a_soft_timeout(
    label: str, fn: Callable[[], Any], soft_timeout: float | None, caplog: pytest.LogCaptureFixture,
) -> None:
    world = make_world(max_retries=3)
    world.task("cancelled", fn, soft_timeout=soft_timeout)
    world.send("cancelled")
    world.run()
    message = "from the task" if fn is raises_cancelled_error else ""
    assert world.dead_reasons() == [f"raised CancelledError: {message}"]  # no retry_on: not retried
    assert world.stats() == (0, 0, 0)
    assert "soft timeout" not in caplog.text
    assert "cancelled[t1] failed in " in caplog.text


@pytest.mark.usefixtures("strategy")
def test_a_cancelled_error_from_the_task_is_retried_with_backoff_when_retry_on_names_it() -> None:
    world = make_world()
    world.task("cancelled", awaits_a_cancelled_future, retry_on=(asyncio.CancelledError,), max_retries=1)
    world.send("cancelled")
    world.run()
    assert world.stats() == (0, 1, 0)  # waits its backoff (1s * rand 0.5), unlike a timeout
    world.clock.advance(0.5)
    world.run()
    assert world.dead_reasons() == ["raised CancelledError: ; gave up after 1 retries (max_retries=1)"]


@pytest.mark.usefixtures("strategy")
def test_a_cancelled_error_from_an_after_task_finished_hook_is_logged_and_the_task_acknowledged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = make_world()
    world.registry.hooks.after_task_finished.append(awaits_a_cancelled_future)
    world.send("add", 1, 2)
    world.run()
    assert world.calls == [("add", 3, 1)] and world.stats() == (0, 0, 0)
    assert "after_task_finished hook failed" in caplog.text


@pytest.mark.usefixtures("strategy")
def test_hexq_soft_timeout_of_an_async_task_is_still_a_soft_timeout() -> None:
    world = make_world(max_retries=0)

    async def slow() -> None:
        await asyncio.sleep(5)

    world.task("slow", slow, soft_timeout=0.01)
    world.send("slow")
    world.run()
    assert world.dead_reasons() == ["soft timeout; gave up after 0 retries (max_retries=0)"]


@pytest.mark.usefixtures("strategy")
@pytest.mark.parametrize("error", [TimeoutError("socket"), asyncio.TimeoutError("inner wait_for")], ids=repr)
def test_a_timeout_error_from_an_async_task_is_an_exception_not_its_soft_timeout(error: Exception) -> None:
    world = make_world(max_retries=3)

    async def times_out_on_its_own() -> None:
        raise error

    world.task("own", times_out_on_its_own, soft_timeout=5.0)
    world.send("own")
    world.run()
    assert world.dead_reasons() == [f"raised {type(error).__name__}: {error}"]


def test_the_default_strategy_is_the_cheapest_this_python_has() -> None:
    assert cancellation.run_task_body is CANCELLATION_STRATEGIES[0]


@pytest.mark.usefixtures("strategy")
@pytest.mark.parametrize("soft_timeout", [None, 5.0])
def test_cancelling_the_run_itself_propagates_and_records_nothing(soft_timeout: float | None) -> None:
    reporter = RecordingReporter()
    world = make_world(reporter=reporter, max_retries=3)
    entered, unwound = asyncio.Event(), []

    async def waits() -> None:
        entered.set()
        try:
            await asyncio.sleep(10)
        finally:
            unwound.append(True)

    world.task("waits", waits, soft_timeout=soft_timeout)
    world.send("waits")
    delivery = world.reserve()

    async def cancel_mid_run() -> None:
        run = asyncio.ensure_future(world.runner.run(delivery))
        await entered.wait()
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(cancel_mid_run())
    assert unwound == [True]
    assert world.stats() == (0, 0, 1)  # still owned: it comes back with the lease, as after a crash
    assert world.broker.dead_letters() == []
    assert reporter.events == [("started", 0, "t1", 0.0), ("finished", 0)]
    assert current_task.get() is None
