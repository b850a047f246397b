"""Deadlines (``expires=``) with real workers started through the CLI, on each broker: a task not started by
its deadline never runs, whether it waited in its queue (workers absent or busy), for its eta, or for a retry;
it is counted per queue (``hexq info``)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from workers import APP, ROOT, Cluster, wait_for

from hexq import TaskStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env() as module:
        yield module


def expired(cluster: Cluster, queue: str = "low") -> int:
    (stats,) = cluster.inspect.queue_stats([queue])
    return int(stats.expired)


def info(cluster: Cluster) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", "info", f"--app={APP}", "--json"],
                          cwd=ROOT, env=cluster.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def test_a_task_whose_deadline_passes_while_no_worker_runs_never_runs_and_is_counted(
        cluster: Cluster, tasks: Any) -> None:
    stale = tasks.record.options(expires=0.5).delay("stale")
    tasks.record.options(expires=60).delay("fresh")
    time.sleep(1.0)
    cluster.worker("--concurrency=1")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")  # FIFO, one child: the two before it were dealt with
    assert cluster.tags() == ["fresh", "probe"]
    assert expired(cluster) == 1
    assert cluster.pending("low") == 0 and cluster.dead_count() == 0
    [row] = [q for q in info(cluster)["queues"] if q["name"] == "low"]
    assert row["expired"] == 1
    assert stale.status() is TaskStatus.EXPIRED


def test_a_task_whose_deadline_passes_while_the_workers_are_busy_never_runs(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    tasks.sleep_then_record.delay(1.5, "busy")
    cluster.wait_for_tags(1, suffix="busy:start")
    tasks.record.options(expires=0.5).delay("waited-too-long")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert "waited-too-long" not in cluster.tags()
    assert expired(cluster) == 1


def test_an_eta_task_whose_deadline_passes_before_a_worker_takes_it_never_runs(
        cluster: Cluster, tasks: Any) -> None:
    tasks.record.options(eta=0.3, expires=0.8).delay("late")
    tasks.record.options(eta=0.3, expires=60).delay("on-time")
    time.sleep(1.2)  # both are due, and the first one's deadline has passed, before any worker looks
    cluster.worker("--concurrency=1")
    cluster.wait_for_tags(1, suffix="on-time")
    tasks.record.delay("probe")
    cluster.wait_for_tags(1, suffix="probe")
    assert cluster.tags() == ["on-time", "probe"]
    assert expired(cluster) == 1


def test_a_retry_is_never_started_after_the_deadline(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    sent = time.time()
    flaky = tasks.fail_then_retry.options(expires=1.5).delay("flaky")
    wait_for(lambda: expired(cluster) == 1, 20, f"the retried task to expire\n{cluster.logs()}")
    starts = [r["at"] for r in cluster.results() if r["tag"] == "flaky:start"]
    assert starts and max(starts) <= sent + 1.5, (starts, sent)
    assert cluster.dead_count() == 0  # expired, not dead-lettered
    assert cluster.pending("low") == 0 and cluster.in_flight_ids() == set()
    # Usually the retry is expired as it is scheduled (its delay ends after the deadline); on a loaded machine
    # the first run can start so late that the retry is stored and then expired when a worker takes it. Either
    # way it never starts: which one happened is in the log.
    logs = cluster.logs()
    assert ("expired: its retry would start after its deadline" in logs
            or "expired: its deadline passed" in logs), logs
    assert flaky.status() is TaskStatus.EXPIRED
