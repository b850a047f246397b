"""The app tests/integration/test_metrics.py runs a worker on: tasks that succeed, retry, give up and crash.

Configured from the environment like ``tasks.py``: HEXQ_TEST_URL (the broker under test), HEXQ_TEST_BOOK_URL
(the Redis the run counters go to; default HEXQ_TEST_URL), HEXQ_TEST_PREFIX, and optionally
HEXQ_TEST_METRICS_PORT (``HexQ(metrics_port=...)``) and HEXQ_TEST_MAX_TASKS (``max_tasks_per_worker``).
"""

from __future__ import annotations

import os
import signal
import time

import redis

from hexq import HexQ

URL = os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("HEXQ_TEST_PREFIX", "hexqmetrics")
BOOK_URL = os.environ.get("HEXQ_TEST_BOOK_URL") or URL


def _int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


app = HexQ(url=URL, prefix=PREFIX, queues=[(0, "fast"), (1, "slow")], concurrency=2, lease_timeout=3,
           shutdown_timeout=10, max_retries=2, max_tasks_per_worker=_int("HEXQ_TEST_MAX_TASKS"),
           metrics_port=_int("HEXQ_TEST_METRICS_PORT"))

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None or _client.connection_pool.pid != os.getpid():  # type: ignore[attr-defined]
        _client = redis.Redis.from_url(BOOK_URL)
    return _client


@app.task(queue="fast")
def ok(seconds: float = 0.0) -> None:
    time.sleep(seconds)
    client().incr(f"{PREFIX}-ran-ok")


@app.task(queue="slow", retry_on=ValueError, backoff=0.0)
def flaky() -> None:
    """Fails every time: retried up to max_retries (2), then dead-lettered."""
    client().incr(f"{PREFIX}-ran-flaky")
    raise ValueError("always fails")


@app.task(queue="fast")
def broken() -> None:
    """Fails without retry_on: dead-lettered at once."""
    client().incr(f"{PREFIX}-ran-broken")
    raise RuntimeError("no retries for this")


@app.task(queue="slow")
def crash_once() -> None:
    """Kills its own worker child on the first delivery (its task is recovered); succeeds when redelivered."""
    if client().incr(f"{PREFIX}-ran-crash_once") == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@app.task(queue="fast", hard_timeout=0.5, max_retries=0)
def stuck() -> None:
    """Runs past its hard timeout: the parent kills its child and dead-letters it."""
    client().incr(f"{PREFIX}-ran-stuck")
    time.sleep(30)
