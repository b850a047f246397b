"""One command on a connection the calling thread keeps, for the producer's hot path (``.delay()``).

redis-py's ``execute_command`` checks a connection out of the pool and back in for every command; with
its retry and observability layers that costs about as much CPU as the command itself. A producer that
enqueues one task at a time pays it on every ``.delay()``, so enqueue keeps one connection per thread
(and per process: a forked child opens its own) and talks to it directly.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
import redis.exceptions as rx


class DirectCommand:
    def __init__(self, pool: redis.ConnectionPool) -> None:
        self._pool = pool
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def __call__(self, *command: Any) -> Any:
        for attempt in (1, 2):
            connection = self._connection()
            try:
                connection.send_command(*command)
                return connection.read_response()
            except rx.ResponseError:
                raise  # the error reply was read whole: the connection is still in step
            except (rx.ConnectionError, rx.TimeoutError, OSError):
                self._drop(connection)
                # Once more on a fresh connection: a held connection may have been closed by the server
                # while idle, or by a restart. Like redis-py's own retry, this can store a task twice if
                # the first reply was lost, which at-least-once delivery allows.
                if attempt == 2:
                    raise
            except BaseException:
                self._drop(connection)  # a reply may be half read: never reuse this connection
                raise
        raise AssertionError("unreachable")

    def pipelined(self, *commands: tuple[Any, ...], raw: bool = False) -> list[Any]:
        """Send several commands in one write and read their replies in order. An error reply is
        returned in its place (the rest are still read, keeping the connection in step); a lost
        connection raises, and nothing is retried: a blocking command may already have consumed data.
        ``raw`` returns the replies undecoded (bytes)."""
        connection = self._connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            replies: list[Any] = []
            for _ in commands:
                try:
                    replies.append(connection.read_response(disable_decoding=raw))
                except rx.ResponseError as error:
                    replies.append(error)
            return replies
        except BaseException:
            self._drop(connection)
            raise

    def _connection(self) -> Any:
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or local.connection is None:
            local.pid = os.getpid()
            local.connection = self._pool.make_connection()
            with self._lock:
                self._opened.append(local.connection)
        return local.connection

    def _drop(self, connection: Any) -> None:
        try:
            connection.disconnect()
        finally:
            self._local.connection = None

    def close(self) -> None:
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            try:
                connection.disconnect()
            except Exception:  # closing is best effort
                pass
