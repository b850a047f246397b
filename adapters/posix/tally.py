"""Per-queue counts of finished tasks in anonymous shared memory, written by the worker's children and read by
its parent for the dashboard's per-minute counters (``hexq.core.services.tally``).

One row per child (and one for the parent, which records hard timeouts), two 8-byte counters (done, failed) per
queue. Each counter has one writer, which adds to it with a single aligned 8-byte store (a memoryview of
unsigned 64-bit integers: one memcpy), so a reader sees the old or the new value, never a mix. A row is never
reset: a child that replaces a dead one goes on from its totals, so the sums the parent reads only grow. The
memory is made before the first fork, so every child inherits it.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

from hexq.core.ports import Metrics

_CELL = 8  # bytes per counter
_KINDS = 2  # done, failed
_FAILED = frozenset({"retried", "dead_lettered", "expired"})  # a failed run, whatever follows it


class SharedTally:
    def __init__(self, rows: int, queues: Sequence[str]) -> None:
        self.rows = rows
        self.queues = list(queues)
        self._columns = len(self.queues) + 1  # the last one: a queue this worker does not know
        self._index = {queue: i for i, queue in enumerate(self.queues)}
        self._memory = mmap.mmap(-1, max(1, rows * self._columns * _KINDS * _CELL))
        self._counters = memoryview(self._memory).cast("Q")

    def cells(self, row: int) -> tuple[memoryview, dict[str, int], int]:
        """For the writer of ``row``: the counters, the index of each queue's done counter (its failed counter
        is the next one), and the index for a queue this worker does not know."""
        base = row * self._columns * _KINDS
        return self._counters, {q: base + i * _KINDS for q, i in self._index.items()}, base + len(self.queues) * _KINDS

    def add(self, row: int, queue: str, failed: bool) -> None:
        """One more task of ``queue`` done (or failed) by the writer of ``row``; only that writer calls this."""
        counters, index, other = self.cells(row)
        counters[index.get(queue, other) + failed] += 1

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """(done, failed) per queue, summed over every row; tasks of unknown queues under ''."""
        done: dict[str, int] = {}
        failed: dict[str, int] = {}
        names = [*self.queues, ""]
        for row in range(self.rows):
            for column, queue in enumerate(names):
                base = (row * self._columns + column) * _KINDS
                done[queue] = done.get(queue, 0) + self._counters[base]
                failed[queue] = failed.get(queue, 0) + self._counters[base + 1]
        return done, failed


class CountingMetrics:
    """The process's Metrics, plus a count of each finished task in its row of the shared tally."""

    def __init__(self, inner: Metrics, tally: SharedTally, row: int) -> None:
        self._inner_finished = inner.finished
        self._counters, self._cells, self._other = tally.cells(row)
        self.enqueued = inner.enqueued
        self.started = inner.started
        self.recovered = inner.recovered
        self.expired = inner.expired
        self.queue_depths = inner.queue_depths

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        # On every task: one dict lookup and one 8-byte store (about 0.2 us), no system call.
        self._inner_finished(task, queue, outcome, seconds)
        if outcome == "succeeded":
            self._counters[self._cells.get(queue, self._other)] += 1
        elif outcome in _FAILED:
            self._counters[self._cells.get(queue, self._other) + 1] += 1
