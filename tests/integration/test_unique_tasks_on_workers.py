"""Unique tasks on real workers, once per broker (``cluster`` takes ``broker_kind``; on a Redis Cluster the app
runs with 3 partitions, so the lock must be global across them).

The race: two producer *processes*, started together at a barrier each round, send the same unique task; each
round exactly one task is stored (both get its id) and it runs exactly once. Then what releases a lock (the
task's end, its window) and what keeps it (a retry)."""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from workers import Cluster, wait_for

from tests.integration.apps.unique_producer import race

pytestmark = pytest.mark.integration

ROUNDS = 150


@contextmanager
def app(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env(HEXQ_TEST_PARTITIONS=str(cluster.partitions)) as tasks:
        yield tasks


def worker(cluster: Cluster) -> None:
    cluster.worker("--concurrency=2", HEXQ_TEST_PARTITIONS=str(cluster.partitions))


def pending(tasks: Any) -> int:
    """Tasks stored and not taken yet (queued or waiting for an eta), in every queue."""
    return sum(stats.pending + stats.eta for stats in tasks.app.broker.queue_stats(tasks.app.queues.names))


def test_two_producer_processes_racing_store_and_run_one_task_per_round(cluster: Cluster) -> None:
    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(2), context.Queue()
    with app(cluster) as tasks:  # the spawned producers inherit this environment: the broker and prefix
        producers = [context.Process(target=race, args=(ROUNDS, barrier, out, name)) for name in ("p1", "p2")]
        for producer in producers:
            producer.start()
        got = dict(out.get(timeout=120) for _ in producers)
        for producer in producers:
            producer.join(30)
            assert producer.exitcode == 0
        # No worker yet: every round's task is still stored, so the lock is held throughout the round.
        assert got["p1"] == got["p2"], "both producers of a round must get the one stored task's id"
        assert len(set(got["p1"])) == ROUNDS
        assert pending(tasks) == ROUNDS
        worker(cluster)
        cluster.wait_for_tags(ROUNDS)
        time.sleep(0.5)  # anything run twice would show by now
        runs = Counter(cluster.tags())
        assert runs == Counter({f"round-{n}": 1 for n in range(ROUNDS)})
        # Each task ended, releasing its lock: the same call is a new task now.
        # The app's own broker sees in-flight tasks in every partition (cluster.in_flight_ids reads only one).
        wait_for(lambda: pending(tasks) == 0 and not tasks.app.broker.in_flight(), 10, "the tasks to be acknowledged")
        again = tasks.unique_record.delay("round-0")
        assert again not in got["p1"]
        cluster.wait_for_tags(ROUNDS + 1)
        assert Counter(cluster.tags())["round-0"] == 2


def test_a_retry_keeps_the_lock_and_a_dead_letter_releases_it(cluster: Cluster) -> None:
    with app(cluster) as tasks:
        worker(cluster)
        first = tasks.unique_fails_once.delay("flaky")
        cluster.wait_for_tags(1, suffix=":start")
        # Failing, waiting for its retry (mostly: the delay is up to a second, with full jitter), or in its
        # second attempt, held at a gate: not ended in any case, so the lock is still held.
        assert tasks.unique_fails_once.delay("flaky") == first
        cluster.book.set(f"{cluster.prefix}-gate-flaky", 1)
        cluster.wait_for_tags(1, suffix="flaky")
        assert cluster.tags().count("flaky:start") == 2
        wait_for(lambda: not tasks.app.broker.in_flight(), 10, "the retried task to be acknowledged")
        assert tasks.unique_fails_once.delay("flaky") != first  # ended: released with its acknowledgement

        doomed = tasks.unique_raises.delay("doomed")
        wait_for(lambda: doomed in cluster.dead(), 10, f"the failing task to be dead-lettered\n{cluster.logs()}")
        again = tasks.unique_raises.delay("doomed")
        assert again != doomed
        wait_for(lambda: again in cluster.dead(), 10, "the second one to be dead-lettered too")


def test_the_lock_expires_with_its_window_while_the_task_still_waits(cluster: Cluster) -> None:
    with app(cluster) as tasks:
        first = tasks.unique_short.options(eta=3).delay("late")  # unique=0.5 s, due in 3 s
        assert tasks.unique_short.options(eta=3).delay("late") == first
        time.sleep(0.8)
        second = tasks.unique_short.options(eta=3).delay("late")
        assert second != first
        assert pending(tasks) == 2
        worker(cluster)
        cluster.wait_for_tags(2)
        assert cluster.tags() == ["late", "late"]
