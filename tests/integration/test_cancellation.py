"""Cancelling tasks, with real workers started through the CLI, on each broker: a queued, eta or retry-waiting
task is removed and never runs; a running one is stopped (sync: TaskCancelled raised in it, killed after the
grace period if it swallows that; async: its coroutine cancelled) and never retried; a finished or unknown id
is a clear no-op; ``hexq cancel`` says which case each id was."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from workers import APP, ROOT, Cluster, wait_for

from hexq import Cancelled

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
    assert tasks.app.cancel(doomed) is Cancelled.UNKNOWN  # nothing of it is left


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
    assert [line.split(" ")[1] for line in again.stdout.splitlines()] == ["unknown", "unknown"]
    assert stats(cluster) == (0, 0, 0)
