"""Connections of the SQLite broker: one per thread and process, opened lazily, freed with their thread."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from pathlib import Path

from broker_contract import ids, take, task

from hexq.adapters.sqlite import SqliteBroker


def open_files(path: Path) -> int:
    """How many descriptors of this process point at the database file."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}") == str(path)
        except OSError:
            pass
    return count


def test_nothing_is_opened_before_the_first_call(tmp_path: Path) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{tmp_path / 'lazy.db'}")
    assert not (tmp_path / "lazy.db").exists()
    broker.enqueue([task("a")])
    assert (tmp_path / "lazy.db").exists()
    broker.close()


def test_each_thread_has_its_own_connection_and_hands_it_on_when_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "threads.db"
    broker = SqliteBroker.from_url(f"sqlite://{path}")
    try:
        broker.enqueue([task("main")])
        assert open_files(path) == 1

        def produce(index: int) -> None:
            broker.enqueue([task(f"t{index}")])

        for batch in range(3):
            threads = [threading.Thread(target=produce, args=(batch * 10 + i,)) for i in range(10)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        gc.collect()
        assert open_files(path) <= 11  # ten at a time: later threads took over the connections of ended ones
        assert sorted(ids(take(broker))) == sorted(["main", *(f"t{i}" for i in range(30))])
    finally:
        broker.close()
    assert open_files(path) == 0


def test_a_closed_broker_reopens_if_used_again(tmp_path: Path) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{tmp_path / 'again.db'}")
    broker.enqueue([task("a")])
    broker.close()
    assert ids(take(broker)) == ["a"]
    broker.close()


def test_a_new_file_held_by_another_connection_is_switched_to_wal_once_it_is_free(tmp_path: Path) -> None:
    # SQLite answers "database is locked" at once, without its busy timeout, when a file still in the default
    # (rollback) journal mode cannot be switched to WAL because another connection is writing it (seen in CI:
    # processes opening one new file together, on Python 3.13).
    path = tmp_path / "held.db"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE other (x)")
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("INSERT INTO other VALUES (1)")  # a reserved lock, in the rollback journal mode
    release = threading.Timer(0.3, holder.execute, ("COMMIT",))
    release.start()
    broker = SqliteBroker.from_url(f"sqlite://{path}")
    try:
        broker.enqueue([task("waited")])
        assert ids(take(broker)) == ["waited"]
        fresh = sqlite3.connect(path)
        assert fresh.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        fresh.close()
    finally:
        release.join()
        broker.close()
        holder.close()
