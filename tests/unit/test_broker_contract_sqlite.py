"""The broker contract against SqliteBroker on a database file, and what only a file shared by processes
can show: a second broker on the same file, forked children and separate processes."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker_contract import LEASE, T0, BrokerContract, MakeBroker, broker_factory, ids, take, task

from hexq.adapters.sqlite import SqliteBroker, SqliteSettings
from hexq.core.ports import QueueStats


class TestSqliteBroker(BrokerContract):
    @pytest.fixture
    def make_broker(self, tmp_path: Path) -> Iterator[MakeBroker]:
        yield from broker_factory(lambda rules: SqliteBroker.from_settings(SqliteSettings(str(tmp_path / "hexq.db")),
                                                                           rules=rules))


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "shared.db")


def test_a_second_broker_on_the_same_file_sees_the_first_ones_tasks(db_path: str) -> None:
    first, second = SqliteBroker.from_url(f"sqlite://{db_path}"), SqliteBroker.from_url(f"sqlite://{db_path}")
    try:
        first.enqueue([task("a"), task("b")])
        assert ids(take(second, limit=1)) == ["a"]
        assert [r.id for r in first.in_flight()] == ["a"]
        second.ack("c1", ["a"])
        assert ids(take(first)) == ["b"]
    finally:
        first.close()
        second.close()


def test_forked_children_share_the_database_without_using_the_parents_connection(db_path: str) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{db_path}")
    try:
        broker.enqueue([task(f"t{i}", "work") for i in range(40)])
        assert broker.queue_stats(["work"])[0].pending == 40  # the parent's connection is open
        children = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:  # the child reuses the parent's broker object: it must open its own connection
                try:
                    got = take(broker, "work", limit=10, consumer=f"child-{os.getpid()}")
                    broker.enqueue([task(f"from-{d.id}", "replies") for d in got])
                    broker.ack(f"child-{os.getpid()}", [d.id for d in got])
                finally:
                    os._exit(0)
            children.append(pid)
        for pid in children:
            assert os.waitpid(pid, 0)[1] == 0
        replies = take(broker, "replies")
        assert sorted(d.id for d in replies) == sorted(f"from-t{i}" for i in range(40))
        assert broker.queue_stats(["work"]) == [QueueStats("work", 0, 0, 0)]
        broker.enqueue([task("after")])  # the parent's own connection still works after the forks
        assert ids(take(broker)) == ["after"]
    finally:
        broker.close()


def test_separate_processes_each_take_distinct_tasks(db_path: str) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{db_path}")
    try:
        broker.enqueue([task(f"t{i}", "work") for i in range(200)])
        context = multiprocessing.get_context("spawn")
        workers = [context.Process(target=_drain, args=(db_path,)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
            assert worker.exitcode == 0
        replies = take(broker, "replies", limit=1000)
        assert sorted(d.id for d in replies) == sorted(f"from-t{i}" for i in range(200))  # each exactly once
    finally:
        broker.close()


def _drain(db_path: str) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{db_path}")
    consumer = f"proc-{os.getpid()}"
    acks: list[str] = []
    while True:
        got = list(broker.reserve(consumer, ["work"], 3, T0, LEASE, acks).deliveries)
        if not got:
            break
        broker.enqueue([task(f"from-{d.id}", "replies") for d in got])
        acks = [d.id for d in got]
    broker.close()


def test_a_waiting_reservation_in_one_process_wakes_for_a_task_enqueued_by_another(db_path: str) -> None:
    broker = SqliteBroker.from_url(f"sqlite://{db_path}")
    try:
        take(broker)  # create the database before the child opens it
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(0.3)
                SqliteBroker.from_url(f"sqlite://{db_path}").enqueue([task("late")])
            finally:
                os._exit(0)
        started = time.monotonic()
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries
        waited = time.monotonic() - started
        os.waitpid(pid, 0)
        assert [d.id for d in got] == ["late"]
        assert 0.2 < waited < 2.0
    finally:
        broker.close()
