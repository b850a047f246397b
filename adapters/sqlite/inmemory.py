"""The in-memory database behind ``memory://``: the same schema and rules as a database file, for the
threads of one process."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Concatenate

from hexq.adapters.sqlite.database import P, Ready, T, transact
from hexq.adapters.sqlite.schema import ensure_schema

_template: tuple[int, sqlite3.Connection] | None = None
_template_lock = threading.Lock()


def _copy_blank_schema(conn: sqlite3.Connection) -> None:
    """An empty layout, copied from a template built once per process: a copy takes a tenth of the time of
    running the DDL, and the unit tests build a MemoryBroker for nearly every test."""
    global _template
    with _template_lock:
        if _template is None or _template[0] != os.getpid():
            blank = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            ensure_schema(blank, ":memory:")
            _template = (os.getpid(), blank)
        _template[1].backup(conn)


class MemoryDatabase:
    """One in-memory database for one process: a single connection behind a condition variable, used by
    any thread (``check_same_thread=False``); every transaction holds the lock throughout, and each commit
    wakes the waiting calls."""

    where = "memory://"
    path = ":memory:"

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False,
                                     cached_statements=256)
        _copy_blank_schema(self._conn)

    def write(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._cond:
            result = transact(self._conn, "BEGIN IMMEDIATE", work, *args, **kwargs)
            self._cond.notify_all()
            return result

    def read(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        with self._cond:
            return work(self._conn, *args, **kwargs)

    def wake_waiters(self) -> None:
        return None  # every commit already notified the condition

    def checkpoint(self) -> None:
        return None

    def wait(self, ready: Ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not ready(self._conn):
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def close(self) -> None:
        return None  # the data lives as long as the broker object; closing would lose it under a live caller
