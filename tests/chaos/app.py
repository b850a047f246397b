"""The app the chaos suite's workers run. Every run is recorded on a separate bookkeeping Redis (never behind
the proxy, never restarted), so the counting survives the chaos done to the broker.

Environment: CHAOS_URL (the broker: the proxy for workers, Redis itself for the producer), CHAOS_BOOK_URL,
CHAOS_PREFIX, CHAOS_LEASE (seconds), CHAOS_MAX_DELIVERIES, CHAOS_CONCURRENCY.

Bookkeeping keys (all under ``<prefix>:``): ``starts`` and ``ends`` (lists of ``n|pid|time``), ``runs`` (hash
n -> runs started), ``done`` (set of n), ``running`` (hash pid -> ``n|kind|time`` of the run in progress).
"""

from __future__ import annotations

import os
import signal
import time

import redis

from hexq import HexQ

URL = os.environ.get("CHAOS_URL", "redis://127.0.0.1:6379/0")
BOOK_URL = os.environ.get("CHAOS_BOOK_URL", "redis://127.0.0.1:6379/1")
PREFIX = os.environ.get("CHAOS_PREFIX", "chaos")

app = HexQ(
    url=URL,
    prefix=PREFIX,
    queues=["default"],
    concurrency=int(os.environ.get("CHAOS_CONCURRENCY", "2")),
    lease_timeout=float(os.environ.get("CHAOS_LEASE", "2")),
    shutdown_timeout=float(os.environ.get("CHAOS_SHUTDOWN", "10")),
    max_deliveries=int(os.environ.get("CHAOS_MAX_DELIVERIES", "5")),
    max_retries=0,
    socket_timeout=5,
    socket_connect_timeout=2,
    worker_log_level=os.environ.get("CHAOS_LOG_LEVEL", "INFO"),
)

_book: redis.Redis | None = None


def book() -> redis.Redis:
    global _book
    if _book is None or _book.connection_pool.pid != os.getpid():  # type: ignore[attr-defined]
        _book = redis.Redis.from_url(BOOK_URL, socket_timeout=10)
    return _book


def key(name: str) -> str:
    return f"{PREFIX}:{name}"


def started(n: int, kind: str) -> None:
    pid, now = os.getpid(), time.time()
    pipe = book().pipeline(transaction=False)
    pipe.rpush(key("starts"), f"{n}|{pid}|{now:.6f}")
    pipe.hincrby(key("runs"), str(n), 1)
    pipe.hset(key("running"), str(pid), f"{n}|{kind}|{now:.6f}")
    pipe.execute()


def finished(n: int) -> None:
    pid, now = os.getpid(), time.time()
    pipe = book().pipeline(transaction=False)
    pipe.rpush(key("ends"), f"{n}|{pid}|{now:.6f}")
    pipe.sadd(key("done"), str(n))
    pipe.hdel(key("running"), str(pid))
    pipe.execute()


@app.task
def work(n: int, ms: float) -> None:
    """A short (1-5 ms) or long (seconds, past the lease) task."""
    started(n, "long" if ms >= 1000 else "short")
    time.sleep(ms / 1000)
    finished(n)


@app.task
def poison(n: int) -> None:
    """Kills the process running it, every time."""
    started(n, "poison")
    os.kill(os.getpid(), signal.SIGKILL)


@app.task
def noop(n: int) -> None:
    finished(n)


@app.task
def quick() -> None:
    """Does nothing and records nothing: teaches a child that tasks are fast, so it reserves big batches."""
