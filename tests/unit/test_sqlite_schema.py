"""The SQLite schema's versions: what a new database gets, which older ones are used as they are, and the
refusal of the others (the newer ones: test_sqlite_errors.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from hexq.adapters.sqlite import SqliteBroker, SqliteSchemaError
from hexq.adapters.sqlite.schema import SCHEMA_VERSION
from hexq.core.ports import DeadLetter, OutgoingTask
from hexq.core.queues import broadcast_queue

T0 = 1_700_000_000_000


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "hexq.db"


def open_at(path: Path) -> SqliteBroker:
    return SqliteBroker.from_url(f"sqlite://{path}")


def create(path: Path) -> None:
    broker = open_at(path)
    broker.lookup("a")  # the first call creates the layout
    broker.close()


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])


def as_written_by_version_1(path: Path) -> None:
    """Version 1's layout is version 2's plus the two broadcast tables (with a broadcast and a subscriber)."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE broadcasts (seq INTEGER PRIMARY KEY, payload TEXT NOT NULL);
            CREATE TABLE subscribers (id TEXT PRIMARY KEY, wake_path TEXT) WITHOUT ROWID;
            INSERT INTO broadcasts (payload) VALUES ('old');
            INSERT INTO subscribers VALUES ('1-abc', NULL);
            UPDATE meta SET value = 1 WHERE key = 'schema_version';
        """)


def test_a_new_database_has_this_version_and_no_broadcast_tables(path: Path) -> None:
    broker = open_at(path)
    broker.heartbeat("w1", "{}", T0)
    broker.close()
    assert SCHEMA_VERSION == 2 and version(path) == 2
    assert not {"broadcasts", "subscribers"} & tables(path)


def test_a_version_1_database_is_used_as_it_is(path: Path) -> None:
    create(path)
    as_written_by_version_1(path)
    broker = open_at(path)
    try:
        broker.heartbeat("w1", "{}", T0)
        assert broker.broadcast(OutgoingTask("b", "default", "hello"), T0) == 1
        (copy,) = broker.reserve("w1.0", [broadcast_queue("w1")], 10, T0, 1000).deliveries
        assert copy.payload == "hello"
        broker.forget_worker("w1")
    finally:
        broker.close()
    # Not migrated: a process of version 1 still running on the file keeps its tables and their rows.
    assert version(path) == 1 and {"broadcasts", "subscribers"} <= tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM broadcasts").fetchone()[0] == 1


def test_a_version_no_release_wrote_is_refused(path: Path) -> None:
    create(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = 0 WHERE key = 'schema_version'")
    with pytest.raises(SqliteSchemaError, match="schema version 0") as caught:
        open_at(path).lookup("a")
    assert str(path) in str(caught.value) and "versions 1 to 2" in str(caught.value)


def test_a_database_from_before_rate_limits_gets_their_table_when_opened(path: Path) -> None:
    from hexq.core.rate_limit import QueueRate, RateLimit, RateLimits

    create(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE rates")  # as hexq before rate limits wrote version 2
    assert "rates" not in tables(path)
    broker = open_at(path)
    broker.enqueue([OutgoingTask("a", "default", "p"), OutgoingTask("b", "default", "p")])
    rates = RateLimits(queues=(QueueRate("default", RateLimit.parse("1/s")),))
    assert [d.id for d in broker.reserve("c1", ["default"], 10, T0, 30_000, rates=rates).deliveries] == ["a"]
    assert broker.reserve("c1", ["default"], 10, T0, 30_000, rates=rates).deliveries == ()
    broker.close()
    assert "rates" in tables(path) and version(path) == SCHEMA_VERSION


def as_written_before_dead_tracebacks(path: Path) -> None:
    """The ``dead`` table as hexq wrote it before dead letters kept tracebacks (no ``traceback`` column), with
    a dead letter in it."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            DROP TABLE dead;
            CREATE TABLE dead (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, queue TEXT NOT NULL,
                               payload TEXT, reason TEXT NOT NULL, failed_at_ms INTEGER NOT NULL);
            CREATE INDEX dead_id ON dead (id);
            INSERT INTO dead (id, queue, payload, reason, failed_at_ms) VALUES ('old', 'default', 'p-old', 'raised', 1);
        """)


def dead_columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[1] for row in conn.execute("PRAGMA table_info(dead)")]


def test_a_new_database_has_the_dead_traceback_column(path: Path) -> None:
    create(path)
    assert dead_columns(path)[-1] == "traceback"


def test_a_database_from_before_dead_tracebacks_gets_the_column_when_opened(path: Path) -> None:
    create(path)
    as_written_before_dead_tracebacks(path)
    assert "traceback" not in dead_columns(path)
    broker = open_at(path)
    try:
        assert broker.dead_letters() == [DeadLetter("old", "default", "p-old", "raised", 1, "")]
        broker.enqueue([OutgoingTask("new", "default", "p-new")])
        broker.reserve("c1", ["default"], 10, T0, 30_000)
        broker.dead_letter("c1", "new", "default", "p-new", "raised", T0, traceback="Traceback ...\n")
        assert [(d.id, d.traceback) for d in broker.dead_letters()] == [("new", "Traceback ...\n"), ("old", "")]
        assert broker.find_dead("old")[0].traceback == ""
        assert broker.requeue_dead(["old"]) == 1 and broker.delete_dead(["new"]) == 1
        assert broker.dead_count() == 0 and broker.lookup("old") is not None
    finally:
        broker.close()
    assert dead_columns(path)[-1] == "traceback" and version(path) == SCHEMA_VERSION


def test_a_database_opened_twice_adds_the_column_once(path: Path) -> None:
    create(path)
    as_written_before_dead_tracebacks(path)
    first, second = open_at(path), open_at(path)
    try:
        assert first.dead_count() == 1 and second.dead_count() == 1  # the second open finds it added
    finally:
        first.close()
        second.close()
    assert dead_columns(path).count("traceback") == 1
