"""The hand-packed MULTI of a single .delay() (wire.py) and DirectCommand.exchange, which checks its known
replies as bytes: against redis-py's own packing, and over a real loopback socket to a server that answers
with canned bytes (split, wrong, or cut off), so every way the replies can arrive is exercised without Redis."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
import redis.exceptions as rx

from hexq.adapters.redis import direct as direct_module
from hexq.adapters.redis.direct import DirectCommand, UnexpectedReply
from hexq.adapters.redis.wire import QUEUED_THREE, ErrorReply, PushFrame, command, parse_reply

EXEC_REPLY = b"*3\r\n:1\r\n:1\r\n$-1\r\n"


def test_the_frame_packs_what_redis_py_packs_for_the_same_commands() -> None:
    frame = PushFrame.for_keys("{p}:tasks", "{p}:q:mail", "{p}:armed:mail", "{p}:wake:mail")
    payload = '{"name":"send","args":["héllo ✓"]}'  # lengths are of the UTF-8 bytes, not the characters
    reference = redis.Connection().pack_commands([
        ("MULTI",), ("HSET", "{p}:tasks", "id-1", payload), ("RPUSH", "{p}:q:mail", "id-1"),
        ("LMOVE", "{p}:armed:mail", "{p}:wake:mail", "LEFT", "RIGHT"), ("EXEC",)])
    assert frame.packed("id-1", payload) == b"".join(reference)
    assert command("PING") == b"*1\r\n$4\r\nPING\r\n"


def test_text_that_is_not_utf8_fails_before_anything_is_packed() -> None:
    frame = PushFrame.for_keys("t", "q", "a", "w")
    with pytest.raises(UnicodeEncodeError):
        frame.packed("id", "\ud800")


class CannedServer:
    """Answers the commands redis-py sends on connecting (CLIENT SETINFO, in some versions) with +OK, and the
    first MULTI sent on a connection with ``replies``, written in pieces of ``piece`` bytes; then closes that
    connection if ``close`` (else keeps it open until the test ends)."""

    def __init__(self, replies: bytes, piece: int = 0, close: bool = False) -> None:
        self.replies, self.piece, self.close = replies, piece, close
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.received: list[bytes] = []
        self._open: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
                self.connections += 1
                self._open.append(conn)
                self._answer(conn)
            except OSError:
                return

    def _answer(self, conn: socket.socket) -> None:
        while (data := conn.recv(65536)) and b"MULTI" not in data:
            if b"BLPOP" in data:  # a blocking wait this server never answers (the connection stays open)
                self.received.append(data)
                return
            conn.sendall(b"+OK\r\n" * (data.startswith(b"*") + data.count(b"\r\n*")))
        self.received.append(data)
        step = self.piece or len(self.replies)
        for start in range(0, len(self.replies), step):
            conn.sendall(self.replies[start:start + step])
        if self.close:
            conn.close()

    def stop(self) -> None:
        # The serving thread must be gone when the test ends: a later test that forks while it runs would
        # fork a multi-threaded process. Closing a socket does not wake a thread blocked on it; shutting it
        # down does.
        for sock in (self.listener, *self._open):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the canned server's thread did not stop"


@pytest.fixture
def serve() -> Iterator[Callable[..., CannedServer]]:
    servers: list[CannedServer] = []

    def start(replies: bytes, **options: int | bool) -> CannedServer:
        servers.append(CannedServer(replies, **options))  # type: ignore[arg-type]
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def direct_to(server: CannedServer) -> DirectCommand:
    # RESP2: no HELLO on connecting (the version of redis-py decides; the server answers it with +OK only).
    pool = redis.ConnectionPool(host="127.0.0.1", port=server.port, socket_timeout=2, protocol=2)
    return DirectCommand(pool)


FRAME = PushFrame.for_keys("t", "q", "a", "w")


@pytest.mark.parametrize("piece", [0, 1, 7])
def test_the_known_replies_are_checked_however_they_arrive_and_execs_reply_is_parsed(
        serve: Callable[..., CannedServer], piece: int) -> None:
    server = serve(QUEUED_THREE + EXEC_REPLY, piece=piece)
    direct = direct_to(server)
    assert direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE) == [1, 1, None]
    assert server.received == [FRAME.packed("id", "{}")]
    direct.close()


def test_an_error_amid_the_known_replies_drops_the_connection(serve: Callable[..., CannedServer]) -> None:
    server = serve(b"+OK\r\n-READONLY You can't write against a read only replica.\r\n")
    direct = direct_to(server)
    with pytest.raises(UnexpectedReply, match="READONLY"):
        direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE)
    with pytest.raises(UnexpectedReply):  # the next exchange opens a new connection, never reads the rest
        direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE)
    assert server.connections == 2
    direct.close()


def test_a_connection_closed_amid_the_known_replies_is_a_connection_error(
        serve: Callable[..., CannedServer]) -> None:
    server = serve(b"+OK\r\n+QUEU", close=True)
    direct = direct_to(server)
    with pytest.raises(rx.ConnectionError):
        direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE)
    direct.close()


@pytest.mark.parametrize("own_read_timeouts", [True, False], ids=["read-timeout", "socket-timeout"])
def test_a_bounded_read_ends_at_its_bound_on_a_connection_with_no_timeout_of_its_own(
        serve: Callable[..., CannedServer], monkeypatch: pytest.MonkeyPatch, own_read_timeouts: bool) -> None:
    """A blocking wait's reply is read within its bound whether redis-py's reads take a timeout (>= 8) or
    not (then the bound is put on the socket for the read), on a connection with no socket timeout, as the
    blocking client's on one server: a server that never answers costs the bound, not a hung worker."""
    if own_read_timeouts and not direct_module._READ_TIMEOUTS:
        pytest.skip("this redis-py's reads take no timeout of their own")
    monkeypatch.setattr(direct_module, "_READ_TIMEOUTS", own_read_timeouts)
    server = serve(b"")
    direct = DirectCommand(redis.ConnectionPool(host="127.0.0.1", port=server.port, socket_timeout=None,
                                                protocol=2))
    assert direct.pipelined(("PING",), timeout=0.5) == [b"OK"]  # answered within the bound: nothing changes
    connection = direct._local.connection
    assert connection is not None and connection._sock.gettimeout() is None
    started = time.monotonic()
    with pytest.raises(rx.TimeoutError):
        direct.pipelined(("BLPOP", "q", 0), timeout=0.3)
    assert time.monotonic() - started < 5  # the bound, not forever (pytest-timeout would end a hang)
    assert direct._local.connection is None  # dropped: its reply may still come
    direct.close()


@pytest.mark.parametrize(("data", "value"), [
    (b":12\r\n", 12),
    (b"+QUEUED\r\n", b"QUEUED"),
    (b"$5\r\nhe\r\no\r\n", b"he\r\no"),  # a bulk string is read by its length, CRLF inside it included
    (b"$-1\r\n", None),
    (b"_\r\n", None),  # RESP3's null
    (b"*-1\r\n", None),
    (b"*3\r\n:1\r\n:5\r\n$1\r\n1\r\n", [1, 5, b"1"]),
    (b"*2\r\n*1\r\n:1\r\n$0\r\n\r\n", [[1], b""]),
], ids=["integer", "simple", "bulk", "null-bulk", "resp3-null", "null-array", "exec-reply", "nested"])
def test_a_reply_is_parsed_whole_and_its_end_found(data: bytes, value: object) -> None:
    assert parse_reply(b"+OK\r\n" + data, 5) == (value, 5 + len(data))
    for cut in range(len(data)):  # every shorter prefix is incomplete, never a wrong value
        assert parse_reply(data[:cut]) is None


def test_an_error_reply_is_returned_in_its_place_and_anything_not_resp_is_refused() -> None:
    data = b"*2\r\n-READONLY replica\r\n:1\r\n"
    parsed = parse_reply(data)
    assert parsed is not None and parsed[1] == len(data)
    first, second = parsed[0]  # type: ignore[misc]
    assert isinstance(first, ErrorReply) and str(first) == "READONLY replica" and second == 1
    for wrong in (b"%1\r\n", b"hello\r\n", b"$3\r\nabcd\r\n"):
        with pytest.raises(ValueError):
            parse_reply(wrong)


def test_an_error_reply_to_exec_is_raised_and_the_connection_kept_in_step(
        serve: Callable[..., CannedServer]) -> None:
    server = serve(QUEUED_THREE + b"-EXECABORT Transaction discarded because of previous errors.\r\n")
    direct = direct_to(server)
    with pytest.raises(rx.ResponseError, match="EXECABORT"):
        direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE)
    direct.close()


def test_bytes_after_the_reply_mean_the_stream_is_out_of_step(serve: Callable[..., CannedServer]) -> None:
    server = serve(QUEUED_THREE + EXEC_REPLY + b"+PONG\r\n")
    direct = direct_to(server)
    with pytest.raises(UnexpectedReply, match="more than one reply"):
        direct.exchange(FRAME.packed("id", "{}"), QUEUED_THREE)
    assert direct._local.connection is None  # dropped
    direct.close()


class ClosingAfterEachMulti(CannedServer):
    """Answers every MULTI with ``replies`` and then closes that connection, as a restarted server would have."""

    def _answer(self, conn: socket.socket) -> None:
        super()._answer(conn)
        time.sleep(0.05)  # the answer is read before the close
        conn.close()


def test_a_connection_the_server_closed_while_quiet_is_replaced_before_sending(
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = ClosingAfterEachMulti(QUEUED_THREE + EXEC_REPLY)
    try:
        direct = direct_to(server)
        assert direct.exchange(FRAME.packed("a", "{}"), QUEUED_THREE) == [1, 1, None]
        time.sleep(0.2)  # the server's EOF has arrived
        monkeypatch.setattr(direct_module, "QUIET_BEFORE_CHECK", 0.1)
        assert direct.exchange(FRAME.packed("b", "{}"), QUEUED_THREE) == [1, 1, None]
        assert server.connections == 2 and server.received[-1] == FRAME.packed("b", "{}")
        direct.close()
    finally:
        server.stop()


def test_a_busy_connection_is_not_checked_and_a_close_meanwhile_is_a_connection_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Within QUIET_BEFORE_CHECK of its last exchange a connection is used unchecked; if the server closed it
    meanwhile, the exchange raises ConnectionError (the broker then sends the push script on a new connection)
    and the dead connection is dropped."""
    server = ClosingAfterEachMulti(QUEUED_THREE + EXEC_REPLY)
    try:
        direct = direct_to(server)
        direct.exchange(FRAME.packed("a", "{}"), QUEUED_THREE)
        time.sleep(0.2)
        monkeypatch.setattr(direct_module, "QUIET_BEFORE_CHECK", 60.0)
        with pytest.raises(rx.ConnectionError):
            direct.exchange(FRAME.packed("b", "{}"), QUEUED_THREE)
        assert direct._local.connection is None
        assert direct.exchange(FRAME.packed("c", "{}"), QUEUED_THREE) == [1, 1, None]  # a new connection
        assert server.connections == 2
        direct.close()
    finally:
        server.stop()
