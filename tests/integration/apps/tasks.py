"""The app that integration tests run real workers on. Tasks report what happened into Redis lists.

Configured from the environment so each test gets its own broker or prefix: HEXQ_TEST_URL (the broker under
test: a Redis or an sqlite: URL), HEXQ_TEST_BOOK_URL (the Redis the reports go to; default HEXQ_TEST_URL),
HEXQ_TEST_PREFIX, HEXQ_TEST_PARTITIONS, HEXQ_TEST_CONCURRENCY, HEXQ_TEST_MAX_TASKS, HEXQ_TEST_SCHEDULES=1,
HEXQ_TEST_SPANS (tracing on, spans to that file or to memory: apps/spans.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from datetime import timedelta
from typing import Any

from hexq import CronTask, HexQ, TaskCancelled, current_attempt
from tests.integration.apps.reporting import Reporter

URL = os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("HEXQ_TEST_PREFIX", "hexqtest")
BOOK_URL = os.environ.get("HEXQ_TEST_BOOK_URL") or URL
RESULTS = f"{PREFIX}-results"

def _tracing() -> Any:
    where = os.environ.get("HEXQ_TEST_SPANS")
    if not where:
        return False
    from tests.integration.apps.spans import provider_factory

    return provider_factory(where)


app = HexQ(
    url=URL,
    prefix=PREFIX,
    partitions=int(os.environ.get("HEXQ_TEST_PARTITIONS", "1")),
    queues=[(0, "high"), (1, "medium"), "low"],
    concurrency=int(os.environ.get("HEXQ_TEST_CONCURRENCY", "2")),
    async_concurrency=4,
    max_retries=2,
    lease_timeout=float(os.environ.get("HEXQ_TEST_LEASE", "3")),
    shutdown_timeout=10,
    cancel_grace=float(os.environ.get("HEXQ_TEST_CANCEL_GRACE", "5")),
    max_tasks_per_worker=int(os.environ["HEXQ_TEST_MAX_TASKS"]) if os.environ.get("HEXQ_TEST_MAX_TASKS") else None,
    schedules=[CronTask("* * * * * *", "record", args=["cron"])] if os.environ.get("HEXQ_TEST_SCHEDULES") else [],
    tracing=_tracing(),
)

report = Reporter(BOOK_URL, RESULTS)
client = report.client


@app.task
def record(tag: str) -> None:
    report(tag=tag)


@app.task(queue="low")
def record_low(tag: str) -> None:
    report(tag=tag)


@app.task
def sleep_then_record(seconds: float, tag: str) -> None:
    report(tag=f"{tag}:start")
    time.sleep(seconds)
    report(tag=tag)


@app.task
def warn_then_sleep(seconds: float, tag: str) -> None:
    """An INFO line, then a WARNING, then a long sleep: both are in the log while it sleeps."""
    logging.getLogger("tests.tasks").info("before the warning %s", tag)
    logging.getLogger("tests.tasks").warning("the warning %s", tag)
    report(tag=f"{tag}:start")
    time.sleep(seconds)
    report(tag=tag)


@app.task(soft_timeout=0.3, max_retries=2)
def overrun_soft(tag: str) -> None:
    report(tag=f"{tag}:start")
    time.sleep(5)
    report(tag=f"{tag}:finished")  # never reached


@app.task(soft_timeout=0.3, max_retries=1)
async def overrun_soft_async(tag: str) -> None:
    report(tag=f"{tag}:start")
    await asyncio.sleep(5)


@app.task(hard_timeout=0.5, max_retries=1)
def overrun_hard(tag: str) -> None:
    report(tag=f"{tag}:start")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
    while True:  # ignores everything but SIGKILL
        time.sleep(0.01)


@app.task
async def async_record(tag: str, seconds: float = 0.0) -> None:
    await asyncio.sleep(seconds)
    report(tag=tag)


@app.task
def crash_once(tag: str) -> None:
    """Kills its own process on the first delivery; succeeds when redelivered."""
    report(tag=f"{tag}:start")
    if client().incr(f"{PREFIX}-crash-{tag}") == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    report(tag=tag)


@app.task
def crash_always(tag: str) -> None:
    report(tag=f"{tag}:start")
    os._exit(3)


@app.task
def who_am_i(tag: str) -> None:
    report(tag=tag)


@app.task(retry_on=(ConnectionError,), max_retries=5, backoff=4.0, backoff_max=4.0)
def fail_then_retry(tag: str) -> None:
    """Fails every run with a retryable error; each retry waits up to 4 s (full jitter)."""
    report(tag=f"{tag}:start")
    raise ConnectionError("the service is down")


@app.task(unique=timedelta(seconds=60))
def unique_record(tag: str) -> None:
    report(tag=tag)


@app.task(unique=0.5)
def unique_short(tag: str) -> None:
    report(tag=tag)


@app.task(unique=60, retry_on=(RuntimeError,), max_retries=3, backoff=1.0, backoff_max=1.0)
def unique_fails_once(tag: str) -> None:
    """Fails its first attempt (retried within a second: full jitter may make it at once); the second
    attempt waits for the key ``<prefix>-gate-<tag>`` (up to 30 s), then succeeds. So the task cannot end
    before the test has looked at it, however short the retry's delay."""
    report(tag=f"{tag}:start")
    if client().incr(f"{PREFIX}-fails-{tag}") == 1:
        raise RuntimeError("first attempt fails")
    end = time.monotonic() + 30
    while not client().exists(f"{PREFIX}-gate-{tag}") and time.monotonic() < end:
        time.sleep(0.01)
    report(tag=tag)


@app.task(unique=60)
def unique_raises(tag: str) -> None:
    report(tag=f"{tag}:start")
    raise ValueError("always")


@app.task
def swallow_cancel(seconds: float, tag: str) -> None:
    """Catches TaskCancelled and goes on: only the kill after cancel_grace stops it."""
    report(tag=f"{tag}:start")
    end = time.time() + seconds
    while time.time() < end:
        try:
            time.sleep(0.02)
        except TaskCancelled:
            report(tag=f"{tag}:swallowed")
    report(tag=tag)


@app.task
def deaf_sleep(seconds: float, tag: str) -> None:
    """Blocks SIGUSR1, so it never hears of its cancellation."""
    report(tag=f"{tag}:start")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    time.sleep(seconds)
    report(tag=tag)


@app.task
async def async_sleep_then_record(seconds: float, tag: str) -> None:
    report(tag=f"{tag}:start")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        report(tag=f"{tag}:cancelled")
        raise
    report(tag=tag)


@app.task(retry_on=(ConnectionError,), max_retries=3, backoff=0.2, backoff_max=0.2)
def fail_once(tag: str) -> None:
    """Fails its first attempt with a retryable error, succeeds on the retry (within 0.2 s)."""
    report(tag=f"{tag}:start")
    if current_attempt.get() == 1:
        raise ConnectionError("the service is down the first time")
    report(tag=tag)


@app.task(retry_on=(LookupError,), max_retries=1, backoff=0.1, backoff_max=0.1)
def fails_every_attempt(tag: str) -> None:
    """Raises on each of its two attempts, the attempt in the message: then it is dead-lettered."""
    report(tag=f"{tag}:start")
    raise LookupError(f"no invoice {tag} (attempt {current_attempt.get()})")


# -- results (keep_result) -------------------------------------------------------------------------------
@app.task(keep_result=60)
def add(x: int, y: int) -> int:
    return x + y


@app.task(keep_result=60)
def fail_with(message: str) -> None:
    raise ValueError(message)


@app.task(keep_result=60)
def slow_add(x: int, y: int, seconds: float) -> int:
    report(tag="slow_add:start")
    time.sleep(seconds)
    return x + y


@app.task(keep_result=60)
async def async_add(x: int, y: int) -> int:
    await asyncio.sleep(0.01)
    return x + y


@app.task(keep_result=60)
def sized(n: int) -> str:
    return "x" * n


@app.task(keep_result=1)
def short_lived() -> str:
    return "soon gone"


@app.task(keep_result=60, hard_timeout=0.5, max_retries=0)
def overrun_hard_kept() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM})
    while True:  # ignores everything but SIGKILL
        time.sleep(0.01)
