"""Deadlines (``expires=``): how a task's and a call's deadline are read, refused, carried in the envelope, and
honoured by the runner before a task starts and before it is retried."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest
from service_fixtures import make_app
from test_runner import CONSUMER, World, make_world

from hexq import HexQ
from hexq.adapters.memory import FakeClock
from hexq.core.errors import ConfigError, DeadlineError
from hexq.core.message import TaskMessage

NOW = FakeClock().wall  # the fake clock's wall time, epoch seconds


def stored(app: HexQ, task_id: str) -> TaskMessage:
    delivery = app.broker.lookup(task_id)
    assert delivery is not None and isinstance(delivery.payload, str)
    return app.codec.decode(delivery.payload)


# -- sending -------------------------------------------------------------------------------------------

def test_no_deadline_writes_no_envelope_field() -> None:
    app, _, _ = make_app()

    @app.task
    def job() -> None: ...

    task_id = job.delay()
    assert stored(app, task_id).expires is None
    delivery = app.broker.lookup(task_id)
    assert delivery is not None and '"expires"' not in str(delivery.payload)


@pytest.mark.parametrize("expires", [30, 30.0, timedelta(seconds=30)])
def test_a_tasks_deadline_is_counted_from_each_send(expires: Any) -> None:
    app, _, clock = make_app()

    @app.task(expires=expires)
    def job() -> None: ...

    first = job.delay()
    clock.advance(100)
    second = job.delay()
    assert stored(app, first).expires == NOW + 30
    assert stored(app, second).expires == NOW + 130


@pytest.mark.parametrize(("expires", "deadline"), [
    (5, NOW + 5), (timedelta(minutes=1), NOW + 60),
    (datetime.fromtimestamp(NOW + 90, timezone.utc), NOW + 90),
    # A naive datetime means UTC, as for eta.
    (datetime.fromtimestamp(NOW + 90, timezone.utc).replace(tzinfo=None), NOW + 90),
])
def test_a_calls_deadline_overrides_the_tasks(expires: Any, deadline: float) -> None:
    app, _, _ = make_app()

    @app.task(expires=3600)
    def job(n: int) -> None: ...

    assert stored(app, job.options(expires=expires).delay(1)).expires == deadline
    assert stored(app, job.apply([1], expires=expires)).expires == deadline
    [bound] = job.delay_many([job.options(expires=expires).bind(2)])
    assert stored(app, bound).expires == deadline


def test_an_eta_task_keeps_its_deadline() -> None:
    app, _, _ = make_app()

    @app.task
    def job() -> None: ...

    task_id = job.options(eta=10, expires=20).delay()
    message = stored(app, task_id)
    assert (message.eta, message.expires) == (NOW + 10, NOW + 20)


def test_a_deadline_already_past_is_refused_naming_the_task_and_the_deadline() -> None:
    app, broker, _ = make_app()

    @app.task
    def job() -> None: ...

    past = datetime.fromtimestamp(NOW - 2, timezone.utc)
    with pytest.raises(DeadlineError) as caught:
        job.options(expires=past).delay()
    assert str(caught.value) == (
        "task 'job': its deadline 2023-11-14T22:13:18.000+00:00 has already passed (2.000s ago); nothing was "
        "enqueued (give a later expires=, or none)")
    assert (caught.value.task, caught.value.deadline) == ("job", NOW - 2)
    assert broker.queue_stats(["high", "low"])[1].pending == 0


def test_an_eta_after_the_deadline_is_refused() -> None:
    app, broker, _ = make_app()

    @app.task(expires=60)
    def job() -> None: ...

    with pytest.raises(DeadlineError, match=r"task 'job': its eta .* is after its deadline .*, so it would never "
                                            r"run; nothing was enqueued"):
        job.options(eta=120).delay()
    assert [s.eta for s in broker.queue_stats(["high", "low"])] == [0, 0]


@pytest.mark.parametrize(("expires", "message"), [
    (0, "task 'job' expires must be a positive, finite duration, got 0"),
    (-5, "task 'job' expires must be a positive, finite duration, got -5"),
    (float("inf"), "task 'job' expires must be a positive, finite duration"),
    ("1h", r"task 'job' expires must be seconds \(int/float\) or a timedelta, got '1h'"),
    (True, "task 'job' expires must be seconds"),
    (datetime(2030, 1, 1), r"task 'job' expires must be a duration \(seconds or a timedelta, counted from each "
                           r"\.delay\(\)\), got the datetime"),
])
def test_an_invalid_task_deadline_is_refused_at_declaration(expires: Any, message: str) -> None:
    app, _, _ = make_app()
    with pytest.raises(ConfigError, match=message):
        @app.task(expires=expires)
        def job() -> None: ...


@pytest.mark.parametrize(("expires", "message"), [
    (0, "expires must be a positive, finite duration, got 0"),
    (timedelta(seconds=-1), "expires must be a positive, finite duration"),
    ("tomorrow", "expires must be seconds .* or a timedelta, got 'tomorrow'"),
    (10 ** 12, "expires 1000000000000 is more than 100 years away"),
])
def test_an_invalid_call_deadline_is_refused_and_nothing_is_stored(expires: Any, message: str) -> None:
    app, broker, _ = make_app()

    @app.task
    def job() -> None: ...

    with pytest.raises(ConfigError, match=message):
        job.options(expires=expires).delay()
    assert broker.queue_stats(["low"])[0].pending == 0


# -- running -------------------------------------------------------------------------------------------

def send(world: World, name: str, *args: Any, expires: float | None, task_id: str = "t1") -> None:
    message = TaskMessage(task_id, name, "default", args, {}, 0, world.clock.now(), None, False, expires)
    world.put(world.codec.encode(message), task_id)


@attrs.define
class CountingMetrics:
    """The Metrics port, keeping what the runner reports about deadlines and outcomes."""

    expirations: list[tuple[str, str]] = attrs.field(factory=list)
    outcomes: list[str] = attrs.field(factory=list)

    def enqueued(self, task: str, queue: str, count: int) -> None: ...

    def started(self, task: str, queue: str) -> None: ...

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        self.outcomes.append(outcome)

    def recovered(self, count: int) -> None: ...

    def expired(self, task: str, queue: str) -> None:
        self.expirations.append((task, queue))

    def queue_depths(self, pending: dict[str, int], eta: dict[str, int], in_flight: dict[str, int]) -> None: ...


def test_a_task_started_by_its_deadline_runs() -> None:
    world = make_world()
    send(world, "add", 1, 2, expires=world.clock.now() + 5)
    world.clock.advance(5)  # exactly at the deadline: still in time
    world.run()
    assert world.calls == [("add", 3, 1)]
    assert world.broker.queue_stats(["default"])[0].expired == 0


def test_a_task_past_its_deadline_is_dropped_unrun_and_counted() -> None:
    metrics = CountingMetrics()
    world = make_world(metrics=metrics)
    send(world, "add", 1, 2, expires=world.clock.now() + 5)
    world.clock.advance(5.001)
    world.run()
    assert world.calls == []
    assert world.stats() == (0, 0, 0) and world.broker.lookup("t1") is None
    assert world.broker.queue_stats(["default"])[0].expired == 1
    assert world.dead_reasons() == []
    assert metrics.expirations == [("add", "default")] and metrics.outcomes == []


def test_a_task_that_crashed_its_worker_and_is_past_its_deadline_is_dropped_not_run_again() -> None:
    world = make_world()
    send(world, "add", 1, 2, expires=world.clock.now() + 5)
    world.reserve()
    world.broker.recover_consumer(CONSUMER, ["t1"])  # the worker running it died
    world.clock.advance(6)
    world.run()
    assert world.calls == [] and world.broker.queue_stats(["default"])[0].expired == 1


def test_a_retry_that_would_start_after_the_deadline_expires_at_once() -> None:
    metrics = CountingMetrics()
    world = make_world(metrics=metrics)

    def flaky() -> None:
        raise ConnectionError("down")

    world.task("flaky", flaky, retry_on=(ConnectionError,), max_retries=5, backoff=20.0)
    send(world, "flaky", expires=world.clock.now() + 5)  # the first retry waits 20 * 0.5 = 10 s
    world.run()
    assert world.stats() == (0, 0, 0) and world.broker.lookup("t1") is None
    assert world.broker.queue_stats(["default"])[0].expired == 1
    assert world.dead_reasons() == []
    assert metrics.outcomes == ["expired"] and metrics.expirations == [("flaky", "default")]


def test_a_retry_within_the_deadline_is_scheduled_and_keeps_it() -> None:
    world = make_world()

    def flaky() -> None:
        raise ConnectionError("down")

    world.task("flaky", flaky, retry_on=(ConnectionError,), max_retries=5, backoff=2.0)
    deadline = world.clock.now() + 5
    send(world, "flaky", expires=deadline)  # the first retry waits 1 s
    world.run()
    assert world.stats() == (0, 1, 0)
    assert world.stored().expires == deadline  # carried over to the next attempt
    world.clock.advance(1)
    world.run()  # fails again; the next retry would wait 2 s, still within the deadline (4 s left)
    assert world.stats() == (0, 1, 0)
    world.clock.advance(2)
    world.run()  # the next would wait 4 s, past the deadline (2 s left): expired
    assert world.stats() == (0, 0, 0) and world.broker.queue_stats(["default"])[0].expired == 1


def test_a_hard_timeout_whose_retry_would_miss_the_deadline_expires_for_the_dead_childs_consumer() -> None:
    world = make_world(max_retries=3)
    world.task("stuck", lambda: None, hard_timeout=10.0)
    send(world, "stuck", expires=world.clock.now() + 5)
    delivery = world.reserve()
    world.clock.advance(11)  # the child was killed at its hard timeout, past the deadline
    world.runner.fail_outside(delivery, "hard_timeout", consumer=CONSUMER)
    assert world.stats() == (0, 0, 0) and world.broker.in_flight() == []
    assert world.broker.queue_stats(["default"])[0].expired == 1


def test_in_process_mode_never_runs_a_task_whose_eta_came_after_its_deadline_passed() -> None:
    clock = FakeClock()
    app = HexQ(url="memory://", clock=clock)
    ran: list[int] = []

    @app.task
    def job(n: int) -> None:
        ran.append(n)

    job.options(eta=2, expires=3).delay(1)
    job.options(eta=2, expires=30).delay(2)
    clock.advance(4)  # nobody ran pending tasks until after the first one's deadline
    app.run_pending()
    assert ran == [2]
    assert app.broker.queue_stats(["default"])[0].expired == 1



# -- status ----------------------------------------------------------------------------------------------------

def test_an_expired_tasks_status_reads_expired_for_a_day_without_keep_result() -> None:
    from hexq import TaskFailed, TaskStatus

    clock = FakeClock()
    app = HexQ(url="memory://", clock=clock)

    @app.task
    def job() -> None: ...

    handle = job.options(eta=2, expires=3).delay()
    assert handle.status() is TaskStatus.SCHEDULED
    clock.advance(4)
    app.run_pending()
    assert handle.status() is TaskStatus.EXPIRED
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=0)
    assert (failed.value.status, failed.value.type) == ("expired", "DeadlinePassed")
    assert failed.value.message.startswith("its deadline passed 1.0")
    clock.advance(24 * 3600 - 1)
    assert handle.status() is TaskStatus.EXPIRED
    clock.advance(2)
    assert handle.status() is TaskStatus.UNKNOWN


def test_an_expired_task_keeps_its_record_for_its_keep_result() -> None:
    from hexq import TaskStatus

    clock = FakeClock()
    app = HexQ(url="memory://", clock=clock)

    @app.task(keep_result=60)
    def job() -> None: ...

    handle = job.options(eta=2, expires=3).delay()
    clock.advance(4)
    app.run_pending()
    assert handle.status() is TaskStatus.EXPIRED
    clock.advance(59)  # its record was written when it expired, 60 s ago less one
    assert handle.status() is TaskStatus.EXPIRED
    clock.advance(2)
    assert handle.status() is TaskStatus.UNKNOWN
