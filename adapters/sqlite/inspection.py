"""The read-only views and operator actions of ``SqliteBroker`` (the Inspection and Administration
roles); ``SqliteBroker`` is still the one class implementing ``Broker``. Each view reads one snapshot."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hexq.adapters.sqlite import statements
from hexq.adapters.sqlite.schema import OWNED, QUEUED, WAITING
from hexq.core.ports import DeadLetter, InFlight, MinuteTally, OutgoingTask, QueueStats, WorkerBeat
from hexq.core.rules import tally_minutes
from hexq.core.unique import UNIQUE_ID_LENGTH

if TYPE_CHECKING:
    from hexq.adapters.sqlite.database import Database

_COUNT = "SELECT count(*) FROM tasks WHERE state = ? AND queue = ?"
_DEAD_COLUMNS = "seq, id, queue, payload, reason, failed_at_ms, traceback"


def _queue_stats(conn: sqlite3.Connection, queues: Sequence[str]) -> list[QueueStats]:
    flying = dict(conn.execute(f"SELECT queue, count(*) FROM tasks WHERE state = {OWNED} GROUP BY queue").fetchall())
    expired = dict(conn.execute("SELECT queue, count FROM expired").fetchall())
    def count(state: int, queue: str) -> int:
        found: int = conn.execute(_COUNT, (state, queue)).fetchone()[0]
        return found

    return [QueueStats(q, count(QUEUED, q), count(WAITING, q), flying.get(q, 0), expired.get(q, 0)) for q in queues]


def _dead_letter(row: tuple[int, str, str, str | None, str, int, str]) -> DeadLetter:
    return DeadLetter(row[1], row[2], row[3], row[4], row[5], row[6])


def _requeue_dead(conn: sqlite3.Connection, ids: Sequence[str] | None) -> int:
    """Dead letters back to the tail of their queue, oldest first, crash counts reset, kept outcomes dropped;
    those without a payload are dropped."""
    if ids is None:
        rows = conn.execute(f"SELECT {_DEAD_COLUMNS} FROM dead ORDER BY seq").fetchall()
    else:
        rows = sorted(row for task_id in dict.fromkeys(ids)
                      for row in conn.execute(f"SELECT {_DEAD_COLUMNS} FROM dead WHERE id = ?", (task_id,)))
    conn.executemany("DELETE FROM dead WHERE seq = ?", [(row[0],) for row in rows])
    # Their kept outcomes go: each one runs again and will have a new one.
    conn.executemany("DELETE FROM results WHERE id = ?", [(row[1],) for row in rows if row[3] is not None])
    return statements.store(conn, [OutgoingTask(row[1], row[2], row[3]) for row in rows if row[3] is not None])


def _purge_dead(conn: sqlite3.Connection) -> int:
    count: int = conn.execute("DELETE FROM dead").rowcount
    return count


def _delete_dead(conn: sqlite3.Connection, ids: list[str]) -> int:
    return sum(conn.execute("DELETE FROM dead WHERE id = ?", (task_id,)).rowcount for task_id in ids)


def _purge_queue(conn: sqlite3.Connection, queue: str) -> tuple[int, int]:
    statements.unlock(conn, [task_id for (task_id,) in conn.execute(
        "SELECT id FROM tasks WHERE state IN (?, ?) AND queue = ? AND length(id) = ?",
        (QUEUED, WAITING, queue, UNIQUE_ID_LENGTH))])
    pending = conn.execute("DELETE FROM tasks WHERE state = ? AND queue = ?", (QUEUED, queue)).rowcount
    waiting = conn.execute("DELETE FROM tasks WHERE state = ? AND queue = ?", (WAITING, queue)).rowcount
    # Rate limit cursors may point past tasks that are gone now: the next deferred task starts afresh.
    conn.execute("UPDATE rates SET cursor_us = 0")
    return pending, waiting


def _rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[Any]:
    return conn.execute(sql, params).fetchall()


class SqliteInspection:
    """A mixin of ``SqliteBroker``, which sets ``_db``."""

    _db: Database

    # -- inspection --------------------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        return self._db.read(_queue_stats, queues)

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        rows = self._db.read(_rows, f"SELECT id, queue, consumer, since_ms FROM tasks WHERE state = {OWNED} "
                                    "ORDER BY since_ms, pos LIMIT ?", max(limit, 0))
        return [InFlight(*row) for row in rows]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = self._db.read(_rows, f"SELECT {_DEAD_COLUMNS} FROM dead ORDER BY seq DESC LIMIT ?", max(limit, 0))
        return [_dead_letter(row) for row in rows]

    def dead_count(self) -> int:
        ((count,),) = self._db.read(_rows, "SELECT count(*) FROM dead")
        return int(count)

    def find_dead(self, task_id: str) -> list[DeadLetter]:
        rows = self._db.read(_rows, f"SELECT {_DEAD_COLUMNS} FROM dead WHERE id = ? ORDER BY seq DESC", task_id)
        return [_dead_letter(row) for row in rows]

    def workers(self) -> list[WorkerBeat]:
        rows = self._db.read(_rows, "SELECT worker_id, last_beat_ms, info FROM workers "
                                    "ORDER BY last_beat_ms DESC, worker_id DESC")
        return [WorkerBeat(*row) for row in rows]

    def tallies(self, from_ms: int, to_ms: int) -> list[MinuteTally]:
        minutes = tally_minutes(from_ms, to_ms)
        if not minutes:
            return []
        rows = self._db.read(_rows, "SELECT minute_ms, field, value FROM tally WHERE minute_ms BETWEEN ? AND ? "
                                    "ORDER BY minute_ms", minutes[0], minutes[-1])
        by_minute: dict[int, dict[str, dict[str, int]]] = {}
        for minute, field, value in rows:
            kind, _, queue = field.partition(":")
            kinds = by_minute.setdefault(minute, {"done": {}, "failed": {}, "pending": {}, "eta": {}})
            if kind in kinds and queue:
                kinds[kind][queue] = int(value)
        return [MinuteTally(minute, **kinds) for minute, kinds in by_minute.items()]

    # -- administration ----------------------------------------------------------------------------
    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        requeued = self._db.write(_requeue_dead, ids)
        if requeued:
            self._db.wake_waiters()
        return requeued

    def purge_dead(self) -> int:
        return self._db.write(_purge_dead)

    def delete_dead(self, ids: Sequence[str]) -> int:
        return self._db.write(_delete_dead, list(dict.fromkeys(ids))) if ids else 0

    def purge_queue(self, queue: str) -> tuple[int, int]:
        return self._db.write(_purge_queue, queue)
