"""Stopping a running task whose cancellation was requested, piece by piece: the parent's state machine (facts
in, actions out), its driver with fake processes, the board's cancel box, and the runner with a fake of what a
child hears."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from service_fixtures import make_app
from test_parent_driver import Running, wait_until
from test_parent_machine import T0, machine, of, started
from test_runner import CONSUMER, make_world

from hexq import Cancelled, TaskCancelled
from hexq.adapters.memory import MemoryBroker
from hexq.adapters.posix.board import SharedBoard
from hexq.adapters.posix.cancel_box import BLOCK_BYTES, CancelBox
from hexq.adapters.system.clock import SystemClock
from hexq.core.errors import ConfigError
from hexq.core.message import TaskMessage
from hexq.core.ports import ChildExit
from hexq.core.services.parent_events import Kill, RequestCancel, Settle
from hexq.entrypoints.app import HexQ

# -- the parent's state machine -----------------------------------------------------------------------------


def test_each_child_holding_cancelled_tasks_is_told_of_its_own_at_every_beat() -> None:
    parent = machine(concurrency=3)
    started(parent)
    first, second = parent.children[0], parent.children[1]
    requests = {"t2": first.consumer, "t1": first.consumer, "t9": second.consumer, "tx": "someone-else"}
    actions = parent.cancel_requested(requests, T0)
    assert actions == [RequestCancel(0, first.pid, ("t1", "t2")), RequestCancel(1, second.pid, ("t9",))]
    assert parent.cancel_requested(requests, T0 + 1) == actions  # again: one may have come too early
    assert parent.cancel_requested({}, T0 + 2) == []
    assert first.cancelling == {} and second.cancelling == {}


def test_a_cancelled_task_still_running_after_the_grace_gets_its_child_killed_once() -> None:
    parent = machine(cancel_grace=2.0)
    started(parent)
    child = parent.children[0]
    parent.cancel_requested({"t1": child.consumer}, T0)
    board = {0: [("t1", 0.0)]}
    assert of(Kill, parent.tick(T0 + 0.5, 0, board)) == []  # first seen running now: the grace starts
    assert of(Kill, parent.tick(T0 + 2.4, 0, board)) == []
    assert of(Kill, parent.tick(T0 + 2.5, 0, board)) == [Kill(child.pid)]
    assert of(Kill, parent.tick(T0 + 3.0, 0, board)) == []  # once
    assert parent.cancel_requested({"t1": child.consumer}, T0 + 3) == []  # a killed child is told nothing more
    actions = parent.exited(ChildExit(child.pid, None, 9), [("t1", 0.0)], T0 + 3.1)
    # Settled like any dead child: the task is marked cancelled, so the broker drops it instead of putting it back.
    assert of(Settle, actions) == [Settle(child.consumer, ("t1",), None)]


def test_a_cancelled_task_that_stops_or_has_not_started_is_not_killed() -> None:
    parent = machine(cancel_grace=1.0)
    started(parent)
    child = parent.children[0]
    parent.cancel_requested({"t1": child.consumer, "t2": child.consumer}, T0)
    assert of(Kill, parent.tick(T0 + 5, 0, {0: [("other", 0.0)]})) == []  # t1, t2 reserved, not running
    assert of(Kill, parent.tick(T0 + 5.5, 0, {0: [("t1", 0.0)]})) == []
    assert of(Kill, parent.tick(T0 + 6, 0, {0: []})) == []  # it stopped
    parent.cancel_requested({}, T0 + 6)  # and its mark went with it
    assert of(Kill, parent.tick(T0 + 9, 0, {0: [("t1", 0.0)]})) == []


def test_a_grace_of_zero_kills_at_the_first_sight() -> None:
    parent = machine(cancel_grace=0.0)
    started(parent)
    child = parent.children[1]
    parent.cancel_requested({"t1": child.consumer}, T0)
    assert of(Kill, parent.tick(T0, 0, {1: [("t1", 0.0)]})) == [Kill(child.pid)]


# -- the driver ---------------------------------------------------------------------------------------------

@pytest.fixture
def app_and_broker() -> tuple[HexQ, MemoryBroker]:
    app, broker, _ = make_app()
    app.clock = SystemClock()  # the driver and the broker agree on real time
    return app, broker


def test_a_beat_writes_the_requests_on_the_board_and_interrupts_the_child(app_and_broker: Any) -> None:
    app, broker = app_and_broker

    @app.task(queue="low")
    def job() -> None: ...

    task_id = app.enqueue_many([job.bind()])[0]
    running = Running(app, broker).start()
    broker.reserve(running.consumer(1), ["low"], 1, int(time.time() * 1000), 10_000)
    assert app.cancel(task_id).value == "cancelling"
    pid = running.pid(1)
    wait_until(lambda: pid in running.processes.interrupted)
    assert running.board.cancel_requests(1) == {task_id}
    assert running.board.cancel_requests(0) == frozenset()
    running.stop()


def test_the_driver_kills_a_child_whose_cancelled_task_runs_past_the_grace(app_and_broker: Any) -> None:
    app, broker = app_and_broker

    @app.task(queue="low")
    def job() -> None: ...

    task_id = app.enqueue_many([job.bind()])[0]
    running = Running(app, broker, cancel_grace=0.1).start()
    broker.reserve(running.consumer(0), ["low"], 1, int(time.time() * 1000), 10_000)
    running.board.started(0, 0, task_id, 0.0)  # it runs, and goes on running
    pid = running.pid(0)
    app.cancel(task_id)
    wait_until(lambda: running.processes.killed == [pid])
    wait_until(lambda: 0 in running.machine.children and running.pid(0) != pid)
    wait_until(lambda: broker.lookup(task_id) is None)  # dropped at the settlement, not put back
    assert broker.reserve("probe", ["low"], 1, int(time.time() * 1000), 1000).deliveries == ()
    running.stop()


# -- the board's cancel box ---------------------------------------------------------------------------------

def test_the_cancel_box_carries_each_childs_ids_and_replaces_them() -> None:
    box = CancelBox(3)
    assert box.read(0) == frozenset()
    box.write(0, ["a", "b" * 255, "é"])
    box.write(2, ["c"])
    assert box.read(0) == {"a", "b" * 255, "é"} and box.read(1) == frozenset() and box.read(2) == {"c"}
    box.write(0, ["d"])
    assert box.read(0) == {"d"}
    box.reset(0)
    assert box.read(0) == frozenset()
    with pytest.raises(IndexError):
        box.write(3, ["x"])


def test_the_cancel_box_keeps_the_ids_that_fit_and_drops_none_halfway() -> None:
    box = CancelBox(1)
    ids = [f"{n:032x}" for n in range(1000)]  # 33 bytes each: far more than a block holds
    box.write(0, ids)
    got = box.read(0)
    assert len(got) == (BLOCK_BYTES - 14) // 33 and got <= set(ids)
    box.write(0, ["x" * 256, "ok"])  # longer than any id a worker runs: left out
    assert box.read(0) == {"ok"}


def test_a_torn_block_reads_as_what_was_read_last() -> None:
    box = CancelBox(1)
    box.write(0, ["a"])
    assert box.read(0) == {"a"}
    box._memory[0:8] = (99).to_bytes(8, "little")  # an odd sequence number: a write that never finished
    assert box.read(0) == {"a"}


def test_the_shared_board_carries_requests_and_its_reset_clears_them() -> None:
    board = SharedBoard(children=2, slots=1)
    board.request_cancel(1, ["t1"])
    assert board.cancel_requests(1) == {"t1"} and board.cancel_requests(0) == frozenset()
    board.reset(1)
    assert board.cancel_requests(1) == frozenset()


# -- the runner ---------------------------------------------------------------------------------------------

@attrs.define
class HeardRequests:
    """What a child heard: the ids asked for, and what runs now; ``hear`` plays the signal's handler."""

    asked: set[str] = attrs.field(factory=set)
    sync: str | None = None
    stops: dict[str, Callable[[], None]] = attrs.field(factory=dict)
    log: list[tuple[str, str]] = attrs.field(factory=list)

    def requested(self, task_id: str) -> bool:
        return task_id in self.asked

    def running(self, task_id: str, stop: Callable[[], None] | None) -> None:
        self.log.append(("running", task_id))
        if stop is None:
            self.sync = task_id
        else:
            self.stops[task_id] = stop

    def finished(self, task_id: str) -> None:
        self.log.append(("finished", task_id))
        self.sync = None
        self.stops.pop(task_id, None)

    def hear(self, task_id: str) -> None:
        self.asked.add(task_id)
        if task_id in self.stops:
            asyncio.get_running_loop().call_soon(self.stops[task_id])
        elif self.sync == task_id:
            raise TaskCancelled(f"task {task_id} was cancelled")


def send(world: Any, name: str, *args: Any, task_id: str = "t1") -> None:
    message = TaskMessage(task_id, name, "default", args, {}, 0, world.clock.now())
    world.put(world.codec.encode(message), task_id)


def test_a_reserved_task_whose_cancellation_was_heard_is_never_started() -> None:
    heard = HeardRequests(asked={"t1"})
    world = make_world(cancels=heard)
    send(world, "add", 1, 2)
    world.run()
    assert world.calls == [] and world.broker.lookup("t1") is None
    assert world.stats() == (0, 0, 0) and world.dead_reasons() == []
    assert world.broker.queue_stats(["default"])[0].expired == 0


def test_a_sync_task_stopped_by_task_cancelled_is_discarded_not_retried() -> None:
    heard = HeardRequests()
    world = make_world(cancels=heard, max_retries=5)

    def slow() -> None:
        world.calls.append("started")
        heard.hear("t1")  # the signal arrives while it runs
        world.calls.append("never")

    world.task("slow", slow, retry_on=(Exception,))
    send(world, "slow")
    world.run()
    assert world.calls == ["started"]
    assert world.stats() == (0, 0, 0) and world.broker.lookup("t1") is None and world.dead_reasons() == []
    assert heard.log == [("running", "t1"), ("finished", "t1")] and heard.sync is None


def test_a_sync_task_behind_an_async_wrapper_is_stopped_too() -> None:
    heard = HeardRequests()
    world = make_world(cancels=heard)

    async def wrapper(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        fn(*args, **kwargs)  # WakaQ's wrap_tasks_with pattern: the sync task runs inside a coroutine

    world.registry.hooks.wrappers.append(wrapper)

    def slow() -> None:
        world.calls.append("started")
        heard.hear("t1")
        world.calls.append("never")

    world.task("slow", slow)
    send(world, "slow")
    world.run()
    assert world.calls == ["started"] and world.broker.lookup("t1") is None and world.dead_reasons() == []


def test_an_async_task_stopped_by_request_is_discarded_and_its_asyncio_task_carries_on() -> None:
    heard = HeardRequests()
    world = make_world(cancels=heard)
    after: list[str] = []

    async def slow() -> None:
        world.calls.append("started")
        heard.hear("t1")
        await asyncio.sleep(10)
        world.calls.append("never")

    world.task("slow", slow)
    send(world, "slow")

    async def run() -> None:
        await world.runner.run(world.reserve())
        await asyncio.sleep(0)  # not cancelled any more: the run's cancellation was taken back
        after.append("carried on")

    asyncio.run(run())
    assert world.calls == ["started"] and after == ["carried on"]
    assert world.stats() == (0, 0, 0) and world.broker.lookup("t1") is None and world.dead_reasons() == []


def test_a_stop_heard_after_the_run_ended_does_nothing() -> None:
    heard = HeardRequests()
    world = make_world(cancels=heard, defer_acks=False)
    kept: list[Callable[[], None]] = []

    async def quick() -> None:
        kept.append(heard.stops["t1"])

    world.task("quick", quick)
    send(world, "quick")

    async def run() -> None:
        await world.runner.run(world.reserve())
        kept[0]()  # the request for it comes late
        await asyncio.sleep(0.01)

    asyncio.run(run())
    assert world.stats() == (0, 0, 0) and world.broker.lookup("t1") is None


def test_the_runners_own_cancellation_still_goes_up_unrecorded() -> None:
    world = make_world(cancels=HeardRequests())

    async def slow() -> None:
        await asyncio.sleep(10)

    world.task("slow", slow)
    send(world, "slow")

    async def run() -> None:
        job = asyncio.ensure_future(world.runner.run(world.reserve()))
        await asyncio.sleep(0.01)
        job.cancel()  # a shutdown, not a request
        with pytest.raises(asyncio.CancelledError):
            await job

    asyncio.run(run())
    assert [d.consumer for d in world.broker.in_flight()] == [CONSUMER]  # still owned: it comes back


# -- the option -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "message"), [
    (None, "cancel_grace must be seconds"), (-1, "cancel_grace must be zero or positive"),
    ("5s", "cancel_grace must be seconds"),
])
def test_an_invalid_cancel_grace_is_refused(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HexQ(url="memory://", cancel_grace=value)


def test_cancel_grace_defaults_to_five_seconds_and_takes_a_timedelta() -> None:
    from datetime import timedelta

    assert HexQ(url="memory://").cancel_grace == 5.0
    assert HexQ(url="memory://", cancel_grace=timedelta(seconds=1.5)).cancel_grace == 1.5


# -- the handle and the status ---------------------------------------------------------------------------------

def test_a_handle_cancels_its_task_and_its_status_reads_cancelled_for_a_day() -> None:
    from hexq import TaskFailed, TaskStatus
    from hexq.adapters.memory import FakeClock

    clock = FakeClock()
    app = HexQ(url="memory://", clock=clock)

    @app.task
    def job(n: int) -> None: ...

    handle = job.options(eta=60).delay(1)
    assert handle.cancel() is Cancelled.REMOVED
    assert handle.status() is TaskStatus.CANCELLED
    with pytest.raises(TaskFailed) as failed:
        handle.result(timeout=0)
    assert (failed.value.task, failed.value.status, failed.value.type, failed.value.message) == (
        "job", "cancelled", "TaskCancelled", "cancelled by request")
    assert handle.cancel() is Cancelled.FINISHED  # a clear no-op, saying why
    assert app.handle("never-sent").cancel() is Cancelled.UNKNOWN
    clock.advance(24 * 3600 + 1)
    assert handle.status() is TaskStatus.UNKNOWN and handle.cancel() is Cancelled.UNKNOWN


def test_a_cancelled_task_with_keep_result_keeps_its_record_that_long() -> None:
    from hexq import TaskStatus
    from hexq.adapters.memory import FakeClock

    clock = FakeClock()
    app = HexQ(url="memory://", clock=clock, keep_result=3600 * 48)

    @app.task
    def job() -> None: ...

    handle = job.options(eta=60).delay()
    handle.cancel()
    clock.advance(24 * 3600 + 1)
    assert handle.status() is TaskStatus.CANCELLED
