"""One command on a connection the calling thread keeps, for the producer's hot path (``.delay()``).

redis-py's ``execute_command`` checks a connection out of the pool and back in for every command; with
its retry and observability layers that costs about as much CPU as the command itself. A producer that
enqueues one task at a time pays it on every ``.delay()``, so enqueue keeps one connection per thread
(and per process: a forked child opens its own) and talks to it directly.

Failover: connections are made as ``pool.make_connection()`` makes them and are connected here with
``connect()``, as the pool itself does: on a Sentinel pool that is what asks the sentinels for the primary's
address (redis-py connects a connection that is merely sent a command to its last, or default, host and
port, without asking). A connection that fails (ConnectionError, a timeout) or that answers READONLY (a
primary demoted to a replica) is dropped at once; the next command opens a new one, which finds the current
primary.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
import redis.connection
import redis.exceptions as rx

from hexq.adapters.redis.errors import is_redirect
from hexq.adapters.redis.wire import ErrorReply, parse_reply

# redis-py >= 8 lets a read carry its own timeout; older versions read with the socket's, which a blocking client
# on one server does not have (socket_timeout=None), so there the bound is put on the socket for the read.
_READ_TIMEOUTS = "timeout" in inspect.signature(redis.connection.Connection.read_response).parameters


# ``exchange`` first looks for the server's EOF on a connection that has been quiet this long (seconds). A busy
# producer skips that poll (a system call, about 7% of a .delay() on a loopback server): the EOF of a server that
# went away within this time is found by the exchange itself instead, which raises, and the caller sends the
# task again on a new connection (RedisBroker._pushed: its push script stores it once either way).
QUIET_BEFORE_CHECK = 1.0


class UnexpectedReply(rx.ConnectionError):
    """Replies known in advance were not what came (an error reply: READONLY, MOVED, OOM, or a RESP3 push
    message amid them); the connection was dropped, as what follows on it is unknown."""


def _connected(connection: Any) -> bool:
    connected = getattr(connection, "is_connected", None)  # redis-py >= 6
    if isinstance(connected, bool):
        return connected
    return getattr(connection, "_sock", None) is not None


class DirectCommand:
    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, *command: Any) -> Any:
        for attempt in (1, 2):
            connection = None
            try:
                connection = self._connection()
                connection.send_command(*command)
                return connection.read_response()
            except rx.ReadOnlyError:
                # A replica answered: a demoted primary behind a name or address that moved. The write was
                # refused, so sending it again is safe, on a new connection that resolves the address anew.
                # (A Sentinel connection turns READONLY into ConnectionError itself, handled below.)
                self._drop(connection)
                if attempt == 2:
                    raise
            except rx.ResponseError as exc:
                if not is_redirect(exc) or attempt == 2:
                    raise  # the error reply was read whole: the connection is still in step
                self._drop(connection)  # MOVED/ASK: refused, not run; once more where the cluster says
            except (rx.ConnectionError, rx.TimeoutError, OSError):
                self._drop(connection)  # (None when it could not even connect)
                # Once more on a fresh connection: a held connection may have been closed by the server
                # while idle, or by a restart. Like redis-py's own retry, this can store a task twice if
                # the first reply was lost, which at-least-once delivery allows.
                if attempt == 2:
                    raise
            except BaseException:
                self._drop(connection)  # a reply may be half read: never reuse this connection
                raise
        raise AssertionError("unreachable")

    def pipelined(self, *commands: tuple[Any, ...], raw: bool = False, timeout: float | None = None) -> list[Any]:
        """Send several commands in one write and read their replies in order. An error reply is
        returned in its place (the rest are still read, keeping the connection in step); a lost
        connection raises, and nothing is retried: a blocking command may already have consumed data.
        ``raw`` returns the replies undecoded (bytes). ``timeout`` bounds each read (seconds) instead of the
        socket's own timeout; past it, TimeoutError, and the connection is dropped like a lost one. A
        READONLY reply drops the connection too, after every reply was read."""
        options: dict[str, Any] = {"disable_decoding": raw}
        if timeout is not None and _READ_TIMEOUTS:
            options["timeout"] = timeout
        connection = None
        try:
            connection = self._connection(check=True)
            connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            with _socket_bound(connection, None if _READ_TIMEOUTS else timeout):
                for _ in commands:
                    try:
                        replies.append(connection.read_response(**options))
                    except rx.ResponseError as error:
                        replies.append(error)
        except BaseException:
            self._drop(connection)
            raise
        if any(isinstance(reply, rx.ReadOnlyError) for reply in replies):
            self._drop(connection)
        return replies

    def exchange(self, packed: bytes, expected: bytes) -> Any:
        """Send pre-packed commands in one write, check that their first replies are exactly ``expected``
        (simple strings, such as a MULTI's +OK and +QUEUED), and return the parsed reply after them.

        On a real socket the replies are read straight from it (``_read_after``): the expected ones compared as
        bytes, the last parsed by wire.parse_reply (see wire.py for why); elsewhere (fakeredis) the parser reads
        them. Anything else raises UnexpectedReply; a lost connection raises as the socket does; either way the
        connection is dropped, and nothing is retried. An error reply is raised (ResponseError) or, nested in the
        reply, returned in place (wire.ErrorReply)."""
        connection = None
        try:
            connection = self._connection()
            if not isinstance(getattr(connection, "_sock", None), socket.socket):
                return self._exchange_parsed(self._connection(check=True), packed, expected)
            local = self._local
            if time.monotonic() - local.exchanged_at >= QUIET_BEFORE_CHECK and _readable(connection._sock):
                # The server's EOF (it closed the idle connection: a restart, its idle timeout) or bytes nobody
                # asked for: replaced before sending.
                self._drop(connection)
                connection = self._connection()
            connection.send_packed_command([packed])
            reply = _read_after(connection._sock, expected)
            local.exchanged_at = time.monotonic()
        except BaseException:
            self._drop(connection)
            raise
        if isinstance(reply, ErrorReply):
            raise rx.ResponseError(str(reply))  # read whole: the connection is still in step
        return reply

    @staticmethod
    def _exchange_parsed(connection: Any, packed: bytes, expected: bytes) -> Any:
        connection.send_packed_command([packed])
        for line in expected.split(b"\r\n")[:-1]:
            reply = connection.read_response()
            if (reply.encode() if isinstance(reply, str) else reply) != line[1:]:
                raise UnexpectedReply(f"expected {line!r}, Redis answered {reply!r}")
        return connection.read_response()

    def _connection(self, check: bool = False) -> Any:
        """This thread's connection, connected. Connecting goes through ``connect()`` every time, including
        after redis-py closed the socket itself, so a Sentinel connection always asks where the primary is.
        ``check``: first make sure an open connection was not closed by its server meanwhile (one poll), for
        commands that are not sent twice: a dead primary's idle connection is replaced before, not after."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.connection is None:
            local.pid = os.getpid()
            # Not pool.make_connection(): redis-py >= 8 caps the connections a pool made at 100 (by default)
            # and counts one back only when it is released to the pool, which these never are, so a producer
            # that reconnected a hundred times (outages, failovers) would fail with "Too many connections"
            # for good. Built as make_connection builds them, without that count.
            pool = self._pool
            local.connection = pool.connection_class(**pool.connection_kwargs)
            local.exchanged_at = -QUIET_BEFORE_CHECK  # checked before its first exchange (it may be reused later)
            with self._lock:
                self._opened.append(local.connection)
        connection = local.connection
        if check and _connected(connection):
            try:
                stale = connection.can_read(timeout=0)  # data nobody asked for, or the server's EOF
            except (rx.ConnectionError, rx.TimeoutError, OSError):
                stale = True
            if stale:
                self._drop(connection)
                return self._connection()
        if not _connected(connection):
            connection.connect()
        return connection

    def _drop(self, connection: Any) -> None:
        try:
            if connection is not None:
                connection.disconnect()
        finally:
            self._local.connection = None
            with self._lock:
                if connection in self._opened:
                    self._opened.remove(connection)  # else every reconnection would be kept until close()

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            try:
                connection.disconnect()
            except Exception:  # closing is best effort
                pass


@contextlib.contextmanager
def _socket_bound(connection: Any, seconds: float | None) -> Iterator[None]:
    """Reads within ``seconds`` (None: as the socket is set) on a redis-py whose reads take no timeout of their
    own. Past it the socket raises, redis-py reports TimeoutError and drops the connection; otherwise the
    socket gets its own timeout back."""
    sock = getattr(connection, "_sock", None)
    if seconds is None or not isinstance(sock, socket.socket):  # fakeredis has no socket, and never blocks
        yield
        return
    sock.settimeout(seconds)
    try:
        yield
    finally:
        if connection._sock is sock:
            sock.settimeout(connection.socket_timeout)


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has bytes or an EOF waiting: one poll, where redis-py's ``can_read(timeout=0)`` makes
    three system calls on a socket with a timeout (two to switch it to non-blocking and back, and a read)."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def _read_after(sock: socket.socket, expected: bytes) -> Any:
    """Read ``expected`` and then one whole reply from ``sock``, and return that reply parsed; UnexpectedReply at
    the first byte that differs from ``expected``, or if anything follows the reply (the stream is then out of
    step). Usually one read: all the replies come in one segment. Each read is bounded by the socket's timeout."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise rx.ConnectionError("Connection closed by server.")
        data += chunk
        known = min(len(data), len(expected))
        if data[:known] != expected[:known]:
            raise UnexpectedReply(f"expected {expected!r}, Redis answered {data[:len(expected)]!r}...")
        if len(data) <= len(expected):
            continue
        try:
            parsed = parse_reply(data, len(expected))
        except ValueError as exc:
            raise UnexpectedReply(f"after {expected!r}, a reply that is not RESP: {exc}") from None
        if parsed is None:
            continue  # the reply goes on in the next segment
        reply, end = parsed
        if end != len(data):
            raise UnexpectedReply(f"more than one reply after {expected!r}: {data[end:]!r}")
        return reply
