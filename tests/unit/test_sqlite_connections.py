"""Connections of the SQLite broker: one per thread and process, opened lazily, freed with their thread."""

from __future__ import annotations

import gc
import os
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
