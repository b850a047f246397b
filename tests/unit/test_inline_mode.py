"""In-process mode (``url="memory://"``): .delay() runs tasks here, through the real broker contract."""

from __future__ import annotations

import asyncio
import inspect
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from hexq import ConfigError, HexQ, Queue, SerializationError, current_attempt, current_task
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.errors import PayloadTooLargeError
from hexq.core.message import Codec

Q_HIGH = "a-high-priority-queue"
Q_MED = "a-medium-priority-queue"
Q_DEFAULT = "default-lowest-priority-queue"
QUEUES = [(0, Q_HIGH), (1, Q_MED), Q_DEFAULT]


def make(**options: Any) -> tuple[HexQ, MemoryBroker, FakeClock]:
    broker, clock = MemoryBroker(), FakeClock()
    options.setdefault("queues", QUEUES)
    return HexQ(url="memory://", broker=broker, clock=clock, **options), broker, clock


def pending(broker: MemoryBroker) -> list[tuple[int, int, int]]:
    return [(s.pending, s.eta, s.in_flight) for s in broker.queue_stats([Q_HIGH, Q_MED, Q_DEFAULT])]


NOTHING_LEFT = [(0, 0, 0)] * 3


def test_readme_mytask_delay_prints_the_sum_and_returns_an_id(capsys: pytest.CaptureFixture[str]) -> None:
    app, broker, _ = make()

    @app.task(queue=Q_MED, max_retries=7, soft_timeout=420, hard_timeout=480)
    def mytask(x: int, y: int) -> None:
        print(x + y)

    task_id = mytask.delay(1, 1)
    assert capsys.readouterr().out == "2\n"
    assert isinstance(task_id, str) and len(task_id) == 32 and int(task_id, 16) >= 0
    assert mytask.delay(1, 1) != task_id
    assert pending(broker) == NOTHING_LEFT
    assert broker.dead_letters() == []


def test_queue_override_and_default_queue() -> None:
    app, _, _ = make()
    seen: list[tuple[str, str]] = []

    @app.task(queue=Q_MED)
    def on_med() -> None:
        message = current_task.get()
        assert message is not None
        seen.append((message.name, message.queue))

    @app.task
    def anywhere() -> None:
        message = current_task.get()
        assert message is not None
        seen.append((message.name, message.queue))

    on_med.delay()
    on_med.delay(queue=Q_HIGH)
    anywhere.delay()
    anywhere.apply(queue=Q_MED)
    assert seen == [("on_med", Q_MED), ("on_med", Q_HIGH), ("anywhere", Q_DEFAULT), ("anywhere", Q_MED)]


def test_current_task_and_attempt_are_visible_inside_and_reset_after() -> None:
    app, _, _ = make()
    seen: list[Any] = []

    @app.task
    def job(x: int, *, y: str) -> None:
        seen.append((current_task.get(), current_attempt.get()))

    task_id = job.delay(5, y="z")
    [(message, attempt)] = seen
    assert message.id == task_id
    assert (message.name, message.queue, message.args, message.kwargs) == ("job", Q_DEFAULT, (5,), {"y": "z"})
    assert message.retries == 0 and attempt == 1
    assert current_task.get() is None


# -- eta ----------------------------------------------------------------------------------------------

WALL = FakeClock().wall  # the fake clock's start, epoch seconds

ETAS: list[tuple[str, Any]] = [
    ("timedelta", timedelta(seconds=10)),
    ("int seconds", 10),
    ("float seconds", 10.0),
    ("naive datetime is UTC", datetime.fromtimestamp(WALL + 10, timezone.utc).replace(tzinfo=None)),
    ("aware datetime UTC", datetime.fromtimestamp(WALL + 10, timezone.utc)),
    ("aware datetime +02:00", datetime.fromtimestamp(WALL + 10, timezone(timedelta(hours=2)))),
    ("aware datetime -05:00", datetime.fromtimestamp(WALL + 10, timezone(timedelta(hours=-5)))),
]


@pytest.mark.parametrize(("label", "eta"), ETAS, ids=[e[0] for e in ETAS])
def test_eta_task_waits_for_the_clock_then_runs(label: str, eta: Any) -> None:
    app, broker, clock = make()
    ran: list[int] = []

    @app.task
    def later(x: int) -> None:
        ran.append(x)

    later.delay(7, eta=eta)
    assert ran == []
    assert pending(broker)[2] == (0, 1, 0)
    assert app.run_pending() == 0
    clock.advance(9.9)
    assert app.run_pending() == 0 and ran == []
    clock.advance(0.1)
    assert app.run_pending() == 1
    assert ran == [7]
    assert pending(broker) == NOTHING_LEFT


def test_eta_in_the_past_runs_at_once() -> None:
    app, _, _ = make()
    ran: list[int] = []

    @app.task
    def job() -> None:
        ran.append(1)

    job.delay(eta=timedelta(seconds=-30))
    job.delay(eta=datetime(2000, 1, 1))
    assert ran == [1, 1]


def test_eta_tasks_are_deduplicated_by_name_and_arguments() -> None:
    app, broker, clock = make()
    ran: list[tuple[int, int]] = []

    @app.task
    def job(a: int, b: int = 0) -> None:
        ran.append((a, b))

    job.delay(1, b=2, eta=10)
    job.delay(1, b=2, eta=20)  # same task and arguments: replaces the first (later eta wins, like ZADD)
    job.delay(1, b=3, eta=10)  # other arguments: a separate task
    assert pending(broker)[2] == (0, 2, 0)
    clock.advance(10)
    app.run_pending()
    assert ran == [(1, 3)]
    clock.advance(10)
    app.run_pending()
    assert ran == [(1, 3), (1, 2)]


def test_eta_dedup_is_per_queue() -> None:
    app, _, clock = make()
    ran: list[str] = []

    @app.task
    def job() -> None:
        message = current_task.get()
        assert message is not None
        ran.append(message.queue)

    job.delay(eta=5)
    job.delay(eta=5, queue=Q_HIGH)
    clock.advance(5)
    app.run_pending()
    assert ran == [Q_HIGH, Q_DEFAULT]


@pytest.mark.parametrize("eta", ["tomorrow", True, float("nan"), float("inf"), object()],
                         ids=["text", "bool", "nan", "inf", "object"])  # object()'s repr changes per process
def test_invalid_eta_raises_and_enqueues_nothing(eta: Any) -> None:
    app, broker, _ = make()

    @app.task
    def job() -> None: ...

    with pytest.raises(ConfigError, match="eta"):
        job.delay(eta=eta)
    assert pending(broker) == NOTHING_LEFT


# -- failures -----------------------------------------------------------------------------------------


def test_task_raising_with_retry_on_retries_with_backoff_then_dead_letters() -> None:
    app, broker, clock = make()
    attempts: list[int] = []

    @app.task(retry_on=(ConnectionError,), max_retries=2, backoff=1.0, backoff_max=60.0)
    def flaky() -> None:
        attempts.append(current_attempt.get())
        raise ConnectionError("db down")

    flaky.delay()  # does not raise: the failure is the worker's business
    assert attempts == [1]
    assert pending(broker)[2] == (0, 1, 0)  # waiting for its backoff
    for expected in ([1, 2], [1, 2, 3]):
        clock.advance(600)
        app.run_pending()
        assert attempts == expected
    assert pending(broker) == NOTHING_LEFT
    [letter] = broker.dead_letters()
    assert letter.queue == Q_DEFAULT
    assert "raised ConnectionError: db down" in letter.reason
    assert "gave up after 2 retries (max_retries=2)" in letter.reason
    assert letter.payload is not None
    assert Codec().decode(letter.payload).retries == 2
    clock.advance(600)
    assert app.run_pending() == 0 and attempts == [1, 2, 3]


def test_zero_backoff_retries_at_once() -> None:
    app, broker, _ = make()
    attempts: list[int] = []

    @app.task(retry_on=(ValueError,), max_retries=3, backoff=0)
    def flaky() -> None:
        attempts.append(current_attempt.get())
        raise ValueError("nope")

    flaky.delay()
    assert attempts == [1, 2, 3, 4]
    assert len(broker.dead_letters()) == 1


def test_task_retried_until_it_succeeds() -> None:
    app, broker, _ = make()
    attempts: list[int] = []

    @app.task(retry_on=(ValueError,), max_retries=5, backoff=0)
    def flaky() -> None:
        attempts.append(current_attempt.get())
        if len(attempts) < 3:
            raise ValueError("not yet")

    flaky.delay()
    assert attempts == [1, 2, 3]
    assert broker.dead_letters() == [] and pending(broker) == NOTHING_LEFT


@pytest.mark.parametrize("error", [ValueError("bad"), SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_exception_without_retry_on_dead_letters_at_once(error: BaseException) -> None:
    app, broker, _ = make(max_retries=5)
    runs: list[int] = []

    @app.task
    def broken() -> None:
        runs.append(1)
        raise error

    broken.delay()
    assert runs == [1]
    [letter] = broker.dead_letters()
    assert letter.reason.startswith(f"raised {type(error).__name__}")


def test_async_task_runs() -> None:
    app, _, _ = make()
    ran: list[Any] = []

    @app.task
    async def fetch(url: str) -> None:
        await asyncio.sleep(0)
        ran.append((url, current_task.get() is not None))

    fetch.delay("https://example.com")
    assert ran == [("https://example.com", True)]


def test_async_task_past_soft_timeout_is_cancelled_and_retried_per_max_retries() -> None:
    app, broker, _ = make()
    attempts: list[int] = []
    cancelled: list[int] = []

    @app.task(soft_timeout=0.02, max_retries=2)
    async def slow() -> None:
        attempts.append(current_attempt.get())
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    slow.delay()
    assert attempts == [1, 2, 3]
    assert cancelled == [1, 1, 1]
    [letter] = broker.dead_letters()
    assert letter.reason == "soft timeout; gave up after 2 retries (max_retries=2)"


def test_async_soft_timeout_without_max_retries_is_not_retried() -> None:
    app, broker, _ = make()
    attempts: list[int] = []

    @app.task(soft_timeout=0.02)
    async def slow() -> None:
        attempts.append(1)
        await asyncio.sleep(5)

    slow.delay()
    assert attempts == [1]
    assert broker.dead_letters()[0].reason.startswith("soft timeout")


def test_queue_max_retries_applies_to_soft_timeout() -> None:
    app, _, _ = make(queues=[Queue("q", max_retries=1, soft_timeout=0.02)], max_retries=4)
    attempts: list[int] = []

    @app.task
    async def slow() -> None:
        attempts.append(1)
        await asyncio.sleep(5)

    slow.delay()
    assert attempts == [1, 1]


# -- wrappers and hooks -------------------------------------------------------------------------------


def test_async_wrappers_first_registered_outermost_for_sync_and_async_tasks() -> None:
    app, _, _ = make()
    trace: list[str] = []

    @app.wrap_tasks_with
    async def outer(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        trace.append(f"outer>{args}{kwargs}")
        if inspect.iscoroutinefunction(fn):
            await fn(*args, **kwargs)
        else:
            fn(*args, **kwargs)
        trace.append("<outer")

    @app.wrap_tasks_with
    async def inner(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        trace.append("inner>")
        if inspect.iscoroutinefunction(fn):
            await fn(*args, **kwargs)
        else:
            fn(*args, **kwargs)
        trace.append("<inner")

    @app.task
    def sync_task(x: int, y: int = 0) -> None:
        trace.append(f"sync {x} {y}")

    @app.task
    async def async_task() -> None:
        trace.append("async")

    sync_task.delay(1, y=2)
    assert trace == ["outer>(1,){'y': 2}", "inner>", "sync 1 2", "<inner", "<outer"]
    trace.clear()
    async_task.delay()
    assert trace == ["outer>(){}", "inner>", "async", "<inner", "<outer"]


def test_sync_wrappers_first_registered_outermost() -> None:
    app, _, _ = make()
    trace: list[str] = []

    @app.wrap_tasks_with
    def first(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.append("first>")
        result = fn(*args, **kwargs)
        trace.append("<first")
        return result

    @app.wrap_tasks_with
    def second(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.append("second>")
        result = fn(*args, **kwargs)
        trace.append("<second")
        return result

    @app.task
    def job(x: int) -> None:
        trace.append(f"job {x}")

    job.delay(3)
    assert trace == ["first>", "second>", "job 3", "<second", "<first"]


def test_a_wrapper_added_after_tasks_ran_wraps_the_next_runs() -> None:
    # The wrapped call is built once per task and wrapper list: a new wrapper must make a new one.
    app, _, _ = make()
    trace: list[str] = []

    @app.task
    def job(x: int) -> None:
        trace.append(f"job {x}")

    job.delay(1)

    @app.wrap_tasks_with
    def later(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        trace.append("later>")
        return fn(*args, **kwargs)

    job.delay(2)
    job.delay(3)
    assert trace == ["job 1", "later>", "job 2", "later>", "job 3"]


class _UnhashableWrapper:
    """A callable object that defines __eq__ alone, so it cannot be hashed (nor cached by identity)."""

    def __init__(self, trace: list[str]) -> None:
        self.trace = trace

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnhashableWrapper)

    def __call__(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.trace.append("object>")
        return fn(*args, **kwargs)


def test_an_unhashable_callable_object_can_wrap_tasks() -> None:
    app, _, _ = make(keep_result=60)
    trace: list[str] = []
    app.wrap_tasks_with(_UnhashableWrapper(trace))

    @app.task
    def job(x: int) -> int:
        trace.append(f"job {x}")
        return x * 2

    assert job.delay(4).result(timeout=0) == 8
    job.delay(5)
    assert trace == ["object>", "job 4", "object>", "job 5"]


def test_sync_wrapper_returning_the_coroutine_of_an_async_task_runs_it() -> None:
    app, _, _ = make()
    ran: list[str] = []

    @app.wrap_tasks_with
    def passthrough(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fn(*args, **kwargs)

    @app.task
    async def job() -> None:
        ran.append("job")

    job.delay()
    assert ran == ["job"]


def test_wrapper_exception_fails_the_task() -> None:
    app, broker, _ = make()

    @app.wrap_tasks_with
    def refuse(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        raise PermissionError("no app context")

    @app.task
    def job() -> None: ...

    job.delay()
    assert broker.dead_letters()[0].reason == "raised PermissionError: no app context"


def test_before_and_after_hooks_run_around_every_task_even_when_it_fails() -> None:
    app, _, _ = make()
    trace: list[str] = []

    @app.before_task_started
    def before() -> None:
        message = current_task.get()
        trace.append(f"before {message.name if message else None}")

    @app.after_task_finished
    async def after() -> None:
        trace.append("after")

    @app.task
    def ok() -> None:
        trace.append("ok")

    @app.task
    def bad() -> None:
        trace.append("bad")
        raise RuntimeError("x")

    ok.delay()
    bad.delay()
    assert trace == ["before ok", "ok", "after", "before bad", "bad", "after"]


def test_failing_before_hook_fails_the_task_without_running_it() -> None:
    app, broker, _ = make()
    ran: list[int] = []

    @app.before_task_started
    def before() -> None:
        raise RuntimeError("hook broke")

    @app.task
    def job() -> None:
        ran.append(1)

    job.delay()
    assert ran == []
    assert broker.dead_letters()[0].reason == "raised RuntimeError: hook broke"


def test_failing_after_hook_does_not_fail_the_task() -> None:
    app, broker, _ = make()

    @app.after_task_finished
    def after() -> None:
        raise RuntimeError("hook broke")

    @app.task
    def job() -> None: ...

    job.delay()
    assert broker.dead_letters() == [] and pending(broker) == NOTHING_LEFT


# -- re-entrancy, special call forms ------------------------------------------------------------------


def test_task_delaying_another_task_runs_both_in_order() -> None:
    app, broker, _ = make()
    trace: list[str] = []

    @app.task
    def child(n: int) -> None:
        trace.append(f"child {n}")

    @app.task
    def parent() -> None:
        trace.append("parent start")
        child_id = child.delay(1)
        trace.append(f"parent got id {len(child_id)}")
        child.delay(2)
        trace.append("parent end")

    parent.delay()
    assert trace == ["parent start", "parent got id 32", "parent end", "child 1", "child 2"]
    assert pending(broker) == NOTHING_LEFT


def test_async_task_delaying_another_task() -> None:
    app, _, _ = make()
    trace: list[str] = []

    @app.task
    async def child() -> None:
        trace.append("child")

    @app.task
    async def parent() -> None:
        child.delay()
        trace.append("parent")

    parent.delay()
    assert trace == ["parent", "child"]


def test_apply_for_a_task_whose_parameters_are_named_queue_and_eta() -> None:
    app, broker, _ = make()
    seen: list[tuple[Any, Any]] = []

    @app.task
    def route(queue: str, eta: int) -> None:
        message = current_task.get()
        assert message is not None
        seen.append((queue, eta, message.queue))  # type: ignore[arg-type]

    route.apply(args=["the-queue"], kwargs={"eta": 99})
    route.apply(kwargs={"queue": "q-arg", "eta": 5}, queue=Q_HIGH)
    assert seen == [("the-queue", 99, Q_DEFAULT), ("q-arg", 5, Q_HIGH)]
    assert pending(broker) == NOTHING_LEFT


def test_delay_many_with_bind_and_tuples_runs_each_in_order() -> None:
    app, _, _ = make()
    results: list[int] = []

    @app.task
    def add(x: int, y: int = 0) -> None:
        results.append(x + y)

    ids = add.delay_many([add.bind(1, 2), (3, 4), add.bind(5, y=6), [7]])
    assert results == [3, 7, 11, 7]
    assert len(ids) == 4 and len(set(ids)) == 4
    assert ids == sorted(ids)  # ids are time-ordered


def test_delay_many_with_queue_and_eta() -> None:
    app, broker, clock = make()
    seen: list[tuple[int, str]] = []

    @app.task
    def job(n: int) -> None:
        message = current_task.get()
        assert message is not None
        seen.append((n, message.queue))

    job.delay_many([(1,), (2,)], queue=Q_HIGH, eta=timedelta(seconds=5))
    assert seen == [] and pending(broker)[0] == (0, 2, 0)
    clock.advance(5)
    app.run_pending()
    assert seen == [(1, Q_HIGH), (2, Q_HIGH)]


def test_delay_many_is_all_or_nothing_on_a_bad_argument() -> None:
    app, broker, _ = make()
    ran: list[int] = []

    @app.task
    def job(x: Any) -> None:
        ran.append(1)

    with pytest.raises(SerializationError):
        job.delay_many([(1,), ({1, 2},), (3,)])
    assert ran == [] and pending(broker) == NOTHING_LEFT


def test_broadcast_in_inline_mode_runs_once() -> None:
    app, broker, _ = make()
    seen: list[Any] = []

    @app.task
    def hello(name: str) -> None:
        message = current_task.get()
        assert message is not None
        seen.append((name, message.broadcast))

    assert hello.broadcast("all") == 1
    assert seen == [("all", True)]
    assert pending(broker) == NOTHING_LEFT


def test_calling_the_task_runs_it_inline_without_the_broker() -> None:
    # Nothing listens on port 1: touching the broker would fail.
    app = HexQ(url="redis://127.0.0.1:1/0", clock=FakeClock())
    seen: list[Any] = []

    @app.task(queue=None)
    def add(x: int, y: int) -> int:
        seen.append(current_task.get())
        return x + y

    assert add(2, 3) == 5
    assert add(x=1, y=1) == 2
    assert seen == [None, None]
    assert add.__name__ == "add" and add.name == "add"


def test_calling_the_task_directly_in_memory_mode_enqueues_nothing() -> None:
    app, broker, _ = make()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(2, 3) == 5
    assert pending(broker) == NOTHING_LEFT
    assert broker.dead_letters() == []


def test_bad_arguments_raise_at_delay_and_enqueue_nothing() -> None:
    app, broker, _ = make()
    ran: list[int] = []

    @app.task
    def job(*args: Any, **kwargs: Any) -> None:
        ran.append(1)

    with pytest.raises(SerializationError) as info:
        job.delay(1, {2, 3})
    assert info.value.task == "job" and info.value.where == "args[1]"
    with pytest.raises(SerializationError) as info:
        job.delay(when=object(), eta=10)
    assert info.value.where == "when"
    assert ran == [] and pending(broker) == NOTHING_LEFT


def test_payload_too_large_raises_at_delay_and_enqueues_nothing() -> None:
    app, broker, _ = make(max_payload_bytes=300)

    @app.task
    def job(blob: str) -> None: ...

    with pytest.raises(PayloadTooLargeError):
        job.delay("x" * 1000)
    assert pending(broker) == NOTHING_LEFT


def test_delay_from_inside_a_running_event_loop() -> None:
    app, _, _ = make()
    ran: list[str] = []

    @app.task
    def sync_job(x: int) -> None:
        ran.append(f"sync {x}")

    @app.task
    async def async_job() -> None:
        await asyncio.sleep(0)
        ran.append("async")

    async def main() -> list[str]:
        ids = [sync_job.delay(1), async_job.delay()]
        await asyncio.sleep(0)
        return ids

    ids = asyncio.run(main())
    assert ran == ["sync 1", "async"]
    assert len(ids) == 2


def test_signed_app_round_trips_in_inline_mode() -> None:
    app, _, _ = make(signing_key="a-key-of-16-chars")
    ran: list[Any] = []

    @app.task
    def job(when: datetime) -> None:
        ran.append(when)

    job.delay(datetime(2024, 1, 1, tzinfo=timezone.utc))
    assert ran == [datetime(2024, 1, 1, tzinfo=timezone.utc)]


def test_an_eta_with_a_fraction_of_a_millisecond_is_not_visible_before_it() -> None:
    clock = FakeClock(wall=1_700_000_000.0)
    application = HexQ(url="memory://", clock=clock)
    ran: list[float] = []

    @application.task
    def job() -> None:
        ran.append(clock.now())

    job.delay(eta=0.0105)  # due at ...000.0105 s
    clock.advance(0.0101)  # now ...000.0101 s: the same millisecond (10), but still before the eta
    application.run_pending()
    assert ran == []
    clock.advance(0.0009)  # ...000.0110 s: due (whole milliseconds: never early, at most 1 ms late)
    application.run_pending()
    assert len(ran) == 1 and ran[0] >= 1_700_000_000.0105
