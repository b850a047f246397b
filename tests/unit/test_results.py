"""Results and status in the in-process mode (``memory://``) and through the memory broker: keep_result
resolution, TaskHandle, TaskFailed, what is and is not written."""

from __future__ import annotations

import asyncio
import inspect
import pickle
import threading
import time
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest

from hexq import ConfigError, HexQ, Queue, ResultNotFound, TaskFailed, TaskHandle, TaskStatus
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.system.clock import SystemClock
from hexq.core.outcome import decode_outcome
from hexq.core.ports import OutcomeRecord, OutgoingTask
from hexq.core.services.results import ResultReader


def make(**options: Any) -> tuple[HexQ, MemoryBroker, FakeClock]:
    broker, clock = MemoryBroker(), FakeClock()
    return HexQ(url="memory://", broker=broker, clock=clock, **options), broker, clock


def test_a_handle_is_the_task_id_and_result_returns_at_once_in_process() -> None:
    app, _, _ = make(keep_result=timedelta(minutes=5))

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    h = add.delay(1, 2)
    assert h.result(timeout=5) == 3
    assert isinstance(h, TaskHandle) and isinstance(h, str) and h == h.id and len(h) == 32
    assert h.status() is TaskStatus.SUCCEEDED and h.status() == "succeeded"
    assert app.handle(str(h)).result() == 3
    assert pickle.loads(pickle.dumps(h)) == h.id  # a pickled handle is its id
    assert asyncio.run(h.aresult(timeout=1)) == 3


def test_values_come_back_through_the_argument_codec() -> None:
    app, _, _ = make(keep_result=60)

    @app.task
    def values() -> Any:
        return {"when": date(2024, 2, 29), "amount": Decimal("1.10"), "pair": (1, 2), "raw": b"\x00\xff"}

    assert values.delay().result() == {"when": date(2024, 2, 29), "amount": Decimal("1.10"), "pair": [1, 2],
                                       "raw": b"\x00\xff"}


def test_a_failed_task_raises_task_failed_with_the_remote_traceback() -> None:
    app, broker, _ = make(keep_result=60)

    @app.task
    def boom(n: int) -> None:
        raise ValueError(f"bad {n}")

    h = boom.delay(7)
    with pytest.raises(TaskFailed) as caught:
        h.result(timeout=1)
    failed = caught.value
    assert (failed.task_id, failed.task, failed.status, failed.type, failed.message) == (h, "boom", "failed",
                                                                                        "ValueError", "bad 7")
    assert "Traceback (most recent call last)" in failed.traceback
    assert 'raise ValueError(f"bad {n}")' in failed.traceback
    assert "Remote traceback" in str(failed)
    assert h.status() is TaskStatus.FAILED
    assert [letter.id for letter in broker.dead_letters()] == [h]  # dead-lettered as before, outcome beside it
    assert pickle.loads(pickle.dumps(failed)).traceback == failed.traceback


def test_a_task_that_gave_up_after_retries_is_failed_with_its_last_error() -> None:
    app, _, _ = make(keep_result=60)
    attempts: list[int] = []

    @app.task(max_retries=2, retry_on=KeyError, backoff=0)
    def flaky() -> None:
        attempts.append(1)
        raise KeyError(len(attempts))

    h = flaky.delay()
    with pytest.raises(TaskFailed, match="KeyError: 3"):
        h.result()
    assert len(attempts) == 3


def test_without_keep_result_nothing_is_written_and_result_says_why() -> None:
    app, broker, _ = make()

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    h = add.delay(1, 2)
    assert broker.task_state(h, 0).outcome is None
    assert h.status() is TaskStatus.UNKNOWN
    with pytest.raises(ResultNotFound, match="set keep_result="):
        h.result(timeout=1)


def test_keep_result_resolves_task_then_queue_then_app_and_zero_keeps_nothing() -> None:
    app, _, _ = make(queues=[Queue("kept", keep_result=30), Queue("plain"), "default"], keep_result=10)

    @app.task(queue="kept")
    def on_kept() -> int:
        return 1

    @app.task(queue="plain")
    def on_plain() -> int:
        return 2

    @app.task(queue="kept", keep_result=0)
    def opted_out() -> int:
        return 3

    @app.task(queue="plain", keep_result=timedelta(hours=1))
    def own() -> int:
        return 4

    limits = {t.name: app.registry.limits(t.definition, t.definition.options.queue or "default").keep_result_ms
              for t in (on_kept, on_plain, opted_out, own)}
    assert limits == {"on_kept": 30_000, "on_plain": 10_000, "opted_out": None, "own": 3_600_000}
    assert on_kept.delay().result() == 1
    with pytest.raises(ResultNotFound):
        opted_out.delay().result()


@pytest.mark.parametrize("value", [-1, "10s", True, float("nan"), timedelta(microseconds=10), 10**12])
def test_keep_result_refuses_what_is_not_a_duration(value: Any) -> None:
    with pytest.raises(ConfigError, match="keep_result"):
        HexQ(url="memory://", keep_result=value)
    with pytest.raises(ConfigError, match="keep_result"):
        Queue("q", keep_result=value)
    app = HexQ(url="memory://")
    with pytest.raises(ConfigError, match="task 'job' keep_result"):
        app.task(name="job", keep_result=value)(lambda: None)


def test_a_value_that_cannot_be_kept_fails_the_outcome_and_is_not_retried() -> None:
    app, broker, _ = make(keep_result=60, max_payload_bytes=2000)
    runs: list[str] = []

    @app.task(max_retries=3)
    def odd() -> Any:
        runs.append("odd")
        return {1, 2}

    @app.task(max_retries=3)
    def big() -> str:
        runs.append("big")
        return "x" * 5000

    with pytest.raises(TaskFailed) as unencodable:
        odd.delay().result()
    assert unencodable.value.type == "ResultNotKept"
    assert "returned a value that cannot be kept as JSON (result: type builtins.set is not supported)" in str(
        unencodable.value)
    too_big = r"returned a value too big to keep: its outcome is \d+ bytes as JSON, over the limit of 2000"
    with pytest.raises(TaskFailed, match=too_big):
        big.delay().result()
    assert runs == ["odd", "big"]  # ran once each
    assert broker.dead_letters() == []  # acknowledged: it ran, its value is what could not be kept


def test_status_of_an_eta_task_then_after_it_ran() -> None:
    app, _, clock = make(keep_result=60)

    @app.task
    def later() -> str:
        return "done"

    h = later.options(eta=timedelta(seconds=30)).delay()
    assert h.status() is TaskStatus.SCHEDULED
    with pytest.raises(TimeoutError, match=f"task {h} did not finish within 0 s \\(it is scheduled"):
        h.result(timeout=0)
    clock.advance(31)
    assert h.status() is TaskStatus.QUEUED  # due: the next reservation takes it
    app.run_pending()
    assert h.status() is TaskStatus.SUCCEEDED
    assert h.result() == "done"


def test_result_of_an_unknown_id_and_a_bad_timeout() -> None:
    app, _, _ = make(keep_result=60)
    with pytest.raises(ResultNotFound, match="task nope: the broker holds neither this task nor its outcome"):
        app.handle("nope").result(timeout=1)
    assert app.handle("nope").status() is TaskStatus.UNKNOWN
    with pytest.raises(ConfigError, match="timeout must be None or a number of seconds >= 0, got -1"):
        app.handle("nope").result(timeout=-1)
    with pytest.raises(TypeError, match="a task id is a non-empty str"):
        app.handle("")


def test_an_outcome_record_written_by_another_helper_reads_as_its_status() -> None:
    app, broker, clock = make()
    document = ('{"v":1,"status":"cancelled","task":"job","finished_at_ms":1,'
                '"error":{"type":"TaskCancelled","message":"cancelled by hexq cancel","traceback":""}}')
    broker.record_outcome(OutcomeRecord("t1", document, 60_000, int(clock.now() * 1000)))
    handle = app.handle("t1")
    assert handle.status() is TaskStatus.CANCELLED
    with pytest.raises(TaskFailed) as caught:
        handle.result()
    assert (caught.value.status, caught.value.type) == ("cancelled", "TaskCancelled")
    assert decode_outcome(document).error is not None


def test_delay_many_apply_and_options_return_handles() -> None:
    app, _, _ = make(keep_result=60)

    @app.task
    def double(x: int) -> int:
        return 2 * x

    handles = [*double.delay_many([(1,), (2,)]), double.apply([3]), double.options(queue="default").delay(4)]
    assert all(isinstance(h, TaskHandle) for h in handles)
    assert [h.result() for h in handles] == [2, 4, 6, 8]


def test_a_task_that_ends_without_keeping_an_outcome_ends_the_wait() -> None:
    broker = MemoryBroker()
    reader = ResultReader(broker, SystemClock(), wait_slice=0.2)
    broker.enqueue([OutgoingTask("t1", "default", "{}")])

    def run_without_keeping() -> None:
        time.sleep(0.1)
        broker.reserve("c1", ["default"], 1, 0, 60_000)
        broker.ack("c1", ["t1"])

    worker = threading.Thread(target=run_without_keeping)
    worker.start()
    started = time.monotonic()
    with pytest.raises(ResultNotFound):
        reader.result("t1")  # no timeout: it would wait for ever without the check between two waits
    worker.join()
    assert time.monotonic() - started >= 0.1


def test_a_wrapper_that_returns_nothing_keeps_the_tasks_own_result() -> None:
    # WakaQ's wrapper example calls the task and returns nothing; its users' wrappers must not lose results.
    app, _, _ = make(keep_result=60)
    seen: list[Any] = []

    @app.wrap_tasks_with
    async def wakaq_style(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(fn.__name__)  # the task's own name, through the layer that records its result
        if inspect.iscoroutinefunction(fn):
            await fn(*args, **kwargs)
        else:
            fn(*args, **kwargs)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def times(x: int, y: int) -> int:
        return x * y

    assert add.delay(1, 2).result(timeout=1) == 3
    assert times.delay(3, 4).result(timeout=1) == 12
    assert seen == ["add", "times"]


def test_a_sync_wrapper_that_returns_nothing_keeps_the_tasks_own_result() -> None:
    app, _, _ = make(keep_result=60)

    @app.wrap_tasks_with
    def quiet(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        fn(*args, **kwargs)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(1, 2).result(timeout=1) == 3


def test_a_wrapper_that_returns_a_value_sets_the_result() -> None:
    app, _, _ = make(keep_result=60)

    @app.wrap_tasks_with
    def doubled(fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return fn(*args, **kwargs) * 2

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.delay(1, 2).result(timeout=1) == 6
