"""Waiting across processes on one SQLite file: wake-ups (by tasks and by broadcasts), stale sockets, polling
when no wake-up folder can be used, and cron ticks claimed once by racing processes."""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

from broker_contract import LEASE, T0, ids, take, task

from hexq.adapters.sqlite import SqliteBroker
from hexq.adapters.sqlite.waking import CommitProbe, wake_folder
from hexq.core.queues import broadcast_queue


def open_at(path: Path) -> SqliteBroker:
    return SqliteBroker.from_url(f"sqlite://{path}")


def test_a_broadcast_wakes_a_worker_child_waiting_in_another_process(tmp_path: Path) -> None:
    broker = open_at(tmp_path / "b.db")
    broker.heartbeat("w1", "{}", T0)
    read, write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            child = open_at(tmp_path / "b.db")
            os.write(ready_write, b"!")
            began = time.monotonic()
            got = child.reserve("w1.0", [broadcast_queue("w1")], 10, T0, LEASE, wait=5.0).deliveries
            os.write(write, repr(([d.payload for d in got], time.monotonic() - began < 2.0)).encode())
        finally:
            os._exit(0)
    try:
        os.read(ready_read, 1)
        time.sleep(0.1)  # waiting
        assert broker.broadcast(task("b", payload="hello"), T0) == 1
        os.close(write)
        with os.fdopen(read) as answer:
            assert answer.read() == repr((["hello"], True))
    finally:
        os.waitpid(pid, 0)
        broker.close()


def test_a_stale_waiter_socket_is_removed_by_the_next_producer(tmp_path: Path) -> None:
    broker = open_at(tmp_path / "w.db")
    try:
        broker.enqueue([task("first")])  # creates the wake-up folder
        stale = os.path.join(wake_folder(str(tmp_path / "w.db")), "t-99999-0-abc")
        left_behind = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        left_behind.bind(stale)
        left_behind.close()  # its process died while waiting: the file stays, nobody holds it
        broker.enqueue([task("second")])
        assert not os.path.exists(stale)
    finally:
        broker.close()


def test_waiting_polls_when_no_wake_up_folder_can_be_made(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    Path(wake_folder(str(path))).write_text("a file where the folder would go")
    broker, producer = open_at(path), open_at(path)
    try:
        take(broker)
        timer = threading.Timer(0.2, lambda: producer.enqueue([task("late")]))
        timer.start()
        started = time.monotonic()
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries
        timer.join()
        assert [d.id for d in got] == ["late"]
        assert time.monotonic() - started < 1.0
    finally:
        broker.close()
        producer.close()


def test_the_commit_probe_changes_with_every_commit_of_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "probe.db"
    broker = open_at(path)
    try:
        broker.queue_stats([])  # opens the database: WAL and its -shm exist from here
        reader = sqlite3.connect(path, isolation_level=None)
        probe = CommitProbe(str(path))
        before = probe.token(reader)
        assert probe.token(reader) == before
        broker.enqueue([task("a")])
        assert probe.token(reader) != before
        reader.close()
        probe.close()
    finally:
        broker.close()


def _claim_ticks(path: Path) -> None:
    broker = open_at(path)
    for tick in range(20):
        broker.claim_cron_tick("every-minute", T0 + tick * 60_000, task(f"tick{tick}-by-{os.getpid()}"))
    broker.close()


def test_racing_schedulers_in_separate_processes_fire_each_tick_once(tmp_path: Path) -> None:
    path = tmp_path / "cron.db"
    broker = open_at(path)
    try:
        broker.queue_stats([])
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                try:
                    _claim_ticks(path)
                finally:
                    os._exit(0)
            pids.append(pid)
        for pid in pids:
            assert os.waitpid(pid, 0)[1] == 0
        fired = ids(take(broker, limit=1000))
        assert sorted(int(name.split("-")[0][4:]) for name in fired) == list(range(20))
        assert broker.last_cron_tick("every-minute") == T0 + 19 * 60_000
    finally:
        broker.close()
