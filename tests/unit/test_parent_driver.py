"""The worker parent's driver, the one production runs, on its two real threads: with fake processes, the
in-memory broker and board, and the real clock (short intervals)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from service_fixtures import enqueue, make_app

from hexq.adapters.memory import FakeProcessControl, MemoryBroker
from hexq.adapters.memory.processes import MemoryBoard
from hexq.adapters.system.clock import SystemClock
from hexq.core.errors import BrokerUnavailableError
from hexq.core.ports import Delivery, NoMetrics
from hexq.core.services.parent import ParentConfig, WorkerParent
from hexq.core.services.runner import TaskRunner
from hexq.entrypoints import bootstrap
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.parent_driver import ParentDriver


def wait_until(condition: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


class DownBroker:
    """The in-memory broker behind a switch: while ``down``, every call raises BrokerUnavailableError."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.down = False
        self.refused: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                self.refused.append(name)
                raise BrokerUnavailableError("connection refused")
            return attribute(*args, **kwargs)

        return call


class Running:
    """A driver running on its own thread, as ``hexq worker`` runs it."""

    def __init__(self, app: HexQ, broker: Any, concurrency: int = 2, **config: Any) -> None:
        self.app = app
        self.processes = FakeProcessControl()
        self.board = MemoryBoard()
        clock = SystemClock()
        parent_config = ParentConfig(worker_id="w1", concurrency=concurrency, lease_ms=10_000,
                                     heartbeat_interval=0.05, **config)
        self.machine = WorkerParent(parent_config)
        recorder = TaskRunner(app.registry, app.codec, broker, clock, "w1", bootstrap.process_random())

        def record(delivery: Delivery, consumer: str) -> None:
            recorder.fail_outside(delivery, "hard_timeout", consumer=consumer)

        self.driver = ParentDriver(self.machine, self.processes, self.board, broker, clock, record, NoMetrics(),
                                   interval=0.005)
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(self.driver.run()), daemon=True)

    def start(self) -> Running:
        self.thread.start()
        wait_until(lambda: len(self.machine.children) == self.machine.config.concurrency)
        return self

    def consumer(self, index: int) -> str:
        return self.machine.children[index].consumer

    def pid(self, index: int) -> int:
        return self.machine.children[index].pid

    def stop(self) -> None:
        self.driver.request_stop()
        deadline = time.monotonic() + 10
        while self.thread.is_alive() and time.monotonic() < deadline:
            for pid in list(self.processes.alive):
                if pid in self.processes.terminated:
                    self.processes.exit(pid, 0)  # the children do as they are told
            time.sleep(0.005)
        assert not self.thread.is_alive() and self.result == [0]


@pytest.fixture
def world() -> Iterator[tuple[HexQ, MemoryBroker]]:
    app, broker, _ = make_app(max_retries=1)
    app.clock = SystemClock()  # the driver and the broker agree on real time
    yield app, broker


def test_a_dead_childs_running_task_goes_back_with_a_crash_counted_and_the_child_is_replaced(world: Any) -> None:
    app, broker = world

    @app.task(queue="low")
    def job() -> None: ...

    task_id = enqueue(app, job)
    running = Running(app, broker).start()
    broker.reserve(running.consumer(0), ["low"], 1, int(time.time() * 1000), 10_000)
    running.board.started(0, 0, task_id, 0.0)
    old = running.pid(0)
    running.processes.exit(old, None, 9)
    wait_until(lambda: 0 in running.machine.children and running.pid(0) != old)
    back = wait_until(lambda: broker.reserve("probe", ["low"], 1, int(time.time() * 1000), 1000).deliveries)
    assert (back[0].id, back[0].crashes) == (task_id, 1)
    running.stop()


def test_hard_timeout_kills_the_child_and_retries_the_task_as_a_failed_attempt(world: Any) -> None:
    app, broker = world

    @app.task(queue="low", hard_timeout=5)
    def slow() -> None: ...

    task_id = enqueue(app, slow)
    running = Running(app, broker).start()
    broker.reserve(running.consumer(1), ["low"], 1, int(time.time() * 1000), 10_000)
    pid = running.pid(1)
    running.board.started(1, 0, task_id, time.monotonic() + 0.1)
    wait_until(lambda: running.processes.killed == [pid])
    again = wait_until(lambda: broker.reserve("probe", ["low"], 1, int(time.time() * 1000), 1000).deliveries)
    message = app.codec.decode(again[0].payload or "")
    assert (again[0].id, message.retries, again[0].crashes) == (task_id, 1, 0)
    assert broker.in_flight() == [] or all(f.consumer == "probe" for f in broker.in_flight())
    running.stop()


def test_a_broadcast_reaches_a_worker_through_its_heartbeat_and_its_clean_exit_drops_the_rest(
        world: Any) -> None:
    app, broker = world

    @app.task
    def announce() -> None: ...

    running = Running(app, broker).start()
    wait_until(broker.workers)
    assert announce.broadcast() == 1
    # Already in the worker's private queue when broadcast() returns: nothing for the parent to relay.
    (copy,) = broker.reserve("probe", ["@broadcast.w1"], 5, int(time.time() * 1000), 1000).deliveries
    assert app.codec.decode(copy.payload or "").name == "announce"
    assert announce.broadcast() == 1  # left waiting: no child of this test runs it
    running.stop()
    assert broker.queue_stats(["@broadcast.w1"])[0].pending == 0  # forgotten with the worker
    assert announce.broadcast() == 0


def test_heartbeats_keep_the_leases_of_live_children(world: Any) -> None:
    app, broker = world
    running = Running(app, broker).start()
    wait_until(lambda: broker.workers())
    (beat,) = broker.workers()
    assert beat.worker_id == "w1" and str(running.pid(0)) in beat.info
    running.stop()
    assert broker.workers() == []  # forgotten on a clean exit


def test_hard_timeouts_and_replacements_do_not_wait_for_an_unreachable_broker(world: Any) -> None:
    app, inner = world

    @app.task(queue="low", hard_timeout=1, max_retries=0)
    def slow() -> None: ...

    task_id = enqueue(app, slow)
    broker = DownBroker(inner)
    running = Running(app, broker, concurrency=1).start()
    inner.reserve(running.consumer(0), ["low"], 1, int(time.time() * 1000), 10_000)
    broker.down = True
    pid = running.pid(0)
    running.board.started(0, 0, task_id, time.monotonic() + 0.05)
    wait_until(lambda: running.processes.killed == [pid] and 0 in running.machine.children
               and running.pid(0) != pid, timeout=2.0)
    assert inner.dead_letters() == []  # not settled yet: the broker is down
    broker.down = False
    (letter,) = wait_until(inner.dead_letters)
    assert letter.id == task_id and "hard timeout" in letter.reason
    running.stop()
