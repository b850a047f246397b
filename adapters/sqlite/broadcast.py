"""Broadcasts on SQLite: a table of payloads numbered by a sequence, read by each subscription from the
sequence number it subscribed at, so every subscription gets each later payload once, in order.

A subscription registers itself (``subscribers``) with the path of a datagram socket it holds for its whole
life. ``publish`` stores the payload, then sends a byte to each registered socket: that wakes the
subscriber at once, and a socket refused (nobody holds it: the process died without closing) shows a dead
subscriber, whose row is removed and which is not counted. Subscribers without a socket (the wake-up folder
was not usable) are counted while registered. Only the last ``BROADCASTS_KEPT`` payloads are kept.
"""

from __future__ import annotations

import os
import sqlite3
from typing import TYPE_CHECKING

from hexq.adapters.sqlite.schema import BROADCASTS_KEPT
from hexq.core.message import stored_text as text

if TYPE_CHECKING:
    from hexq.adapters.sqlite.database import Database

_NEXT = "SELECT seq, CAST(payload AS BLOB) FROM broadcasts WHERE seq > ? ORDER BY seq LIMIT 1"


def _publish(conn: sqlite3.Connection, payload: str) -> list[tuple[str, str | None]]:
    seq = conn.execute("INSERT INTO broadcasts (payload) VALUES (?)", (payload,)).lastrowid
    assert seq is not None
    conn.execute("DELETE FROM broadcasts WHERE seq <= ?", (seq - BROADCASTS_KEPT,))
    return conn.execute("SELECT id, wake_path FROM subscribers").fetchall()


def _forget(conn: sqlite3.Connection, ids: list[str]) -> None:
    conn.executemany("DELETE FROM subscribers WHERE id = ?", [(i,) for i in ids])


def _subscribe(conn: sqlite3.Connection, subscriber: str, wake_path: str | None) -> int:
    conn.execute("INSERT INTO subscribers (id, wake_path) VALUES (?, ?)", (subscriber, wake_path))
    cursor: int = conn.execute("SELECT coalesce(max(seq), 0) FROM broadcasts").fetchone()[0]
    return cursor


def publish(db: Database, payload: str) -> int:
    """Store ``payload`` for every subscription; returns how many live subscribers there are."""
    subscribers = db.write(_publish, payload)
    dead = [sid for sid, path in subscribers if path is not None and not db.poke(path)]
    if dead:
        db.write(_forget, dead)
    return len(subscribers) - len(dead)


class SqliteSubscription:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._listener = db.listener("b")
        self._id = f"{os.getpid()}-{os.urandom(8).hex()}"
        try:
            self._cursor = db.write(_subscribe, self._id, None if self._listener is None else self._listener.path)
        except BaseException:
            if self._listener is not None:
                self._listener.close()
            raise
        self._found: tuple[int, bytes] | None = None

    def _ready(self, conn: sqlite3.Connection) -> bool:
        self._found = conn.execute(_NEXT, (self._cursor,)).fetchone()
        return self._found is not None

    def get(self, timeout: float) -> str | bytes | None:
        self._db.wait(self._ready, timeout, self._listener)
        found, self._found = self._found, None
        if found is None:
            return None
        self._cursor = found[0]
        return text(found[1])

    def close(self) -> None:
        try:
            self._db.write(_forget, [self._id])
        finally:
            if self._listener is not None:
                self._listener.close()
