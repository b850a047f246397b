"""Measuring: waiting on the completion counter, percentiles, steady-state rate, the raw redis-py ceiling."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import redis

from bench.apps.common import DONE_KEY, STAMPS_KEY


class Timeout(Exception):
    """A run made no progress for too long (or hit its cap): its cells read 'timeout'."""


class WorkersDied(Exception):
    """The worker command exited during a run: its cells read 'error'."""


Sample = tuple[float, int]  # (monotonic seconds, completed count)


def wait_for_count(client: redis.Redis, target: int, *, stall: float, cap: float, poll: float = 0.002,
                   alive: Callable[[], bool] = lambda: True, key: str = DONE_KEY,
                   partial: bool = False) -> list[Sample]:
    """Poll ``key`` (a counter, or the stamps list's length) every ``poll`` s until it reaches ``target``;
    samples of (time, count).

    Raises Timeout when the count has not moved for ``stall`` s, WorkersDied if they exited; after ``cap`` s,
    returns what it has if ``partial`` (a slow but working system), else raises Timeout."""
    start = last_move = time.monotonic()
    last = -1
    samples: list[Sample] = []
    while True:
        raw = client.llen(key) if key == STAMPS_KEY else client.get(key)
        count = int(raw or 0)
        now = time.monotonic()
        samples.append((now, count))
        if count >= target:
            return samples
        if count != last:
            last, last_move = count, now
        if partial and now - start > cap and count > 0:
            return samples
        if now - last_move > stall or now - start > cap:
            raise Timeout(f"{count}/{target} done after {now - start:.1f} s")
        if not alive():
            raise WorkersDied(f"workers exited with {count}/{target} done")
        time.sleep(poll)


def crossing(samples: Sequence[Sample], level: float) -> Sample:
    """The first sample at or above ``level`` completions."""
    return next(s for s in samples if s[1] >= level)


def steady_rate(samples: Sequence[Sample], n: int, low: float = 0.1, high: float = 0.9) -> float | None:
    """Tasks/s between the first samples at ``low``·n and ``high``·n completions (the middle 80%)."""
    if n < 10:
        return None
    t1, c1 = crossing(samples, low * n)
    t2, c2 = crossing(samples, high * n)
    return (c2 - c1) / (t2 - t1) if t2 > t1 else None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, q in [0, 100]."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def stamp_delays_ms(client: redis.Redis) -> list[float]:
    """(start - sent) for every recorded stamp, in ms."""
    delays = []
    for raw in client.lrange(STAMPS_KEY, 0, -1):
        sent, started = (float(x) for x in raw.split())
        delays.append((started - sent) * 1000)
    return delays


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ceiling(url: str, n: int) -> float:
    """Tasks/s of a raw redis-py loop doing one LPUSH and one BLPOP per task."""
    client = redis.Redis.from_url(url)
    client.delete("bench:ceiling")
    start = time.perf_counter()
    for i in range(n):
        client.lpush("bench:ceiling", i)
        client.blpop(["bench:ceiling"], timeout=5)
    seconds = time.perf_counter() - start
    client.close()
    return n / seconds


def sqlite_ceiling(path: str, n: int) -> float:
    """Tasks/s of a raw sqlite3 loop on one WAL database file (synchronous=NORMAL, hexq's default): per task
    one INSERT (its own transaction), then one BEGIN IMMEDIATE transaction that SELECTs the oldest row and
    DELETEs it: the embedded brokers' counterpart of the LPUSH+BLPOP ceiling."""
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("CREATE TABLE IF NOT EXISTS ceiling (id INTEGER PRIMARY KEY, data BLOB NOT NULL)")
        conn.execute("DELETE FROM ceiling")
        payload = b"x" * 100
        start = time.perf_counter()
        for _ in range(n):
            conn.execute("INSERT INTO ceiling (data) VALUES (?)", (payload,))
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute("SELECT id, data FROM ceiling ORDER BY id LIMIT 1").fetchone()
            conn.execute("DELETE FROM ceiling WHERE id = ?", (row[0],))
            conn.execute("COMMIT")
        seconds = time.perf_counter() - start
    finally:
        conn.close()
    return n / seconds
