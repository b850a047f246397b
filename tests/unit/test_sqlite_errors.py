"""SQLite failures reach callers as hexq's own errors, each naming the database file and the fix."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hexq.adapters.sqlite import SqliteBroker, SqliteFileError, SqliteSchemaError, SqliteSettings
from hexq.adapters.sqlite.errors import folder_problem
from hexq.core.errors import BrokerError, BrokerFullError, BrokerUnavailableError, ConfigError
from hexq.core.ports import OutgoingTask


@pytest.fixture
def open_broker() -> Iterator[Callable[..., SqliteBroker]]:
    made: list[SqliteBroker] = []

    def build(path: str | Path, **options: float) -> SqliteBroker:
        made.append(SqliteBroker.from_settings(SqliteSettings(str(path), **options)))  # type: ignore[arg-type]
        return made[-1]

    yield build
    for broker in made:
        broker.close()


def one_task(task_id: str = "a", payload: str = "p") -> list[OutgoingTask]:
    return [OutgoingTask(task_id, "default", payload)]


def test_a_lock_held_past_the_busy_timeout_is_a_retryable_unavailable_error(
        tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    path = tmp_path / "locked.db"
    broker = open_broker(path, busy_timeout=0.1)
    broker.enqueue(one_task("first"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BrokerUnavailableError, match=str(path)) as caught:
            broker.enqueue(one_task("second"))
        assert isinstance(caught.value, ConnectionError)  # what the worker's retry logic catches
        assert "busy timeout (0.1 s)" in str(caught.value)
        assert broker.lookup("first") is not None  # reads are not blocked by the writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    broker.enqueue(one_task("second"))  # nothing was half-done: it works once the lock is gone
    assert broker.queue_stats(["default"])[0].pending == 2


def test_a_full_disk_is_a_broker_full_error_and_stores_nothing(
        tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    path = tmp_path / "full.db"
    broker = open_broker(path)
    broker.enqueue(one_task("small"))
    conn = sqlite3.connect(path)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    # The broker's own connection: SQLite answers a write past max_page_count exactly as a full disk.
    broker._db.connection().execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]
    with pytest.raises(BrokerFullError, match="could not grow") as caught:
        broker.enqueue([OutgoingTask(f"big{i}", "default", "x" * 4000) for i in range(50)])
    assert str(path) in str(caught.value) and "Free disk space" in str(caught.value)
    assert broker.queue_stats(["default"])[0].pending == 1
    assert broker.lookup("big0") is None


def test_a_missing_folder_names_the_folder(tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    broker = open_broker(tmp_path / "nowhere" / "hexq.db")
    with pytest.raises(SqliteFileError, match="does not exist: create it") as caught:
        broker.enqueue(one_task())
    assert str(tmp_path / "nowhere") in str(caught.value)
    assert isinstance(caught.value, ConfigError) and not isinstance(caught.value, BrokerError)


def test_a_database_at_the_root_hints_at_the_relative_spelling() -> None:
    # sqlite:///hexq.db is /hexq.db, not ./hexq.db as in SQLAlchemy: whatever goes wrong there says so.
    assert "for a path relative to the working directory write sqlite:name.db" in folder_problem("/x.db")
    assert "sqlite:name.db" not in folder_problem("/no-such-dir-for-hexq/x.db")


def test_a_folder_path_is_refused(tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    with pytest.raises(SqliteFileError, match="is a folder"):
        open_broker(tmp_path).enqueue(one_task())


def _in_a_read_only_folder() -> str:
    """Open a broker in a folder this user may not write; returns the error text (as nobody when root)."""
    base = tempfile.mkdtemp()
    os.chmod(base, 0o755)
    folder = os.path.join(base, "ro")
    os.mkdir(folder, 0o555)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            broker = SqliteBroker.from_settings(SqliteSettings(os.path.join(folder, "hexq.db")))
            try:
                broker.enqueue(one_task())
                message = "no error"
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as answer:
        return answer.read()


def test_a_read_only_folder_says_the_folder_must_be_writable() -> None:
    message = _in_a_read_only_folder()
    assert message.startswith("SqliteFileError: cannot write the SQLite database"), message
    assert "is not writable by this user" in message and "-wal" in message


def test_a_file_that_is_not_a_database(tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database" * 200)
    with pytest.raises(SqliteFileError, match="is not an SQLite database") as caught:
        open_broker(path).enqueue(one_task())
    assert str(path) in str(caught.value) and "point the URL at a new file" in str(caught.value)


def test_a_corrupt_database_says_how_to_recover(tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    path = tmp_path / "corrupt.db"
    writer = open_broker(path)
    writer.enqueue([OutgoingTask(f"t{i}", "default", "x" * 300) for i in range(200)])
    writer.close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as raw:  # every page but the first (the schema) becomes garbage
        raw.seek(page_size)
        raw.write(b"\xa5" * (os.path.getsize(path) - page_size))
    with pytest.raises(SqliteFileError, match="is corrupt") as caught:
        open_broker(path).reserve("c1", ["default"], 10, 0, 1000)
    assert str(path) in str(caught.value) and "restore" in str(caught.value)


def test_a_database_written_by_a_newer_schema_is_refused(
        tmp_path: Path, open_broker: Callable[..., SqliteBroker]) -> None:
    path = tmp_path / "newer.db"
    open_broker(path).enqueue(one_task())
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(SqliteSchemaError, match="schema version 99") as caught:
        open_broker(path).lookup("a")
    assert "upgrade hexq" in str(caught.value) and isinstance(caught.value, ConfigError)
