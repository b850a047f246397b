"""What every bench app shares: the URLs and the two task bodies (sync and async)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

BROKER_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
COUNTER_URL = os.environ.get("BENCH_COUNTER_URL", BROKER_URL)
# The SQLite apps' broker: a database file the harness makes anew for each step (their counter stays in Redis).
SQLITE_PATH = os.environ.get("BENCH_SQLITE_PATH", os.path.abspath("bench-sqlite.db"))
DONE_KEY = "bench:done"
STAMPS_KEY = "bench:stamps"
LOW_KEY = "bench:low"  # completions of the priority workload's low-priority tasks
SLOW_SECONDS = 0.002  # what each low-priority task takes (time.sleep, the same in every system)

_client: redis.Redis | None = None
_aclient: Any = None


def counter() -> redis.Redis:
    global _client
    if _client is None:
        _client = redis.Redis.from_url(COUNTER_URL)
    return _client


def done() -> None:
    counter().incr(DONE_KEY)


def record(sent: float) -> None:
    started = time.time()
    pipe = counter().pipeline(transaction=False)
    pipe.rpush(STAMPS_KEY, f"{sent!r} {started!r}")
    pipe.incr(DONE_KEY)
    pipe.execute()


def slow() -> None:
    time.sleep(SLOW_SECONDS)
    counter().incr(LOW_KEY)


def _async_counter() -> Any:
    global _aclient
    if _aclient is None:
        import redis.asyncio

        _aclient = redis.asyncio.Redis.from_url(COUNTER_URL)
    return _aclient


async def adone() -> None:
    await _async_counter().incr(DONE_KEY)


async def arecord(sent: float) -> None:
    started = time.time()
    pipe = _async_counter().pipeline(transaction=False)
    pipe.rpush(STAMPS_KEY, f"{sent!r} {started!r}")
    pipe.incr(DONE_KEY)
    await pipe.execute()


def partitions_option() -> dict[str, int]:
    """BENCH_PARTITIONS=N spreads a hexq app over N hash tags (bench/cluster.py, on a Redis Cluster); unset, the
    option is not passed at all, so that ``--baseline`` can run the hexq apps on a hexq from before partitions=."""
    chosen = os.environ.get("BENCH_PARTITIONS")
    return {} if chosen is None else {"partitions": int(chosen)}
