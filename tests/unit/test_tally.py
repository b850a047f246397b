"""The dashboard's per-minute counters on the worker side: children count in shared memory, the parent's
heartbeat carries the increase since its last beat (``TallyBook``), and the driver sends it."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from test_parent_driver import Running, wait_until, world  # noqa: F401  (world is a fixture)

from hexq.adapters.posix.tally import CountingMetrics, SharedTally
from hexq.core.ports import MinuteTally, NoMetrics
from hexq.core.rules import minute_of
from hexq.core.services.tally import TallyBook

T0 = 1_700_000_000_000
MINUTE = minute_of(T0)


def test_the_book_sends_the_increase_since_the_last_beat_the_broker_took() -> None:
    book = TallyBook()
    first = book.tally({"q": 3, "r": 0}, {"q": 1}, T0)
    assert first == MinuteTally(MINUTE, {"q": 3}, {"q": 1})
    book.sent(first)
    lost = book.tally({"q": 5}, {"q": 1}, T0 + 1000)
    assert lost == MinuteTally(MINUTE, {"q": 2}, {})
    # That beat failed (not sent): the next one carries its counts too, in its own minute.
    again = book.tally({"q": 6, "r": 2}, {"q": 2}, T0 + 61_000)
    assert again == MinuteTally(MINUTE + 60_000, {"q": 3, "r": 2}, {"q": 1})
    book.sent(again)
    assert book.tally({"q": 6, "r": 2}, {"q": 2}, T0 + 62_000).empty


def test_the_book_samples_depths_once_a_minute() -> None:
    book = TallyBook()
    assert book.wants_depths(T0)
    book.sent(book.tally({}, {}, T0, {"q": 4}, {"q": 1}))
    assert not book.wants_depths(T0 + 1000)
    book.sent(book.tally({}, {}, T0 + 1000))
    assert not book.wants_depths(MINUTE + 59_999) and book.wants_depths(MINUTE + 60_000)


def test_children_count_in_shared_memory_and_the_parent_sums_them() -> None:
    tally = SharedTally(3, ["high", "low"])
    pid = os.fork()
    if pid == 0:  # a child: row 1
        metrics = CountingMetrics(NoMetrics(), tally, 1)
        for _ in range(1000):
            metrics.finished("t", "high", "succeeded", 0.0)
        metrics.finished("t", "low", "retried", 0.0)
        metrics.finished("t", "low", "dead_lettered", 0.0)
        metrics.finished("t", "elsewhere", "succeeded", 0.0)
        os._exit(0)
    os.waitpid(pid, 0)
    CountingMetrics(NoMetrics(), tally, 2).finished("t", "high", "expired", 0.0)  # the parent's own row
    assert tally.totals() == ({"high": 1000, "low": 0, "": 1}, {"high": 1, "low": 2, "": 0})


def test_the_driver_sends_the_counts_and_the_worker_info_with_its_heartbeat(world: Any) -> None:  # noqa: F811
    app, broker = world
    tally = SharedTally(3, ["high", "low"])
    running = Running(app, broker)
    running.driver._tally = tally
    running.driver._served = ["high", "low"]
    running.start()
    counting = CountingMetrics(NoMetrics(), tally, 0)
    for _ in range(5):
        counting.finished("t", "low", "succeeded", 0.0)
    counting.finished("t", "low", "retried", 0.0)

    def counted() -> list[MinuteTally]:
        now = int(time.time() * 1000)
        found = broker.tallies(now - 120_000, now)
        return found if sum(t.done.get("low", 0) for t in found) == 5 else []

    minutes = wait_until(counted)
    assert sum(t.failed.get("low", 0) for t in minutes) == 1
    assert any(t.pending == {"high": 0, "low": 0} for t in minutes)  # the depths sampled this minute
    info = json.loads(broker.workers()[0].info)
    assert (info["done"], info["failed"]) == (5, 1) and isinstance(info["rss"], int)
    running.stop()
