"""Cancelling tasks, with real workers started through the CLI, on each broker: a queued, eta or retry-waiting
task is removed and never runs; a running one is stopped (sync: TaskCancelled raised in it, killed after the
grace period if it swallows that; async: its coroutine cancelled) and never retried; a finished or unknown id
is a clear no-op; ``hexq cancel`` says which case each id was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from workers import APP, ROOT, Cluster, wait_for

from hexq import Cancelled, TaskFailed, TaskStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env() as module:
        yield module


def hexq_cancel(cluster: Cluster, *ids: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", "cancel", f"--app={APP}", *ids],
                          cwd=ROOT, env=cluster.env(), capture_output=True, text=True, timeout=60)


def stats(cluster: Cluster, queue: str = "low") -> tuple[int, int, int]:
    (row,) = cluster.inspect.queue_stats([queue])
    return row.pending, row.eta, row.in_flight


def test_a_queued_task_is_removed_and_never_runs(cluster: Cluster, tasks: Any) -> None:
    tasks.record.delay("before")
    doomed = tasks.record.delay("doomed")
    tasks.record.delay("after")
    assert tasks.app.cancel(doomed) is Cancelled.REMOVED
    assert stats(cluster) == (2, 0, 0)
    cluster.worker("--concurrency=1")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert cluster.tags() == ["before", "after", "probe"]
    assert doomed.status() is TaskStatus.CANCELLED
    assert doomed.cancel() is Cancelled.FINISHED  # nothing of it is left but its record


def test_an_eta_task_is_removed_and_never_runs(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    doomed = tasks.record.options(eta=0.5).delay("doomed")
    kept = tasks.record.options(eta=0.5).delay("kept")
    assert tasks.app.cancel(doomed) is Cancelled.REMOVED
    assert cluster.inspect.lookup(doomed) is None and cluster.inspect.lookup(kept) is not None
    cluster.wait_for_tags(1, suffix="kept")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert cluster.tags() == ["kept", "probe"]


def test_a_task_waiting_for_its_retry_is_never_retried(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    task_id = tasks.fail_then_retry.delay("flaky")
    cluster.wait_for_tags(1, suffix="flaky:start")
    wait_for(lambda: stats(cluster)[1] == 1 or cluster.tags().count("flaky:start") > 1, 20, "the retry to wait")
    found = tasks.app.cancel(task_id)
    # The retry waits up to 4 s: nearly always it is still waiting; if it had just started, it is marked and
    # its next retry is dropped instead of stored. Either way it never starts again after this.
    assert found in (Cancelled.REMOVED, Cancelled.RUNNING)
    starts = cluster.tags().count("flaky:start")
    wait_for(lambda: stats(cluster) == (0, 0, 0), 20, f"the task gone\n{cluster.logs()}")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert cluster.tags().count("flaky:start") == starts
    assert cluster.inspect.lookup(task_id) is None and cluster.dead_count() == 0


def test_an_unknown_id_is_a_clear_no_op(cluster: Cluster, tasks: Any) -> None:
    assert tasks.app.cancel("no-such-task") is Cancelled.UNKNOWN
    done = hexq_cancel(cluster, "no-such-task")
    assert done.returncode == 3, done.stderr
    assert done.stdout == "no-such-task unknown (no such task, or its record has expired: nothing done)\n"


def test_the_command_line_says_what_each_id_was(cluster: Cluster, tasks: Any) -> None:
    queued = tasks.record.delay("queued")
    waiting = tasks.record.options(eta=60).delay("waiting")
    done = hexq_cancel(cluster, queued, waiting)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{queued} cancelled (it was queued or waiting: it will never run)",
        f"{waiting} cancelled (it was queued or waiting: it will never run)",
    ]
    again = hexq_cancel(cluster, queued, "nope")
    assert again.returncode == 3
    assert again.stdout.splitlines() == [f"{queued} finished (it had already ended: nothing done)",
                                         "nope unknown (no such task, or its record has expired: nothing done)"]
    assert stats(cluster) == (0, 0, 0)


# -- running tasks ------------------------------------------------------------------------------------------

def pid_of(cluster: Cluster, tag: str) -> int:
    return int(next(r["pid"] for r in cluster.results() if r["tag"] == tag))


def test_a_running_sync_task_gets_task_cancelled_raised_in_it_and_is_never_retried(
        cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    task_id = tasks.sleep_then_record.delay(30, "long")
    cluster.wait_for_tags(1, suffix="long:start")
    assert tasks.app.cancel(task_id) is Cancelled.RUNNING
    wait_for(lambda: cluster.in_flight_ids() == set(), 20, f"the task to stop\n{cluster.logs()}")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert "long" not in cluster.tags() and cluster.tags().count("long:start") == 1
    assert pid_of(cluster, "probe") == pid_of(cluster, "long:start")  # stopped in place: no child was killed
    wait_for(lambda: stats(cluster) == (0, 0, 0), 10, "the probe acknowledged")  # with the next reservation
    assert cluster.dead_count() == 0
    assert cluster.inspect.lookup(task_id) is None
    assert f"sleep_then_record[{task_id}] cancelled in" in cluster.logs()
    assert task_id.status() is TaskStatus.CANCELLED
    with pytest.raises(TaskFailed, match="cancelled while it ran"):
        task_id.result(timeout=0)


def test_a_sync_task_that_swallows_task_cancelled_is_killed_after_the_grace(cluster: Cluster, tasks: Any) -> None:
    proc = cluster.worker("--concurrency=1", HEXQ_TEST_CANCEL_GRACE="1")
    task_id = tasks.swallow_cancel.delay(60, "stubborn")
    cluster.wait_for_tags(1, suffix="stubborn:start")
    first = proc.children()
    assert tasks.app.cancel(task_id) is Cancelled.RUNNING
    cluster.wait_for_tags(1, suffix="stubborn:swallowed")  # it was told, and ignored it
    wait_for(lambda: proc.children() and proc.children() != first, 20, f"the child replaced\n{cluster.logs()}")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert pid_of(cluster, "probe") != pid_of(cluster, "stubborn:start")
    assert cluster.tags().count("stubborn:start") == 1  # dropped at the settlement, not put back
    wait_for(lambda: stats(cluster) == (0, 0, 0), 10, "the probe acknowledged")  # with the next reservation
    assert cluster.dead_count() == 0
    assert "did not stop" in cluster.logs()
    assert task_id.status() is TaskStatus.CANCELLED  # the record its cancellation carried


def test_a_running_async_task_has_its_coroutine_cancelled(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    other = tasks.async_sleep_then_record.delay(1.0, "neighbour")  # runs beside it in the same child
    task_id = tasks.async_sleep_then_record.delay(30, "long")
    cluster.wait_for_tags(1, suffix="long:start")
    assert tasks.app.cancel(task_id) is Cancelled.RUNNING
    cluster.wait_for_tags(1, suffix="long:cancelled")
    cluster.wait_for_tags(1, suffix="neighbour")  # the other async task was left alone
    wait_for(lambda: cluster.in_flight_ids() == set(), 20, f"the task to stop\n{cluster.logs()}")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert "long" not in cluster.tags() and cluster.tags().count("long:start") == 1
    assert pid_of(cluster, "probe") == pid_of(cluster, "long:start")
    wait_for(lambda: stats(cluster) == (0, 0, 0), 10, "the probe acknowledged")  # with the next reservation
    assert cluster.dead_count() == 0
    assert cluster.inspect.lookup(other) is None
    assert task_id.status() is TaskStatus.CANCELLED


def test_a_cancelled_task_never_comes_back_from_crash_recovery(cluster: Cluster, tasks: Any) -> None:
    proc = cluster.worker("--concurrency=1")  # the default grace, 5 s: the child is killed first
    task_id = tasks.deaf_sleep.delay(30, "deaf")
    cluster.wait_for_tags(1, suffix="deaf:start")
    assert tasks.app.cancel(task_id) is Cancelled.RUNNING
    [child] = proc.children()
    os.kill(child, signal.SIGKILL)  # its worker dies while the cancellation is pending
    wait_for(lambda: proc.children() not in ([], [child]), 20, "a new child")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert cluster.tags().count("deaf:start") == 1  # not put back in its queue, so never run again
    wait_for(lambda: stats(cluster) == (0, 0, 0), 10, "the probe acknowledged")  # with the next reservation
    assert cluster.dead_count() == 0
    assert cluster.inspect.lookup(task_id) is None
    assert task_id.status() is TaskStatus.CANCELLED


def test_the_command_line_cancels_a_running_task(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    task_id = tasks.sleep_then_record.delay(30, "long")
    cluster.wait_for_tags(1, suffix="long:start")
    done = hexq_cancel(cluster, task_id)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"{task_id} cancelling (a worker holds it: it is stopped within about a second, and "
                           "never runs again)\n")
    wait_for(lambda: cluster.in_flight_ids() == set(), 20, f"the task to stop\n{cluster.logs()}")
    assert "long" not in cluster.tags()
