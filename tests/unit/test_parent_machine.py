"""The worker parent's state machine: facts in, actions out. No broker, no processes, no threads."""

from __future__ import annotations

import itertools
import json
import logging
from typing import Any

from hexq.core.errors import BrokerUnavailableError
from hexq.core.ports import ChildExit
from hexq.core.services.parent import ParentConfig, WorkerParent
from hexq.core.services.parent_events import (
    Action,
    Beat,
    CheckMemory,
    Finish,
    Kill,
    Settle,
    Spawn,
    Terminate,
)

T0 = 1000.0
WALL_MS = 1_700_000_000_000


def machine(**config: Any) -> WorkerParent:
    config.setdefault("concurrency", 2)
    parent_config = ParentConfig(worker_id="w1", lease_ms=10_000, **config)
    return WorkerParent(parent_config)


def started(parent: WorkerParent, now: float = T0) -> list[Action]:
    """Start the machine and answer each Spawn as a driver would (pids 101, 102, ...)."""
    global _pids
    _pids = itertools.count(101)
    actions = parent.start(now)
    answer_spawns(parent, actions, now)
    return actions


_pids = itertools.count(101)


def answer_spawns(parent: WorkerParent, actions: list[Action], now: float) -> None:
    for action in actions:
        if isinstance(action, Spawn):
            parent.spawned(action.index, action.consumer, next(_pids), now)


def of(kind: type, actions: list[Action]) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def test_start_spawns_one_child_per_slot_with_distinct_consumers() -> None:
    parent = machine(concurrency=3)
    actions = started(parent)
    spawns = of(Spawn, actions)
    assert actions == spawns  # nothing else: broadcasts need no subscription (the broker copies them)
    assert [s.index for s in spawns] == [0, 1, 2]
    assert len({s.consumer for s in spawns}) == 3 and all(s.consumer.startswith("w1.") for s in spawns)


def test_a_dead_childs_running_tasks_are_settled_as_crashes_and_it_is_replaced_at_once() -> None:
    parent = machine()
    started(parent)
    child = parent.children[0]
    actions = parent.exited(ChildExit(child.pid, None, 9), [("t1", 0.0)], T0 + 5)
    assert of(Settle, actions) == [Settle(child.consumer, ("t1",), None)]
    (spawn,) = of(Spawn, actions)
    assert spawn.index == 0 and spawn.consumer != child.consumer
    assert 0 not in parent.children  # until the driver reports the new pid


def test_an_exit_of_an_unknown_pid_is_ignored() -> None:
    parent = machine()
    started(parent)
    assert parent.exited(ChildExit(999, 0, None), [], T0) == []


def test_past_its_hard_deadline_a_child_is_killed_once_and_the_task_is_recorded_as_the_failure() -> None:
    parent = machine()
    started(parent)
    child = parent.children[1]
    board = {1: [("slow", T0 + 5)]}
    assert of(Kill, parent.tick(T0 + 4.9, WALL_MS, board)) == []
    assert of(Kill, parent.tick(T0 + 5.0, WALL_MS, board)) == [Kill(child.pid)]
    assert of(Kill, parent.tick(T0 + 5.02, WALL_MS, board)) == []  # not again while it dies
    actions = parent.exited(ChildExit(child.pid, None, 9), [("slow", T0 + 5), ("other", 0.0)], T0 + 5.03)
    assert of(Settle, actions) == [Settle(child.consumer, ("other",), "slow")]


def test_no_hard_deadline_means_no_kill() -> None:
    parent = machine()
    started(parent)
    assert of(Kill, parent.tick(T0 + 10_000, WALL_MS, {0: [("t", 0.0)]})) == []


def test_a_beat_renews_the_live_consumers_and_carries_the_children_in_the_heartbeat() -> None:
    parent = machine(heartbeat_interval=1.0, info={"host": "h"})
    started(parent)
    (beat,) = of(Beat, parent.tick(T0, WALL_MS, {}))
    assert beat.consumers == tuple(c.consumer for c in parent.children.values())
    assert beat.lease_until_ms == WALL_MS + 10_000 and beat.now_ms == WALL_MS
    assert json.loads(beat.info) == {"host": "h", "children": [101, 102]}
    assert of(Beat, parent.tick(T0 + 0.5, WALL_MS, {})) == []
    assert len(of(Beat, parent.tick(T0 + 1.0, WALL_MS, {}))) == 1


def test_memory_pressure_recycles_the_biggest_child_one_at_a_time() -> None:
    parent = machine(max_mem_percent=90.0)
    started(parent)
    assert of(CheckMemory, parent.tick(T0, WALL_MS, {})) == [CheckMemory()]
    assert parent.memory(50.0, {101: 10, 102: 20}, T0) == []
    assert parent.memory(95.0, {101: 10, 102: 20}, T0) == [Terminate(102)]
    assert of(CheckMemory, parent.tick(T0 + 1, WALL_MS, {})) == []  # while 102 exits
    assert parent.memory(95.0, {101: 10}, T0 + 1) == []


def test_without_max_mem_percent_memory_is_never_read() -> None:
    parent = machine()
    started(parent)
    assert of(CheckMemory, parent.tick(T0, WALL_MS, {})) == []


def test_a_recycled_child_that_ignores_sigterm_is_killed_after_the_shutdown_timeout() -> None:
    parent = machine(max_mem_percent=90.0, shutdown_timeout=5.0)
    started(parent)
    parent.memory(95.0, {101: 10, 102: 20}, T0)
    assert of(Kill, parent.tick(T0 + 4, WALL_MS, {})) == []
    assert of(Kill, parent.tick(T0 + 6, WALL_MS, {})) == [Kill(102)]


def test_the_first_tick_beats_at_once_so_that_broadcasts_reach_a_new_worker() -> None:
    # A broadcast is copied for the workers whose heartbeat is fresh (Producer.broadcast): a worker counts
    # from its first beat, sent with the first tick, and keeps counting as long as it beats.
    parent = machine(heartbeat_interval=1.0)
    started(parent)
    assert of(Beat, parent.tick(T0, WALL_MS, {}))[0].now_ms == WALL_MS
    assert of(Beat, parent.tick(T0 + 0.5, WALL_MS + 500, {})) == []
    assert of(Beat, parent.tick(T0 + 1.0, WALL_MS + 1000, {}))[0].now_ms == WALL_MS + 1000


def test_settling_is_retried_with_a_growing_pause_while_the_broker_is_down() -> None:
    parent = machine()
    started(parent)
    (settle,) = of(Settle, parent.exited(ChildExit(101, None, 9), [("t", 0.0)], T0))
    now, attempts = T0, 1
    parent.completed(settle, BrokerUnavailableError("down"), now)
    for _ in range(300):  # three seconds of ticks at 100 per second
        now += 0.01
        for again in of(Settle, parent.tick(now, WALL_MS, {})):
            attempts += 1
            parent.completed(again, BrokerUnavailableError("down"), now)
    assert 4 <= attempts <= 10  # backing off to about one a second, not 300 attempts
    due = []
    while not due:
        now += 0.01
        due = of(Settle, parent.tick(now, WALL_MS, {}))
    assert due == [settle]
    parent.completed(settle, None, now)
    assert of(Settle, parent.tick(now + 5, WALL_MS, {})) == []


def test_a_crash_looping_child_is_restarted_after_growing_pauses() -> None:
    parent = machine(concurrency=1)
    started(parent)
    now, starts = T0, []
    for _ in range(5):
        starts.append(now)
        actions = parent.exited(ChildExit(parent.children[0].pid, 1, None), [], now)
        while not of(Spawn, actions):
            now += 0.1
            actions = parent.tick(now, WALL_MS, {})
        answer_spawns(parent, actions, now)
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    assert gaps[0] == 0.0 and gaps[1] >= 0.5 and gaps[2] >= 1.0 and gaps[3] >= 2.0


def test_a_child_killed_from_outside_soon_after_starting_is_replaced_at_once() -> None:
    parent = machine(concurrency=1)
    started(parent)
    for _ in range(4):
        actions = parent.exited(ChildExit(parent.children[0].pid, None, 9), [], T0)
        assert len(of(Spawn, actions)) == 1
        answer_spawns(parent, actions, T0)


def test_stop_terminates_waits_kills_stragglers_then_finishes_once_everything_is_settled() -> None:
    parent = machine(shutdown_timeout=5.0)
    started(parent)
    assert parent.stop(T0) == [Terminate(101), Terminate(102)]
    assert parent.stop(T0) == []  # a second signal changes nothing
    settle = of(Settle, parent.exited(ChildExit(101, 0, None), [], T0 + 1))
    assert not of(Spawn, parent.tick(T0 + 1, WALL_MS, {}))  # no replacement while stopping
    assert of(Kill, parent.tick(T0 + 4, WALL_MS, {})) == []
    assert of(Kill, parent.tick(T0 + 5, WALL_MS, {})) == [Kill(102)]
    assert of(Kill, parent.tick(T0 + 5.1, WALL_MS, {})) == []
    settle += of(Settle, parent.exited(ChildExit(102, None, 9), [("t", 0.0)], T0 + 5.2))
    assert of(Finish, parent.tick(T0 + 5.3, WALL_MS, {})) == []  # two settles outstanding
    for action in settle:
        parent.completed(action, None, T0 + 5.3)
    assert of(Finish, parent.tick(T0 + 5.4, WALL_MS, {})) == [Finish()]
    assert of(Finish, parent.tick(T0 + 5.5, WALL_MS, {})) == []
    parent.completed(Finish(), None, T0 + 5.5)
    assert parent.finished


def test_at_stop_tasks_that_cannot_be_settled_are_left_to_lease_expiry_after_a_while() -> None:
    parent = machine(concurrency=1, shutdown_timeout=1.0)
    started(parent)
    parent.stop(T0)
    (settle,) = of(Settle, parent.exited(ChildExit(101, None, 9), [("t", 0.0)], T0))
    parent.completed(settle, BrokerUnavailableError("down"), T0)
    now, finished = T0, []
    while not finished and now < T0 + 60:
        now += 0.1
        actions = parent.tick(now, WALL_MS, {})
        for again in of(Settle, actions):
            parent.completed(again, BrokerUnavailableError("down"), now)
        finished = of(Finish, actions)
    assert finished and 10 <= now - T0 <= 13


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="hexq")
    parent = machine()
    started(parent)
    for second in range(10):
        parent.completed(Beat((), 0, "{}", 0), BrokerUnavailableError("refused"), T0 + second)
    parent.completed(Beat((), 0, "{}", 0), None, T0 + 10)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "refused" in warnings[0].getMessage()
    (back,) = [r for r in caplog.records if "reachable again" in r.getMessage()]
    assert "10.0s" in back.getMessage()
