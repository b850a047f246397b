"""Results and status with real worker processes, on each broker: ``h = add.delay(1, 2); h.result(timeout=5)``,
failures with their remote traceback, the status through a task's life, a handle rebuilt in another
process, TTL expiry, results too big, hard timeouts seen by the worker parent."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from workers import Cluster, wait_for

from hexq import ResultNotFound, TaskFailed, TaskStatus

pytestmark = pytest.mark.integration


@pytest.fixture
def tasks(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env() as module:
        yield module


def test_delay_then_result(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    h = tasks.add.delay(1, 2)
    assert h.result(timeout=5) == 3
    assert h.status() is TaskStatus.SUCCEEDED
    handles = [tasks.add.delay(n, n) for n in range(20)] + [tasks.async_add.delay(2, 3)]
    assert [h.result(timeout=10) for h in handles] == [2 * n for n in range(20)] + [5]

    async def from_a_coroutine() -> list[int]:
        handle = await tasks.add.adelay(20, 22)
        return list(await asyncio.gather(handle.aresult(timeout=10), tasks.add.delay(1, 1).aresult(timeout=10)))

    assert asyncio.run(from_a_coroutine()) == [42, 2]


def test_a_failed_task_raises_task_failed_with_the_remote_traceback(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    h = tasks.fail_with.delay("no good")
    with pytest.raises(TaskFailed) as caught:
        h.result(timeout=10)
    assert (caught.value.status, caught.value.type, caught.value.message) == ("failed", "ValueError", "no good")
    assert "raise ValueError(message)" in caught.value.traceback
    assert h.status() is TaskStatus.FAILED
    assert h in cluster.dead()  # dead-lettered as before


def test_status_through_the_life_cycle(cluster: Cluster, tasks: Any) -> None:
    cluster.worker("--concurrency=1")
    blocker = tasks.slow_add.delay(0, 0, 1.5)  # holds the one child, so the next one waits queued
    h = tasks.slow_add.options(eta=timedelta(seconds=1)).delay(1, 2, 1.0)
    assert h.status() is TaskStatus.SCHEDULED
    wait_for(lambda: blocker.status() is TaskStatus.RUNNING, 10, "the blocker to run")
    wait_for(lambda: h.status() is TaskStatus.QUEUED, 5, "the eta task to be due")
    wait_for(lambda: h.status() is TaskStatus.RUNNING, 10, "the eta task to run")
    assert h.result(timeout=10) == 3
    assert h.status() is TaskStatus.SUCCEEDED
    assert tasks.app.handle("never-sent").status() is TaskStatus.UNKNOWN


def test_a_handle_rebuilt_in_another_process_waits_for_the_result(cluster: Cluster, tasks: Any) -> None:
    h = tasks.slow_add.delay(20, 22, 0.5)
    script = ("import sys; from tests.integration.apps.tasks import app; "
              "print(app.handle(sys.argv[1]).result(timeout=20))")
    waiter = subprocess.Popen([sys.executable, "-c", script, h], env=cluster.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the other process is waiting before any worker exists
    cluster.worker()
    out, err = waiter.communicate(timeout=30)
    assert (waiter.returncode, out.strip()) == (0, "42"), err


def test_the_outcome_expires_after_keep_result(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    h = tasks.short_lived.delay()
    assert h.result(timeout=5) == "soon gone"
    wait_for(lambda: h.status() is TaskStatus.UNKNOWN, 5, "the outcome to expire (keep_result=1)")
    with pytest.raises(ResultNotFound):
        h.result(timeout=1)


def test_a_result_over_the_size_limit_is_a_failed_outcome_and_the_worker_goes_on(cluster: Cluster,
                                                                                  tasks: Any) -> None:
    cluster.worker()
    h = tasks.sized.delay(2 * 1024 * 1024)  # over max_payload_bytes (1 MiB)
    with pytest.raises(TaskFailed, match="returned a value too big to keep") as caught:
        h.result(timeout=10)
    assert caught.value.type == "ResultNotKept"
    assert tasks.sized.delay(10).result(timeout=5) == "x" * 10
    assert h not in cluster.dead()  # it ran: acknowledged, not retried, not dead-lettered


def test_a_hard_timeout_recorded_by_the_worker_parent_is_a_failed_outcome(cluster: Cluster, tasks: Any) -> None:
    cluster.worker()
    h = tasks.overrun_hard_kept.delay()
    with pytest.raises(TaskFailed) as caught:
        h.result(timeout=15)
    assert (caught.value.status, caught.value.type) == ("failed", "HardTimeout")
    assert tasks.add.delay(2, 2).result(timeout=10) == 4
