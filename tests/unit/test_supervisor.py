"""The worker parent with a fake ProcessControl: crashes, hard timeouts, memory recycling, broadcasts."""

from __future__ import annotations

import itertools
import random
from typing import Any

from service_fixtures import enqueue, make_app

from hexq.adapters.memory import FakeProcessControl
from hexq.core.services.supervisor import Supervisor, SupervisorConfig, broadcast_queue


def build(app: Any, broker: Any, clock: Any, **config: Any) -> tuple[Supervisor, FakeProcessControl]:
    processes = FakeProcessControl(mono=clock.monotonic)
    config.setdefault("concurrency", 2)
    supervisor = Supervisor(app.registry, app.codec, broker, clock, processes,
                            SupervisorConfig(worker_id="w1", slots=1, lease_ms=10_000, tick=0.001, **config),
                            lambda index, consumer: 0, random.random)
    supervisor.board = processes.board(config["concurrency"], 1)
    for index in range(config["concurrency"]):
        supervisor._spawn(index)
    return supervisor, processes


def reserve_as(broker: Any, supervisor: Supervisor, index: int, clock: Any) -> str:
    consumer = supervisor.children[index].consumer
    (delivery,) = broker.reserve(consumer, ["high", "low"], 1, int(clock.now() * 1000), 10_000).deliveries
    return delivery.id  # type: ignore[no-any-return]


def test_starts_one_child_per_slot_with_distinct_consumers() -> None:
    app, broker, clock = make_app()
    supervisor, processes = build(app, broker, clock, concurrency=3)
    assert len(processes.alive) == 3
    assert len({c.consumer for c in supervisor.children.values()}) == 3


def test_a_crashed_childs_running_task_goes_back_with_a_crash_counted_and_the_child_is_replaced() -> None:
    app, broker, clock = make_app()

    @app.task(queue="low")
    def job() -> None: ...

    task_id = enqueue(app, job)
    supervisor, processes = build(app, broker, clock)
    reserve_as(broker, supervisor, 0, clock)
    assert supervisor.board is not None
    supervisor.board.started(0, 0, task_id, 0.0, 0.0)
    old_pid = supervisor.children[0].pid
    processes.exit(old_pid, None, 9)
    supervisor.step()
    assert supervisor.children[0].pid != old_pid and supervisor.children[0].pid in processes.alive
    (back,) = broker.reserve("probe", ["low"], 10, int(clock.now() * 1000), 1000).deliveries
    assert (back.id, back.crashes) == (task_id, 1)


def test_hard_timeout_kills_the_child_and_retries_the_task_as_a_failed_attempt() -> None:
    app, broker, clock = make_app(max_retries=1)

    @app.task(queue="low", hard_timeout=5)
    def slow() -> None: ...

    task_id = enqueue(app, slow)
    supervisor, processes = build(app, broker, clock)
    reserve_as(broker, supervisor, 1, clock)
    assert supervisor.board is not None
    supervisor.board.started(1, 0, task_id, 0.0, clock.monotonic() + 5)
    pid = supervisor.children[1].pid
    supervisor.step()
    assert processes.killed == []
    clock.advance(5.01)
    supervisor.step()  # kills
    supervisor.step()  # reaps and replaces
    assert processes.killed == [pid]
    (again,) = broker.reserve("probe", ["low"], 10, int(clock.now() * 1000), 1000).deliveries
    message = app.codec.decode(again.payload or "")
    assert (again.id, message.retries, again.crashes) == (task_id, 1, 0)


def test_hard_timeout_with_no_retries_left_dead_letters_the_task() -> None:
    app, broker, clock = make_app()

    @app.task(queue="low", hard_timeout=1)
    def slow() -> None: ...

    task_id = enqueue(app, slow)
    supervisor, _ = build(app, broker, clock)
    reserve_as(broker, supervisor, 0, clock)
    assert supervisor.board is not None
    supervisor.board.started(0, 0, task_id, 0.0, clock.monotonic() + 1)
    clock.advance(2)
    supervisor.step()
    supervisor.step()
    (letter,) = broker.dead_letters()
    assert letter.id == task_id and "hard timeout" in letter.reason
    assert broker.queue_stats(["low"])[0].pending == 0


def test_memory_pressure_recycles_the_biggest_child_gracefully() -> None:
    app, broker, clock = make_app()
    supervisor, processes = build(app, broker, clock, max_mem_percent=90)
    small, big = supervisor.children[0].pid, supervisor.children[1].pid
    processes.rss_by_pid = {small: 100, big: 900}
    processes.memory = 95
    supervisor.step()
    assert processes.terminated == [big]
    supervisor.step()  # still terminating: no second victim
    assert processes.terminated == [big]


def test_a_broadcast_is_queued_for_this_worker_only() -> None:
    app, broker, clock = make_app()

    @app.task
    def hello() -> None: ...

    supervisor, _ = build(app, broker, clock)
    supervisor._subscribe()
    assert hello.broadcast() == 1
    supervisor.step()
    stats = broker.queue_stats([broadcast_queue("w1")])[0]
    assert stats.pending == 1


def test_shutdown_terminates_then_kills_stragglers_and_recovers_their_tasks() -> None:
    app, broker, clock = make_app()

    @app.task(queue="low")
    def job() -> None: ...

    task_id = enqueue(app, job)
    supervisor, processes = build(app, broker, clock, shutdown_timeout=3)
    reserve_as(broker, supervisor, 0, clock)
    supervisor.request_stop()
    supervisor.shutdown()
    assert sorted(processes.terminated) == sorted(processes.killed)
    assert not supervisor.children
    (back,) = broker.reserve("probe", ["low"], 10, int(clock.now() * 1000), 1000).deliveries
    assert back.id == task_id
    assert broker.workers() == []


def test_heartbeats_renew_the_leases_of_live_children() -> None:
    app, broker, clock = make_app()

    @app.task(queue="low")
    def job() -> None: ...

    enqueue(app, job)
    supervisor, _ = build(app, broker, clock)
    reserve_as(broker, supervisor, 0, clock)
    for _ in range(30):  # 30 s of heartbeats, far past the 10 s lease
        clock.advance(1)
        supervisor.step()
    assert broker.recover_expired(int(clock.now() * 1000)) == 0
    assert [w.worker_id for w in broker.workers()] == ["w1"]


class DownBroker:
    """A broker that is unreachable until ``up`` is set: every call raises BrokerUnavailableError."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.up = False
        self.refused: list[str] = []

    def __getattr__(self, name: str) -> Any:
        from hexq.core.errors import BrokerUnavailableError

        attribute = getattr(self.inner, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if not self.up:
                self.refused.append(name)
                raise BrokerUnavailableError("connection refused")
            return attribute(*args, **kwargs)

        return call


def test_hard_timeouts_and_replacements_do_not_wait_for_an_unreachable_broker() -> None:
    app, broker, clock = make_app()

    @app.task(queue="low", hard_timeout=1)
    def slow() -> None: ...

    task_id = enqueue(app, slow)
    down = DownBroker(broker)
    processes = FakeProcessControl(mono=clock.monotonic)
    supervisor = Supervisor(app.registry, app.codec, down, clock, processes,  # type: ignore[arg-type]
                            SupervisorConfig(worker_id="w1", concurrency=1, slots=1, lease_ms=10_000, tick=0.001),
                            lambda index, consumer: 0, random.random)
    supervisor.board = processes.board(1, 1)
    supervisor._spawn(0)
    consumer = supervisor.children[0].consumer
    broker.reserve(consumer, ["low"], 1, int(clock.now() * 1000), 10_000)
    supervisor.board.started(0, 0, task_id, 0.0, clock.monotonic() + 1)
    pid = supervisor.children[0].pid
    clock.advance(1.5)
    supervisor.watch()  # kills
    supervisor.watch()  # reaps and replaces, broker still down
    assert processes.killed == [pid] and supervisor.children[0].pid != pid
    supervisor.chores()  # cannot settle yet
    assert len(supervisor.unrecovered) == 1
    down.up = True
    clock.advance(1)  # past the retry pause
    supervisor.chores()
    assert supervisor.unrecovered == []
    (letter,) = broker.dead_letters()
    assert letter.id == task_id and "hard timeout" in letter.reason


def test_a_child_that_keeps_dying_at_start_is_restarted_after_growing_pauses() -> None:
    app, broker, clock = make_app()
    supervisor, processes = build(app, broker, clock, concurrency=1)
    starts = []
    for _ in range(5):
        pid = supervisor.children[0].pid
        starts.append(clock.monotonic())
        processes.exit(pid, 1)  # the child ended itself: an import error, a refused password...
        supervisor.watch()
        while 0 not in supervisor.children:
            clock.advance(0.1)
            supervisor.watch()
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps[0] == 0.0 and gaps[1] >= 0.5 and gaps[2] >= 1.0 and gaps[3] >= 2.0
    clock.advance(10)  # a child that lives past the fast-death window resets the count
    processes.exit(supervisor.children[0].pid, 1)
    supervisor.watch()
    assert 0 in supervisor.children


def test_a_child_killed_from_outside_soon_after_starting_is_replaced_at_once() -> None:
    app, broker, clock = make_app()
    supervisor, processes = build(app, broker, clock, concurrency=1)
    for _ in range(4):
        processes.exit(supervisor.children[0].pid, None, 9)  # SIGKILL: the OOM killer, an operator
        supervisor.watch()
        assert 0 in supervisor.children


def test_recovery_is_retried_with_a_pause_while_the_broker_is_down() -> None:
    app, broker, clock = make_app()
    down = DownBroker(broker)
    processes = FakeProcessControl(mono=clock.monotonic)
    supervisor = Supervisor(app.registry, app.codec, down, clock, processes,  # type: ignore[arg-type]
                            SupervisorConfig(worker_id="w1", concurrency=1, slots=1, lease_ms=10_000, tick=0.001,
                                             heartbeat_interval=0.5),
                            lambda index, consumer: 0, random.random)
    supervisor.board = processes.board(1, 1)
    supervisor._spawn(0)
    processes.exit(supervisor.children[0].pid, None, 9)
    supervisor.watch()
    for _ in range(300):  # three seconds of chores at 100 per second
        supervisor.chores()
        clock.advance(0.01)
    attempts = down.refused.count("fetch_payload") + down.refused.count("recover_consumer")
    assert 5 <= attempts <= 12  # backing off to the heartbeat pace, not 300 attempts
    down.up = True
    clock.advance(1)
    supervisor.chores()
    assert supervisor.unrecovered == []
