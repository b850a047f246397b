"""The single ``.delay()``'s MULTI, packed as RESP bytes by hand.

It is the one command sequence every ``.delay()`` sends, and all of it but the task's id and payload is the
same for every task of a queue: those parts are packed once per queue, and a send joins five byte strings.
Its first four replies are known in advance too (``+OK`` for MULTI, ``+QUEUED`` for each command), which
``DirectCommand.exchange`` checks byte for byte instead of parsing them; EXEC's reply, read in the same
``recv``, is parsed by ``parse_reply``. redis-py packs and parses each command and reply through several layers
of Python, which cost a ``.delay()`` more than the round trip's own system calls (about 30 µs of 125 with
redis-py's pure-Python parser), and its reads of a socket with a timeout make more system calls than the
round trip needs.
"""

from __future__ import annotations

import attrs

# What Redis answers MULTI and three queued commands, in RESP2 and RESP3 alike (simple strings).
QUEUED_THREE = b"+OK\r\n" + b"+QUEUED\r\n" * 3


def bulk(value: str | bytes) -> bytes:
    """One RESP bulk string; text as UTF-8, strictly, as redis-py's encoder does by default."""
    data = value.encode() if isinstance(value, str) else value
    return b"$%d\r\n%b\r\n" % (len(data), data)


def command(*parts: str | bytes) -> bytes:
    return b"*%d\r\n" % len(parts) + b"".join(bulk(part) for part in parts)


@attrs.frozen
class PushFrame:
    """MULTI, HSET tasks <id> <payload>, RPUSH <queue> <id>, LMOVE <armed> <wake> LEFT RIGHT, EXEC: the
    payload, the queue entry and the queue's armed wake token fired (wake() in _lib.lua), for one queue."""

    head: bytes  # MULTI and HSET up to the id
    middle: bytes  # RPUSH up to the id
    tail: bytes  # LMOVE and EXEC

    @classmethod
    def for_keys(cls, tasks: str, queue: str, armed: str, wake: str) -> PushFrame:
        return cls(command("MULTI") + b"*4\r\n" + bulk("HSET") + bulk(tasks),
                   b"*3\r\n" + bulk("RPUSH") + bulk(queue),
                   command("LMOVE", armed, wake, "LEFT", "RIGHT") + command("EXEC"))

    def packed(self, task_id: str, payload: str) -> bytes:
        # Encoded before anything is sent: text that is not valid UTF-8 fails here, with nothing stored.
        task = bulk(task_id)
        return b"".join((self.head, task, bulk(payload), self.middle, task, self.tail))


class ErrorReply(Exception):
    """An error reply (``-ERR ...``) found by ``parse_reply``: returned in its place inside an array, the text
    without its leading dash."""


def parse_reply(data: bytes | bytearray, start: int = 0) -> tuple[object, int] | None:
    """The RESP2/RESP3 reply that begins at ``data[start]`` and the offset just past it, or None when ``data``
    ends before the reply does. Integers are ints, bulk and simple strings bytes, nulls None, arrays lists and
    error replies ErrorReply. The kinds EXEC's reply to PushFrame's commands can hold; any other kind (a map,
    a push message) raises ValueError, as does anything that is not RESP."""
    end = data.find(b"\r\n", start)
    if end < 0:
        return None
    kind, line = data[start:start + 1], bytes(data[start + 1:end])
    after = end + 2
    if kind == b"+":
        return line, after
    if kind == b":":
        return int(line), after
    if kind == b"-":
        return ErrorReply(line.decode(errors="replace")), after
    if kind == b"_":
        return None, after
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(data) < after + size + 2:
            return None
        if data[after + size:after + size + 2] != b"\r\n":
            raise ValueError(f"a bulk string of {size} bytes is not followed by CRLF")
        return bytes(data[after:after + size]), after + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, after
        items: list[object] = []
        for _ in range(count):
            parsed = parse_reply(data, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise ValueError(f"unexpected reply type {kind!r}")
