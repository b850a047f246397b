"""The SQLite layout of a hexq broker and its versioning. This module is the only place it is written.

One row per stored task, whatever its state, so that every state change is an UPDATE of one row and
enqueue is one INSERT. ``pos`` orders a queue: taking from the head is the smallest ``pos``; the tail gets
the queue's largest ``pos`` + 1, the head its smallest - 1 (read from the ``tasks_queued`` index, which the
same statement writes anyway: no counter row to rewrite in every transaction). An owned task keeps its
``pos``; a consumer's tasks sort by (``since_ms``, ``pos``), reservation order, which is the order recovery
puts them back in. Every transaction writes as few pages as it can, since each page written is a WAL frame.

=============  =============================================================================================
table          rows
=============  =============================================================================================
meta           ``schema_version`` (and any later key): refused when newer than this code's
tasks          id, queue, state (0 queued, 1 waiting for its eta, 2 owned), pos, payload (NULL after a late
               ack), crashes, eta_ms and dedup_key (waiting), consumer and since_ms (owned)
leases         consumer -> lease deadline ms, and when it was first seen expired (NULL: not suspected);
               no index on the deadline: a reservation scans the few leases (one per worker child) instead
               of rewriting an index page each time it extends one
dead           dead letters, ``seq`` ascending = oldest first; ``traceback`` is the failure's ('' when none;
               an added column, see "Additions")
cron           schedule key -> last fired tick ms
workers        worker id -> last heartbeat ms and info JSON (a broadcast is copied into the private queue,
               in ``tasks``, of each worker whose heartbeat is recent)
expired        queue -> how many of its tasks were dropped unrun because their deadline had passed
uniques        a unique task's lock (``hexq.core.unique``): lock key -> the task id holding it and until when
               (ms); deleted when that task is acknowledged, dead-lettered or purged; an expired one, or one
               whose task is gone, is overwritten by the next task that takes the lock
cancel_requests  id of an owned task whose cancellation is pending (``statements.cancel``), until it ends, with
               the outcome to keep when it is dropped (ttl_ms, document, finished_ms; NULL: none). (An
               empty ``cancels`` table, its first form without the outcome, may remain: nothing reads it.)
rates          rate limit key (``t:<task>``, ``q:<queue>``) -> its TAT and cursor in epoch microseconds
               (``hexq.core.rate_limit``); written only by workers that enforce rate limits
results        task id -> its kept outcome (JSON, ``keep_result``) and when it expires (ms); expired rows are
               never read, and are deleted in bounded batches by the writes of new ones and by heartbeats
=============  =============================================================================================

Indexes are partial, one per state, so each hot query is a range scan of exactly the rows it wants:
``tasks_queued (queue, pos) WHERE state = 0`` (take from the head, count), ``tasks_waiting (queue, eta_ms,
id) WHERE state = 1`` (due tasks in eta order, the next eta), ``tasks_dedup UNIQUE (queue, dedup_key) WHERE
state = 1`` (one waiting task per key), ``tasks_owned (consumer, since_ms, pos) WHERE state = 2`` (a consumer's tasks
in reservation order); plus ``dead_id``, ``workers_beat`` and ``results_expiry``.

Versions. 1 had two more tables, ``broadcasts`` (payloads by sequence number) and ``subscribers`` (each
worker parent's subscription, which copied every broadcast into its queue). 2 drops them: ``broadcast``
writes the copies itself (``statements.broadcast``). A version 1 database is used as it is, not migrated:
this code never reads those tables, and a process of the previous hexq still running on the file during an
upgrade keeps working (its broadcasts reach only the workers of its own version, which read them; copies
sent by this version reach both). A new database is version 2, which the previous hexq refuses with the
message below (it would look for the tables). Once no process of version 1 is left, the two tables may be
dropped by hand (``DROP TABLE broadcasts; DROP TABLE subscribers;``) and ``schema_version`` set to 2.

Additions. A table that only new code reads or writes (``ADDED_TABLES``) is created, if missing, in a
database of any usable version without changing its version: a process of the previous hexq on the same
file neither knows nor minds it, so nothing has to be upgraded in step. Likewise a column that only new code
reads or writes (``ADDED_COLUMNS``), with a default: added, if missing, by ``ALTER TABLE ... ADD COLUMN``;
the previous hexq names the columns it inserts and selects, so it never sees it, and its rows get the default.
"""

from __future__ import annotations

import sqlite3

from hexq.adapters.sqlite.errors import SqliteSchemaError

SCHEMA_VERSION = 2
OLDEST_USABLE_VERSION = 1  # version 1 only has two more tables that this version ignores
QUEUED, WAITING, OWNED = 0, 1, 2
MIN_SQLITE = (3, 35, 0)  # upserts with several ON CONFLICT clauses

_DDL = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    state INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    payload TEXT,
    crashes INTEGER NOT NULL DEFAULT 0,
    eta_ms INTEGER,
    dedup_key TEXT,
    consumer TEXT,
    since_ms INTEGER
);
CREATE INDEX tasks_queued ON tasks (queue, pos) WHERE state = {QUEUED};
CREATE INDEX tasks_waiting ON tasks (queue, eta_ms, id) WHERE state = {WAITING};
CREATE UNIQUE INDEX tasks_dedup ON tasks (queue, dedup_key) WHERE state = {WAITING} AND dedup_key IS NOT NULL;
CREATE INDEX tasks_owned ON tasks (consumer, since_ms, pos) WHERE state = {OWNED};
CREATE TABLE leases (consumer TEXT PRIMARY KEY, until_ms INTEGER NOT NULL, suspected_ms INTEGER) WITHOUT ROWID;
CREATE TABLE dead (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, queue TEXT NOT NULL, payload TEXT,
                   reason TEXT NOT NULL, failed_at_ms INTEGER NOT NULL, traceback TEXT NOT NULL DEFAULT '');
CREATE INDEX dead_id ON dead (id);
CREATE TABLE cron (schedule_key TEXT PRIMARY KEY, last_fire_ms INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE workers (worker_id TEXT PRIMARY KEY, last_beat_ms INTEGER NOT NULL, info TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX workers_beat ON workers (last_beat_ms);
INSERT INTO meta VALUES ('schema_version', {SCHEMA_VERSION});
"""
# Added after version 2 (see "Additions" above): table name -> its DDL.
ADDED_TABLES = {
    "expired": "CREATE TABLE IF NOT EXISTS expired (queue TEXT PRIMARY KEY, count INTEGER NOT NULL) WITHOUT ROWID",
    "uniques": ("CREATE TABLE IF NOT EXISTS uniques (lock TEXT PRIMARY KEY, task_id TEXT NOT NULL, "
                "until_ms INTEGER NOT NULL) WITHOUT ROWID"),
    "cancel_requests": ("CREATE TABLE IF NOT EXISTS cancel_requests (id TEXT PRIMARY KEY, ttl_ms INTEGER, "
                        "document TEXT, finished_ms INTEGER) WITHOUT ROWID"),
    "rates": ("CREATE TABLE IF NOT EXISTS rates (key TEXT PRIMARY KEY, tat_us INTEGER NOT NULL, "
              "cursor_us INTEGER NOT NULL) WITHOUT ROWID"),
    "results": ("CREATE TABLE IF NOT EXISTS results (id TEXT PRIMARY KEY, document TEXT NOT NULL, "
                "expires_ms INTEGER NOT NULL) WITHOUT ROWID;"
                "CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_ms)"),
    # The dashboard's per-minute counters (MinuteTally): field is '<kind>:<queue>' as on Redis.
    "tally": ("CREATE TABLE IF NOT EXISTS tally (minute_ms INTEGER NOT NULL, field TEXT NOT NULL, "
              "value INTEGER NOT NULL, PRIMARY KEY (minute_ms, field)) WITHOUT ROWID"),
}

# Added after version 2 (see "Additions" above): (table, column) -> the statement that adds it.
ADDED_COLUMNS = {
    # The failure's traceback, kept with the dead letter (hexq.core.tracebacks).
    ("dead", "traceback"): "ALTER TABLE dead ADD COLUMN traceback TEXT NOT NULL DEFAULT ''",
}


def stored_version(conn: sqlite3.Connection) -> int | None:
    """The schema version written in the database, or None for an empty database."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone() is None:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return None if row is None else int(row[0])


def ensure_schema(conn: sqlite3.Connection, path: str) -> None:
    """Create the layout in an empty database, accept this version and the older ones it can use as they are
    (see the module docstring), refuse a newer one. Runs once per connection; the creation is one
    transaction, so racing processes create it once."""
    version = stored_version(conn)
    if version is None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if stored_version(conn) is None:
                for statement in _DDL.split(";\n"):
                    if statement.strip():
                        conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = stored_version(conn)
    if version is not None and version > SCHEMA_VERSION:
        raise SqliteSchemaError(
            f"the SQLite database {path} has schema version {version}, written by a newer hexq than this one "
            f"(which knows version {SCHEMA_VERSION}): upgrade hexq in every process that uses it, or point this "
            "one at another database file")
    if version is not None and version < OLDEST_USABLE_VERSION:
        raise SqliteSchemaError(
            f"the SQLite database {path} has schema version {version}, which no hexq release wrote and this one "
            f"cannot use (it uses versions {OLDEST_USABLE_VERSION} to {SCHEMA_VERSION}): point hexq at another "
            "database file")
    _add_missing_tables(conn)
    _add_missing_columns(conn)


def _add_missing_tables(conn: sqlite3.Connection) -> None:
    """Create the ``ADDED_TABLES`` this database lacks, in one transaction (racing processes create each once)."""
    present = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if present.issuperset(ADDED_TABLES):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statements in ADDED_TABLES.values():
            for statement in statements.split(";"):  # a table and its indexes
                conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _missing_columns(conn: sqlite3.Connection) -> list[str]:
    return [statement for (table, column), statement in ADDED_COLUMNS.items()
            if column not in {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}]


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Add the ``ADDED_COLUMNS`` this database lacks, in one transaction; looked for again inside it, since
    ADD COLUMN has no IF NOT EXISTS and a racing process may have added them meanwhile."""
    if not _missing_columns(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _missing_columns(conn):
            conn.execute(statement)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
