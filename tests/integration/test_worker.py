"""Real workers (started through the CLI) on each broker (a real redis-server, an SQLite file), killed with
real signals. Every test here runs once per broker: ``cluster`` takes ``broker_kind``."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psutil
import pytest
from workers import Cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env() as module:
        yield module


def test_strict_priority_order(cluster: Cluster, tasks: Any) -> None:
    for n in range(5):
        tasks.record_low.delay(f"low{n}")
    for n in range(5):
        tasks.record.delay(f"mid{n}", queue="medium")
    for n in range(5):
        tasks.record.delay(f"high{n}", queue="high")
    cluster.worker("--concurrency=1")
    order = cluster.wait_for_tags(15)
    assert order == [f"high{n}" for n in range(5)] + [f"mid{n}" for n in range(5)] + [f"low{n}" for n in range(5)]


def test_eta_tasks_never_run_early(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    due = []
    for n in range(5):
        due.append(time.time() + 1.0 + n * 0.2)
        tasks.record.delay(f"eta{n}", eta=timedelta(seconds=1.0 + n * 0.2))
    cluster.wait_for_tags(5)
    started = {r["tag"]: r["at"] for r in cluster.results()}
    lateness = [started[f"eta{n}"] - due[n] for n in range(5)]
    assert min(lateness) >= -0.005, lateness  # enqueue-side clock rounding only
    assert max(lateness) < 2.0, lateness


def test_soft_timeout_raises_in_the_task_and_retries_up_to_max_retries(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    tasks.overrun_soft.delay("soft")
    tasks.overrun_soft_async.delay("asoft")
    wait_for(lambda: cluster.dead_count() == 2, 20, "2 dead letters")
    tags = cluster.tags()
    assert tags.count("soft:start") == 3  # first run + max_retries=2
    assert tags.count("asoft:start") == 2  # first run + max_retries=1
    assert "soft:finished" not in tags
    attempts = [r["attempt"] for r in cluster.results() if r["tag"] == "soft:start"]
    assert attempts == [1, 2, 3]


def test_hard_timeout_kills_and_replaces_the_child_then_gives_up(cluster: Cluster, tasks: Any) -> None:
    proc = cluster.worker("--concurrency=1")
    first_children = proc.children()
    tasks.overrun_hard.delay("hard")
    wait_for(lambda: cluster.dead_count() == 1, 20, "a dead letter")
    starts = [r for r in cluster.results() if r["tag"] == "hard:start"]
    assert len(starts) == 2  # first run + max_retries=1
    assert len({r["pid"] for r in starts}) == 2  # each run in a fresh child: the previous one was killed
    wait_for(lambda: len(proc.children()) == 1, 10, "a replacement child")
    assert proc.children() != first_children
    tasks.record.delay("after")
    cluster.wait_for_tags(1, suffix="after")
    # The parent killed the runs, so the parent logs their lines (the children died before they could).
    lines = [line for line in proc.output().splitlines() if " hexq.task: overrun_hard[" in line]
    assert len(lines) == 2, proc.output()
    assert all(f" WARNING [{proc.pid}] " in line for line in lines), lines
    assert re.search(r"hard-killed after 0\.500 s \(queue low, attempt 1\): hard timeout; retrying at once$",
                     lines[0]), lines
    assert re.search(r"\(queue low, attempt 2\): hard timeout; gave up after 1 retries \(max_retries=1\); "
                     r"dead-lettered$", lines[1]), lines


FINISHED_LINE = re.compile(r" INFO \[(\d+)\] hexq\.task: record\[([0-9a-f]{32})\] succeeded in \d+\.\d{3} s "
                           r"\(queue low, attempt 1\)$")


def test_each_task_that_succeeds_gets_one_line_unless_no_log_tasks(cluster: Cluster, tasks: Any) -> None:
    worker = cluster.worker("--concurrency=1")
    sent = {tasks.record.delay(f"logged{n}") for n in range(3)}
    wait_for(lambda: len([t for t in cluster.tags() if t.startswith("logged")]) == 3, 15, "3 tasks")
    wait_for(lambda: worker.output().count(" hexq.task: ") == 3, 10, f"3 task lines:\n{worker.output()}")
    matches = [FINISHED_LINE.search(line) for line in worker.output().splitlines() if " hexq.task: " in line]
    assert all(matches), worker.output()
    assert {m.group(2) for m in matches if m} == sent
    assert {m.group(1) for m in matches if m} == {str(pid) for pid in worker.children()}  # the child that ran it
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0

    quiet = cluster.worker("--concurrency=1", "--no-log-tasks")
    tasks.record.delay("quiet")
    cluster.wait_for_tags(1, suffix="quiet")
    quiet.signal(signal.SIGTERM)
    assert quiet.wait(30) == 0
    assert " hexq.task: " not in quiet.output()


def test_a_child_writes_every_kept_line_on_a_clean_stop_and_a_warning_at_once(cluster: Cluster,
                                                                                tasks: Any) -> None:
    # A child keeps its INFO lines and writes them a batch at a time (entrypoints/logs.py): stopped right
    # after its last task, it still writes every one.
    worker = cluster.worker("--concurrency=1", "--log-level=INFO")
    sent = {tasks.record.delay(f"batch{n}") for n in range(300)}
    wait_for(lambda: len([t for t in cluster.tags() if t.startswith("batch")]) == 300, 60, "300 tasks")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    matches = [FINISHED_LINE.search(line) for line in worker.output().splitlines() if " hexq.task: " in line]
    assert all(matches), worker.output()
    assert sorted(m.group(2) for m in matches if m) == sorted(sent)  # each once: none lost, none doubled

    # A WARNING is written while the task that logged it still runs, after the INFO line logged before it.
    warned = cluster.worker("--concurrency=1", "--log-level=INFO")
    tasks.warn_then_sleep.delay(30, "warned")
    wait_for(lambda: " WARNING " in warned.output() and "the warning warned" in warned.output(), 10,
             f"the warning:\n{warned.output()}")
    assert "warned" not in cluster.tags()  # still sleeping
    lines = [line for line in warned.output().splitlines() if " tests.tasks " in line]
    assert [line.split(": ", 1)[1] for line in lines] == ["before the warning warned", "the warning warned"], lines
    warned.kill_group()


def test_max_tasks_per_worker_recycles_children(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1", HEXQ_TEST_MAX_TASKS="3")
    for n in range(9):
        tasks.record.delay(f"r{n}")
    cluster.wait_for_tags(9)
    pids = [r["pid"] for r in cluster.results()]
    assert len(set(pids)) == 3
    assert all(pids.count(p) == 3 for p in set(pids))


def test_sigkill_of_a_child_mid_task_requeues_it_and_it_completes(cluster: Cluster, tasks: Any) -> None:
    import os

    cluster.worker("--concurrency=2")
    tasks.sleep_then_record.delay(1.0, "long")
    cluster.wait_for_tags(1, suffix="long:start")
    victim = next(r["pid"] for r in cluster.results() if r["tag"] == "long:start")
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    cluster.wait_for_tags(2, suffix="long:start")
    restarted = [r for r in cluster.results() if r["tag"] == "long:start"][1]
    recovery = restarted["at"] - killed_at
    print(f"child SIGKILL: task restarted {recovery * 1000:.0f} ms after the kill")
    assert restarted["pid"] != victim and restarted["attempt"] == 2
    assert recovery < 2.0  # the parent sees the death at once; no lease wait
    cluster.wait_for_tags(1, suffix="g")  # "long" itself
    assert cluster.tags().count("long") == 1


def test_sigkill_of_a_whole_worker_its_tasks_come_back_after_the_lease(cluster: Cluster, tasks: Any) -> None:
    doomed = cluster.worker("--concurrency=2")
    for n in range(2):
        tasks.sleep_then_record.delay(2.0, f"w{n}")
    cluster.wait_for_tags(2, suffix=":start")
    killed_at = time.time()
    doomed.kill_group()  # parent and children at once: nobody is left to hand anything back
    cluster.worker("--concurrency=2")
    cluster.wait_for_tags(1, timeout=30, suffix="w0")
    tags = cluster.wait_for_tags(1, timeout=30, suffix="w1")
    restarts = [r["at"] - killed_at for r in cluster.results() if r["tag"].endswith(":start")][2:]
    print(f"whole-worker SIGKILL: tasks restarted after {[round(x, 2) for x in restarts]} s (lease 3 s)")
    # lease (3 s) + expiry grace (3 s) + up to two idle reservations (1 s each) + the task's own start
    assert all(x < 3 + 3 + 2 + 0.5 for x in restarts)
    assert tags.count("w0") == 1 and tags.count("w1") == 1


def test_a_task_that_kills_its_child_once_is_redelivered_and_completes(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=2")
    tasks.crash_once.delay("c")
    tags = cluster.wait_for_tags(1, suffix="c")
    assert tags.count("c:start") == 2
    assert [r["attempt"] for r in cluster.results() if r["tag"] == "c"] == [2]


def test_a_task_that_always_kills_its_child_is_dead_lettered(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    tasks.crash_always.delay("poison")
    tasks.record.delay("healthy")
    wait_for(lambda: cluster.dead_count() == 1, 30, "a dead letter")
    assert cluster.tags().count("poison:start") == 5  # max_deliveries
    cluster.wait_for_tags(1, suffix="healthy")


def test_broadcast_runs_once_on_each_worker(cluster: Cluster, tasks: Any) -> None:
    first = cluster.worker("--concurrency=2")
    second = cluster.worker("--concurrency=2")
    time.sleep(0.3)  # subscriptions are made right after the heartbeat appears
    assert tasks.who_am_i.broadcast("hello") == 2
    cluster.wait_for_tags(2)
    time.sleep(0.5)
    # A child's parent process is its worker's fork server: one broadcast ran under each worker.
    workers = sorted(psutil.Process(r["ppid"]).ppid() for r in cluster.results())
    assert workers == sorted([first.pid, second.pid])


def test_async_tasks_run_concurrently_in_one_child(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    began = time.time()
    for n in range(4):
        tasks.async_record.delay(f"a{n}", 1.0)
    cluster.wait_for_tags(4)
    finished = [r["at"] for r in cluster.results()]
    assert max(finished) - began < 3.0  # four 1 s sleeps overlapped in one child (async_concurrency=4)
    assert len({r["pid"] for r in cluster.results()}) == 1


def test_sigterm_finishes_running_tasks_hands_back_the_rest_and_exits_cleanly(cluster: Cluster, tasks: Any) -> None:
    proc = cluster.worker("--concurrency=1")
    tasks.sleep_then_record.delay(1.0, "inflight")
    for n in range(20):
        tasks.record_low.delay(f"q{n}")
    cluster.wait_for_tags(1, suffix="inflight:start")
    proc.signal(signal.SIGTERM)
    assert proc.wait(20) == 0
    assert "inflight" in cluster.tags()  # finished, not abandoned
    done = [t for t in cluster.tags() if t.startswith("q")]
    pending = cluster.pending("low")
    assert len(done) + pending == 20
    assert cluster.live_workers() == []
    cluster.worker("--concurrency=1")
    wanted = sorted(f"q{n}" for n in range(20))
    # Every q task, once: the count of all tags would also include the in-flight task's two.
    wait_for(lambda: sorted(t for t in cluster.tags() if t.startswith("q")) == wanted, 20,
             f"the 20 q tasks, got {cluster.tags()}")
