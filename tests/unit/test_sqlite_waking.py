"""Waiting and broadcast across processes on one SQLite file: wake-ups, liveness of subscribers, stale
sockets, polling when no wake-up folder can be used, and cron ticks claimed once by racing processes."""

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


def open_at(path: Path) -> SqliteBroker:
    return SqliteBroker.from_url(f"sqlite://{path}")


def test_a_subscriber_that_died_without_closing_is_not_counted(tmp_path: Path) -> None:
    broker = open_at(tmp_path / "b.db")
    try:
        live = broker.subscribe_broadcast()
        pid = os.fork()
        if pid == 0:
            open_at(tmp_path / "b.db").subscribe_broadcast()
            os._exit(0)  # killed, as it were: its subscription is never closed
        os.waitpid(pid, 0)
        assert broker.publish_broadcast("first") == 1  # the dead one's socket is refused
        assert live.get(2.0) == "first"
        assert broker.publish_broadcast("second") == 1
        live.close()
        assert broker.publish_broadcast("third") == 0
    finally:
        broker.close()


def test_a_subscriber_in_another_process_gets_each_broadcast_once_in_order(tmp_path: Path) -> None:
    broker = open_at(tmp_path / "b.db")
    read, write = os.pipe()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            subscription = open_at(tmp_path / "b.db").subscribe_broadcast()
            os.write(ready_write, b"!")
            got = [subscription.get(5.0) for _ in range(3)]
            got.append(subscription.get(0.2))
            os.write(write, repr(got).encode())
        finally:
            os._exit(0)
    try:
        os.read(ready_read, 1)
        assert [broker.publish_broadcast(p) for p in ("a", "b", "c")] == [1, 1, 1]
        os.close(write)
        with os.fdopen(read) as answer:
            assert answer.read() == repr(["a", "b", "c", None])
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
