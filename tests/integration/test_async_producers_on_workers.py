"""``await task.adelay()`` from a running event loop, once per broker (``cluster`` takes ``broker_kind``; on a
Redis Cluster the app runs with 3 partitions, the thread-offloaded producer): real workers run what was sent,
and the loop keeps running while the broker makes every enqueue wait."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.cluster import RedisCluster
from workers import Cluster

pytestmark = pytest.mark.integration

STALL = 1.0  # seconds the broker makes writes wait in the loop test
TICK = 0.005


@contextmanager
def app(cluster: Cluster) -> Iterator[Any]:
    with cluster.app_env(HEXQ_TEST_PARTITIONS=str(cluster.partitions)) as tasks:
        yield tasks


def stored(tasks: Any) -> int:
    return sum(s.pending + s.eta for s in tasks.app.broker.queue_stats(tasks.app.queues.names))


def test_adelay_from_a_running_event_loop_is_run_by_a_worker(cluster: Cluster) -> None:
    with app(cluster) as tasks:
        cluster.worker("--concurrency=2", HEXQ_TEST_PARTITIONS=str(cluster.partitions))

        async def handler() -> list[str]:  # what an async web handler does
            sent = [await tasks.record.adelay("one"), await tasks.record.options(queue="high").adelay("two"),
                    await tasks.record.aapply(["three"]), await tasks.async_record.adelay("four")]
            sent += await asyncio.gather(*(tasks.record.adelay(f"many-{n}") for n in range(100)))
            await tasks.app.aclose()
            return sent

        sent = asyncio.run(handler())
        assert len(set(sent)) == 104
        cluster.wait_for_tags(104)
        assert sorted(cluster.tags()) == sorted(["one", "two", "three", "four", *(f"many-{n}" for n in range(100))])


def test_the_loop_keeps_running_while_1000_enqueues_wait_for_the_broker(cluster: Cluster) -> None:
    """The broker holds every write for STALL seconds (Redis: CLIENT PAUSE WRITE; SQLite: another connection holds
    the write lock) while 1000 coroutines enqueue; a ticker coroutine must keep ticking meanwhile. A producer
    that blocked the loop would let it tick at most a few times before every enqueue is done."""
    with app(cluster) as tasks:
        asyncio.run(tasks.record.adelay("warm-up"))  # connections open, scripts loaded: only the stall waits

        async def run() -> tuple[int, float, list[str]]:
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(TICK)

            ticking = asyncio.create_task(ticker())
            await asyncio.sleep(TICK)
            started = time.monotonic()
            with stalled(cluster):
                sent = await asyncio.gather(*(tasks.record.adelay(f"t{n}") for n in range(1000)))
            took = time.monotonic() - started
            done.set()
            await ticking
            await tasks.app.aclose()
            return ticks, took, list(sent)

        ticks, took, sent = asyncio.run(run())
        assert took >= STALL * 0.8, "the broker did not hold the writes: the test shows nothing"
        assert ticks >= 20, f"the loop ticked only {ticks} times in {took:.2f} s of enqueues"
        assert len(set(sent)) == 1000 and stored(tasks) == 1001


@contextmanager
def stalled(cluster: Cluster) -> Iterator[None]:
    if cluster.kind == "sqlite":
        holding = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(cluster.url.removeprefix("sqlite://"), isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            time.sleep(STALL)
            conn.execute("COMMIT")
            conn.close()

        holder = threading.Thread(target=hold)
        holder.start()
        holding.wait(5)
        try:
            yield
        finally:
            holder.join()
        return
    pause = ("CLIENT", "PAUSE", int(STALL * 1000), "WRITE")
    client = cluster.redis
    if isinstance(client, RedisCluster):
        client.execute_command(*pause, target_nodes=RedisCluster.PRIMARIES)
    else:
        client.execute_command(*pause)
    yield
