"""Best-effort wake-ups between processes sharing one database file, over Unix datagram sockets.

SQLite has no BLPOP. A waiting call binds a datagram socket ``t-<pid>-<n>-<random>`` in the folder
``<database>-wake`` for the length of its wait, and a producer that committed a runnable task sends one byte
to each socket there, which wakes the waiter at once. Between bytes it checks for commits every ``POLL_S``,
or every ``POLL_WITHOUT_SOCKET_S`` when it could not bind a socket; that bounds how late a new task is
noticed if a wake-up is lost. The check (``CommitProbe``) reads the WAL-index header at the start of the
``-shm`` file with one ``pread``: SQLite rewrites that header on every commit (its documented wal-index
format, shared by every process and SQLite version that opens the database). ``PRAGMA data_version`` says
the same, but it opens and closes a read transaction, which cost a waiting worker over 1% of a core at
125 checks a second; the pread costs about a microsecond, so the timer wake-ups are what is left.

Everything here may fail (a read-only folder, a path longer than a socket address allows, another user's
socket): failures are ignored, and waiting falls back to polling alone.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import select
import socket
import sqlite3
import threading
import time

log = logging.getLogger("hexq.sqlite")

# How often a waiting call checks for commits: with a socket, only a safety net for a lost datagram (each
# check is a timer wake-up, most of an idle worker's CPU); without one, polling is all there is.
POLL_S = 0.010
POLL_WITHOUT_SOCKET_S = 0.004  # ... and without one: then polling is all there is
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path, less the terminating NUL
_RECENT_NS = 50_000_000  # a folder changed this recently may have changed again within its mtime granularity
_counter = itertools.count()


def wake_folder(database_path: str) -> str:
    return database_path + "-wake"


def gone(exc: OSError) -> bool:
    """True when a send to a socket path shows that nobody holds the socket any more."""
    return exc.errno in (errno.ECONNREFUSED, errno.ENOENT)


class Listener:
    """One bound datagram socket: ``wait`` returns when a byte arrives or after the timeout. Without a
    socket (binding failed) it simply sleeps, and polling does the work."""

    def __init__(self, folder: str | None, kind: str) -> None:
        self.path: str | None = None
        self.poll_s = POLL_WITHOUT_SOCKET_S
        self._sock: socket.socket | None = None
        self._poll: select.poll | None = None
        if folder is None:
            return
        # The random part: a file left by a killed process of the same pid must never be taken for ours.
        path = os.path.join(folder, f"{kind}-{os.getpid()}-{next(_counter)}-{os.urandom(3).hex()}")
        if len(path.encode()) > _SUN_PATH_MAX:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            # Producers may run as another user: anyone who may enter the folder may wake us (at worst a
            # spurious wake-up), as the database file's own permissions decide who may enqueue.
            os.chmod(path, 0o666)
        except OSError:
            sock.close()
            return
        sock.setblocking(False)
        self.path, self._sock, self.poll_s = path, sock, POLL_S
        self._poll = select.poll()
        self._poll.register(sock.fileno(), select.POLLIN)

    def wait(self, timeout: float) -> None:
        if self._poll is None or self._sock is None:
            time.sleep(timeout)
            return
        if self._poll.poll(timeout * 1000):
            try:
                while self._sock.recv(64):  # drain: one wake-up is as good as many
                    pass
            except OSError:
                pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = self._poll = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.path = None


class Waker:
    """The sending side, one per database per process. The listing of waiting sockets is cached, and read
    again when the folder's mtime differs from the cached one or when the cached listing was taken too soon
    after that mtime to be trusted (a file system's mtime is coarse: a socket bound in the same tick, after
    the listing, leaves it unchanged). So a producer pays one ``stat`` per commit when nobody waits."""

    def __init__(self, database_path: str) -> None:
        self.folder: str | None = wake_folder(database_path)
        self._pid = -1
        self._sock: socket.socket | None = None
        self._mtime = -1
        self._listed_ns = 0
        self._targets: list[str] = []
        try:
            os.makedirs(self.folder, exist_ok=True)
        except OSError as exc:
            log.info("no wake-up folder for %s (%s): waiting reservations poll every %g ms",
                     database_path, exc, POLL_S * 1000)
            self.folder = None

    def _sender(self) -> socket.socket:
        if self._sock is None or self._pid != os.getpid():  # never share a socket with a forked parent
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)
            self._pid = os.getpid()
        return self._sock

    def close(self) -> None:
        if self._sock is not None and self._pid == os.getpid():
            self._sock.close()
        self._sock = None

    def listener(self, kind: str = "t") -> Listener:
        return Listener(self.folder, kind)

    def wake_waiters(self) -> None:
        """Send a byte to every waiting reservation (sockets ``t-*``); stale sockets are removed."""
        folder = self.folder
        if folder is None:
            return
        try:
            mtime = os.stat(folder).st_mtime_ns
            if mtime != self._mtime or self._listed_ns - mtime < _RECENT_NS:
                listed_ns = time.time_ns()
                self._targets = [os.path.join(folder, n) for n in os.listdir(folder) if n.startswith("t-")]
                self._mtime, self._listed_ns = mtime, listed_ns
        except OSError:
            return
        for path in self._targets:
            self.send(path, remove_stale=True)

    def send(self, path: str, *, remove_stale: bool = False) -> bool:
        """One byte to ``path``; False only when nobody holds that socket any more."""
        try:
            self._sender().sendto(b"\x01", path)
        except OSError as exc:
            if not gone(exc):
                return True  # full (the owner is alive but not reading yet), or another user's socket
            if remove_stale and exc.errno == errno.ECONNREFUSED:
                try:
                    os.unlink(path)  # left by a process that was killed while waiting
                except OSError:
                    pass
            return False
        return True


class CommitProbe:
    """A token that changes whenever any connection commits to the database: the raw WAL-index header
    (the first 48 bytes of ``<database>-shm``), or ``PRAGMA data_version`` when that file cannot be read
    (a database not in WAL mode). Tokens are only compared: a torn read is at worst a spurious change."""

    def __init__(self, database_path: str) -> None:
        self._shm = database_path + "-shm"
        self._pid = -1
        self._fd = -1
        self._lock = threading.Lock()

    def token(self, conn: sqlite3.Connection) -> object:
        if self._pid != os.getpid():  # a descriptor of the parent's is still valid, but keep one per process
            with self._lock:
                if self._pid != os.getpid():
                    try:
                        self._fd = os.open(self._shm, os.O_RDONLY | os.O_CLOEXEC)
                    except OSError:
                        self._fd = -1
                    self._pid = os.getpid()
        if self._fd >= 0:
            try:
                return os.pread(self._fd, 48, 0)
            except OSError:
                pass
        return conn.execute("PRAGMA data_version").fetchone()[0]

    def close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = -1, -1
