"""Connections and transactions: a database file shared by processes (``FileDatabase``) or an in-memory
database shared by the threads of one process (``MemoryDatabase`` in ``inmemory.py``, behind
``memory://``). The broker's rules are written once, as SQL over a connection (``statements.py``), and run
inside either.

File databases:

- **WAL**, so readers (inspection, waiting, lookups) never block the writer and the writer never blocks them;
- **synchronous=NORMAL** by default: under WAL a commit is written to the WAL file but not fsync'ed; the WAL
  is fsync'ed at checkpoints. A crash of any *process* loses nothing (the OS has the data); a power cut or
  kernel crash may lose the last commits before the latest checkpoint, never corrupt the file. FULL would
  fsync on every commit: each ``.delay()`` would then wait for the disk (milliseconds on most disks, so a few
  hundred enqueues a second), for a guarantee the Redis broker does not give either (its default AOF fsync is
  once a second). ``SqliteSettings(synchronous="FULL")`` or ``?synchronous=FULL`` chooses it;
- every write is one ``BEGIN IMMEDIATE`` transaction: it takes the write lock at the start, so two writers
  never both read and then deadlock upgrading; a writer waits for the lock up to the busy timeout, then the
  call fails with BrokerUnavailableError;
- checkpoints (copying the WAL into the database file, with an fsync under NORMAL) are taken off the
  producers' path: SQLite would run one inside every ~300th commit, stalling that ``.delay()`` for
  milliseconds (hundreds under I/O pressure). Instead every worker parent's heartbeat runs a PASSIVE
  checkpoint (which waits for nobody) once a second, and the automatic one is left only as a backstop, at
  ``AUTOCHECKPOINT_PAGES`` (the WAL then stays under ~40 MB even with no worker running);
- connections are opened lazily, one per thread (``threading.local``) and per process: a connection found
  in a forked child (``os.getpid()`` changed) is never used nor closed there, since SQLite forbids carrying
  a connection across ``fork``; it is set aside and a new one opened. Each process logs the absolute path
  at INFO the first time it opens the database.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from typing import Concatenate, NoReturn, ParamSpec, Protocol, TypeVar

from hexq.adapters.sqlite.errors import SqliteFileError, translate
from hexq.adapters.sqlite.schema import MIN_SQLITE, ensure_schema
from hexq.adapters.sqlite.settings import SqliteSettings
from hexq.adapters.sqlite.waking import CommitProbe, Waker

log = logging.getLogger("hexq.sqlite")

P = ParamSpec("P")
T = TypeVar("T")
Ready = Callable[[sqlite3.Connection], bool]

# Connections inherited through fork: kept referenced so that garbage collection never closes them in
# the child (closing one may release or disturb the parent's locks).
_INHERITED: list[sqlite3.Connection] = []


class _Connection(sqlite3.Connection):
    """A connection that knows the process and the broker generation (closes so far) it was opened in, and
    can be weakly referenced."""

    opened_by: int
    generation: int


class _Slot:
    """A thread's hold on its connection, kept in a ``threading.local``: when the thread ends, the slot is
    freed and a finalizer hands the connection to the next thread that needs one."""

    __slots__ = ("__weakref__", "conn")

    def __init__(self, conn: _Connection) -> None:
        self.conn = conn

AUTOCHECKPOINT_PAGES = 10_000
_ANNOUNCED: set[tuple[int, str]] = set()
_WAL_RETRY_S = 0.005


def _wal_mode(conn: sqlite3.Connection, timeout: float) -> str:
    """Switch the file to WAL (a no-op when it already is), and return the journal mode it is in.

    Switching a file still in the rollback journal mode needs an exclusive lock. While another connection (of
    this process or another, setting up the same new file) holds that file's write lock, SQLite does not wait
    with the busy timeout: it answers "database is locked" at once. (A reader's shared lock it does wait for.)
    Retried here for up to ``timeout`` seconds, as the busy timeout would."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(_WAL_RETRY_S)


class Database(Protocol):
    """What the broker needs of a database: transactions, waiting for commits, waking waiters."""

    where: str  # for messages: the URL
    path: str

    def write(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args,
              **kwargs: P.kwargs) -> T: ...

    def read(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args,
             **kwargs: P.kwargs) -> T: ...

    def wait(self, ready: Ready, timeout: float) -> None: ...

    def wake_waiters(self) -> None: ...

    def checkpoint(self) -> None: ...

    def close(self) -> None: ...


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite may already have rolled back (after SQLITE_FULL, for instance)


def transact(conn: sqlite3.Connection, begin: str, work: Callable[Concatenate[sqlite3.Connection, P], T],
              *args: P.args, **kwargs: P.kwargs) -> T:
    conn.execute(begin)
    try:
        result = work(conn, *args, **kwargs)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    return result


class FileDatabase:
    def __init__(self, settings: SqliteSettings) -> None:
        self.settings = settings
        self.path = settings.path
        self.where = settings.url
        self._local = threading.local()
        self._lock = threading.Lock()
        self._opened: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._idle: list[_Connection] = []
        self._generation = 0
        self._waker: Waker | None = None
        self._probe = CommitProbe(self.path)

    # -- connections -------------------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened on first use (or taken over from a thread that
        ended: each thread that ever called would otherwise leave a descriptor open, since SQLite keeps a
        closed connection's file open while another connection of the process holds a lock on it)."""
        slot: _Slot | None = getattr(self._local, "slot", None)
        if slot is not None and slot.conn.opened_by == os.getpid() and slot.conn.generation == self._generation:
            return slot.conn
        conn = self._idle_connection() or self._guarded(self._open)
        slot = _Slot(conn)
        weakref.finalize(slot, self._idle.append, conn).atexit = False  # when this thread ends
        self._local.slot = slot
        return conn

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            try:
                conn = self._idle.pop()
            except IndexError:
                return None
            if conn.opened_by == os.getpid() and conn.generation == self._generation:
                return conn
            if conn.opened_by != os.getpid():
                _INHERITED.append(conn)
        return None

    def _open(self) -> _Connection:
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise SqliteFileError(f"hexq needs SQLite {'.'.join(map(str, MIN_SQLITE))} or later; this Python uses "
                                  f"{sqlite3.sqlite_version}: use a Python built against a newer libsqlite3")
        if os.path.isdir(self.path):
            raise SqliteFileError(f"{self.path} is a folder, not a database file: add a file name to the URL")
        conn = sqlite3.connect(self.path, timeout=self.settings.busy_timeout, isolation_level=None,
                               check_same_thread=False, cached_statements=256, factory=_Connection)
        conn.opened_by, conn.generation = os.getpid(), self._generation
        try:
            # The pragmas are per connection, except journal_mode=WAL, which the file keeps.
            conn.execute(f"PRAGMA synchronous = {self.settings.synchronous}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES}")
            mode = _wal_mode(conn, self.settings.busy_timeout)
            ensure_schema(conn, self.path)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._opened.add(conn)
            announce = (os.getpid(), self.path) not in _ANNOUNCED
            _ANNOUNCED.add((os.getpid(), self.path))
        if announce:
            log.info("hexq broker: SQLite database %s (journal %s, synchronous %s)", self.path, mode,
                     self.settings.synchronous)
            if str(mode).lower() != "wal":
                log.warning("%s is not in WAL mode (%s): readers and the writer block each other", self.path, mode)
        return conn

    def _guarded(self, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return work(*args, **kwargs)
        except sqlite3.Error as exc:
            self._reraise(exc)

    def _reraise(self, exc: sqlite3.Error) -> NoReturn:
        mapped = translate(exc, self.path, self.settings.busy_timeout)
        if mapped is None:
            raise exc
        raise mapped from exc

    # -- transactions ------------------------------------------------------------------------------
    def write(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(conn, ...)`` in one BEGIN IMMEDIATE transaction: all of it is committed, or none."""
        try:
            return transact(self.connection(), "BEGIN IMMEDIATE", work, *args, **kwargs)
        except sqlite3.Error as exc:
            self._reraise(exc)

    def read(self, work: Callable[Concatenate[sqlite3.Connection, P], T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(conn, ...)`` on one snapshot (a deferred read transaction; WAL readers take no lock)."""
        try:
            return transact(self.connection(), "BEGIN", work, *args, **kwargs)
        except sqlite3.Error as exc:
            self._reraise(exc)

    def checkpoint(self) -> None:
        """Copy committed WAL frames into the database file; PASSIVE: it neither waits for nor blocks
        readers and writers, and leaves what it cannot copy yet to the next one."""
        self._guarded(self._checkpoint)

    def _checkpoint(self) -> None:
        self.connection().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    # -- waiting -----------------------------------------------------------------------------------
    def waker(self) -> Waker:
        if self._waker is None:
            self._waker = Waker(self.path)
        return self._waker

    def wake_waiters(self) -> None:
        """After a commit that made tasks runnable: wake the waiting reservations of every process."""
        self.waker().wake_waiters()

    def wait(self, ready: Ready, timeout: float) -> None:
        """Return once ``ready(conn)`` holds, checked at once and after each commit seen, or after
        ``timeout`` seconds. A commit is seen through a datagram on a socket bound for this call or through
        the commit probe (``waking.CommitProbe``), checked every ``Listener.poll_s``."""
        self._guarded(self._wait, ready, timeout)

    def _wait(self, ready: Ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        conn = self.connection()
        heard = self.waker().listener()  # bound first: no commit after it is missed
        poll_s = heard.poll_s
        try:
            version = self._probe.token(conn)
            if ready(conn):
                return
            while (left := deadline - time.monotonic()) > 0:
                heard.wait(min(left, poll_s))
                seen = self._probe.token(conn)
                if seen != version:
                    version = seen
                    if ready(conn):
                        return
        finally:
            heard.close()

    def close(self) -> None:
        with self._lock:
            mine = [conn for conn in self._opened if conn.opened_by == os.getpid()]
            for conn in mine:
                self._opened.discard(conn)
            self._generation += 1
        for conn in mine:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._probe.close()
        if self._waker is not None:
            self._waker.close()
