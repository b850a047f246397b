"""SQLite errors translated into hexq's own at the port, each naming the database file and the fix.

- locked for longer than the busy timeout -> BrokerUnavailableError (retryable: workers back off and retry);
- disk full (or out of memory) -> BrokerFullError (nothing was stored; retryable);
- a transient I/O error -> BrokerUnavailableError;
- a missing or read-only folder, a file that is not a database, a corrupt one, a schema written by a newer
  hexq -> SqliteFileError, a ConfigError: waiting does not help, a person must fix the path or the file.
"""

from __future__ import annotations

import os
import sqlite3

from hexq.core.errors import BrokerFullError, BrokerUnavailableError, ConfigError

# Primary result codes (https://sqlite.org/rescode.html); extended codes carry them in the low byte.
_PERM, _BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _AUTH, _NOTADB = (
    3, 5, 6, 7, 8, 10, 11, 13, 14, 23, 26)


class SqliteFileError(ConfigError):
    """The database file cannot be used as it is (path, permissions, format): fix it, then restart."""


class SqliteSchemaError(SqliteFileError):
    """The database was written by a newer hexq (a later schema version) than this one."""


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()  # Python < 3.11 has no sqlite_errorcode: fall back on SQLite's fixed messages
    for needle, guess in (("locked", _BUSY), ("disk is full", _FULL), ("not a database", _NOTADB),
                          ("malformed", _CORRUPT), ("readonly", _READONLY), ("unable to open", _CANTOPEN),
                          ("disk i/o", _IOERR)):
        if needle in text:
            return guess
    return None


def folder_problem(path: str) -> str:
    """Why SQLite may not create or write ``path`` and its ``-wal``/``-shm`` files, and what to do."""
    folder = os.path.dirname(path) or "."
    root_hint = (" (sqlite:///name.db is the absolute path /name.db; for a path relative to the working directory "
                 "write sqlite:name.db)" if folder == "/" else "")
    if not os.path.exists(folder):
        return f"the folder {folder} does not exist: create it or fix the path{root_hint}"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder: fix the path"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"the folder {folder} is not writable by this user: SQLite creates {os.path.basename(path)}-wal and "
                f"-shm beside the database, so grant write access to the folder{root_hint}")
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return f"the file {path} is not readable and writable by this user: fix its permissions"
    return f"check that {folder} is writable and on a local file system{root_hint}"


def translate(exc: sqlite3.Error, path: str, busy_timeout: float) -> Exception | None:
    """The hexq error for ``exc`` on the database at ``path``, or None for a bug of ours (left as it is)."""
    code = _code(exc)
    detail = f"{type(exc).__name__}: {exc}"
    if code in (_BUSY, _LOCKED):
        return BrokerUnavailableError(
            f"the SQLite database {path} stayed locked by another connection for longer than the busy timeout "
            f"({busy_timeout:g} s) ({detail}); callers retry. If it persists, look for a process holding a "
            "long transaction on it, or raise busy_timeout")
    if code in (_FULL, _NOMEM):
        return BrokerFullError(
            f"the SQLite database {path} could not grow ({detail}); nothing was stored. Free disk space on its "
            "file system (or finish or purge queues); callers may retry later")
    if code in (_CANTOPEN, _READONLY, _PERM, _AUTH):
        return SqliteFileError(f"cannot write the SQLite database {path} ({detail}): {folder_problem(path)}")
    if code == _NOTADB:
        return SqliteFileError(
            f"{path} is not an SQLite database ({detail}): point the URL at a new file or at hexq's database, "
            "or move this file away")
    if code == _CORRUPT:
        return SqliteFileError(
            f"the SQLite database {path} is corrupt ({detail}): stop every hexq process using it, then restore "
            "it from a backup, or move it (with its -wal and -shm files) away to start empty; "
            "`sqlite3 FILE .recover` may save its tasks")
    if code == _IOERR:
        return BrokerUnavailableError(
            f"I/O error on the SQLite database {path} ({detail}); callers retry. Check the disk and that the "
            "file is on a local file system (SQLite's locking is unreliable on network file systems)")
    return None
