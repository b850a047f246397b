"""The RunningBoard in anonymous shared memory, created before fork so children inherit it.

Each (child, slot) record is written by exactly one child and read only by the worker parent, which uses it
to enforce hard timeouts and to know which tasks a dead child was running. The per-task path must stay free of
locks and system calls (a lock in shared memory would also stay held forever by a child killed while holding
it), so a record is guarded by a seqlock instead: its sequence number is odd while a write is in progress and
the reader retries when it sees an odd number, or a different number after reading than before.

What ``running`` returns for a slot is always a value some write completed, never half of one: if a record
stays torn through every retry (its writer was preempted, or killed, mid-write), the reader reports the last
value it read consistently from that record, which was true a moment ago; raising instead would break the
parent just when it needs the board, reaping a child killed in the middle of a write.

A record holds a whole task id or nothing: an id that does not fit is refused with ValueError, never cut,
because the parent looks tasks up by their exact id.

The board also carries what the parent asks each child to cancel (``cancel_box.py``: written by the parent,
read by the child when interrupted).
"""

from __future__ import annotations

import logging
import mmap
import struct
import zlib
from collections.abc import Sequence

import attrs

from hexq.adapters.posix.cancel_box import CancelBox
from hexq.core.message import MAX_TASK_ID_BYTES

log = logging.getLogger("hexq.worker")

# The longest task id (in UTF-8 bytes) the board holds, a rule of the core: a worker dead-letters a delivery
# with a longer id before it starts. hexq's own ids are 32 hex characters; a broadcast copy's adds a dot and
# the copy's number (Producer.broadcast).

# Native byte order and size on purpose: struct then copies the 8 bytes with a single memcpy, which compilers
# turn into one load or store, atomic when aligned. The "<" formats go byte by byte, and a sequence number
# read while it is being written could then come back as a mix of old and new bytes. The board never leaves
# this machine, so native order costs nothing.
_SEQUENCE = struct.Struct("@Q")
# After the sequence: the CRC-32 of the body, then the body: hard deadline, occupied flag, id length, id.
_CRC = struct.Struct("<I")
_BODY = struct.Struct(f"<d?H{MAX_TASK_ID_BYTES}s")
_PAYLOAD_START = _SEQUENCE.size
_PAYLOAD_SIZE = _CRC.size + _BODY.size
# Records start on 8-byte boundaries (the mmap is page aligned) so that every sequence number is aligned.
_RECORD_SIZE = -(-(_SEQUENCE.size + _PAYLOAD_SIZE) // 8) * 8
# A writer is done within microseconds unless the scheduler preempts it; this many tries cover the first case
# and keep a reader from spinning for long in the second.
_READ_ATTEMPTS = 100


@attrs.frozen
class _Entry:
    task_id: str
    hard_deadline: float


def _shown(task_id: str) -> str:
    # Only the error message is shortened: a runaway id could be megabytes long.
    return repr(task_id) if len(task_id) <= 80 else f"{task_id[:80]!r}..."


def _encode_task_id(task_id: str) -> bytes:
    try:
        raw = task_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"task id {_shown(task_id)} cannot be encoded as UTF-8: {exc.reason}") from None
    if len(raw) > MAX_TASK_ID_BYTES:
        raise ValueError(f"task id is {len(raw)} bytes of UTF-8, longer than the running board's limit of "
                         f"{MAX_TASK_ID_BYTES} bytes: {_shown(task_id)}")
    return raw


def _payload(entry: _Entry | None) -> bytes:
    if entry is None:
        return _FREE
    raw = _encode_task_id(entry.task_id)
    return _packed(_BODY.pack(entry.hard_deadline, True, len(raw), raw))


def _packed(body: bytes) -> bytes:
    return _CRC.pack(zlib.crc32(body)) + body


_FREE = _packed(_BODY.pack(0.0, False, 0, b""))  # a free slot's record: written after every task


def _decode(payload: bytes) -> tuple[bool, _Entry | None]:
    """(consistent, entry) of a record's payload read between two equal even sequence numbers.

    The CRC is a second line of defence behind the sequence numbers: Python has no memory fences, so on a
    weakly ordered CPU (arm64) another core may see a writer's stores out of order; a body mixing two writes
    fails the check and is read again like a torn read.
    """
    (crc,) = _CRC.unpack_from(payload)
    body = payload[_CRC.size:]
    if crc != zlib.crc32(body):
        return False, None
    hard, occupied, length, raw = _BODY.unpack(body)
    if not occupied:
        return True, None
    if length > MAX_TASK_ID_BYTES:
        return False, None
    try:
        return True, _Entry(raw[:length].decode("utf-8"), hard)
    except UnicodeDecodeError:
        return False, None


class SharedBoard:
    def __init__(self, children: int, slots: int) -> None:
        self.children = children
        self.slots = slots
        self._memory = mmap.mmap(-1, max(1, children * slots * _RECORD_SIZE))
        # The reader's (the parent's) last consistent view of each record, returned when a record stays torn
        # through every attempt. Children inherit a copy they never use.
        self._last: list[_Entry | None] = [None] * (children * slots)
        self._cancels = CancelBox(children)

    def _index(self, child: int, slot: int) -> int:
        if not (0 <= child < self.children and 0 <= slot < self.slots):
            raise IndexError(f"board has {self.children} children x {self.slots} slots, got ({child}, {slot})")
        return child * self.slots + slot

    def _write(self, child: int, slot: int, entry: _Entry | None) -> None:
        offset = self._index(child, slot) * _RECORD_SIZE
        payload = _payload(entry)  # may raise: before anything is written, so the record stays as it was
        # Only this child writes the record, so its sequence number in memory is ours to read. It is even
        # (reset() zeroes a record a killed child left odd), but "(n + 1) | 1" is the next odd number either way.
        (sequence,) = _SEQUENCE.unpack_from(self._memory, offset)
        writing = (sequence + 1) | 1
        _SEQUENCE.pack_into(self._memory, offset, writing)
        self._memory[offset + _PAYLOAD_START:offset + _PAYLOAD_START + _PAYLOAD_SIZE] = payload
        _SEQUENCE.pack_into(self._memory, offset, writing + 1)

    def _read_once(self, offset: int) -> tuple[bool, _Entry | None]:
        (before,) = _SEQUENCE.unpack_from(self._memory, offset)
        payload = self._memory[offset + _PAYLOAD_START:offset + _PAYLOAD_START + _PAYLOAD_SIZE]
        (after,) = _SEQUENCE.unpack_from(self._memory, offset)
        if before != after or before % 2:
            return False, None  # a write began or ended while we copied: the payload may be half of each
        if before == 0:
            return True, None  # never written since reset(): the zeroed memory means "free"
        return _decode(payload)

    def _read(self, index: int) -> _Entry | None:
        for _ in range(_READ_ATTEMPTS):
            consistent, entry = self._read_once(index * _RECORD_SIZE)
            if consistent:
                self._last[index] = entry
                return entry
        # Still torn: the writer was preempted mid-write, or died there (its record stays odd until reset).
        # What the record held before that write began is true as of a moment ago, which is all a seqlock
        # reader ever gets; the next read will see the write once it completes.
        log.debug("running board record (%d, %d) stayed torn through %d reads: using its last consistent "
                  "value", index // self.slots, index % self.slots, _READ_ATTEMPTS)
        return self._last[index]

    def started(self, child: int, slot: int, task_id: str, hard_deadline: float) -> None:
        """Record that ``task_id`` runs in this slot until ``hard_deadline`` (0.0 = none).

        Raises ValueError, leaving the record unchanged, if the id is longer than MAX_TASK_ID_BYTES in UTF-8.
        """
        self._write(child, slot, _Entry(task_id, hard_deadline))

    def finished(self, child: int, slot: int) -> None:
        self._write(child, slot, None)

    def running(self, child: int) -> list[tuple[str, float]]:
        """(task id, hard deadline) of each task the child is running, by slot; 0.0 = no hard deadline."""
        found: list[tuple[str, float]] = []
        for slot in range(self.slots):
            entry = self._read(self._index(child, slot))
            if entry is not None:
                found.append((entry.task_id, entry.hard_deadline))
        return found

    def reset(self, child: int) -> None:
        """Clear a child's records; only while no process writes them (the child is gone, no new one yet)."""
        for slot in range(self.slots):
            index = self._index(child, slot)
            offset = index * _RECORD_SIZE
            self._memory[offset:offset + _RECORD_SIZE] = bytes(_RECORD_SIZE)
            self._last[index] = None
        self._cancels.reset(child)

    def request_cancel(self, child: int, task_ids: Sequence[str]) -> None:
        """Parent: the child's tasks whose cancellation is requested (the child reads them when interrupted)."""
        self._cancels.write(child, task_ids)

    def cancel_requests(self, child: int) -> frozenset[str]:
        """Child: the ids its parent last asked it to cancel."""
        return self._cancels.read(child)


class ChildReporter:
    """The child's view of the board: its own row only."""

    def __init__(self, board: SharedBoard, child: int) -> None:
        self._board = board
        self._child = child

    def started(self, slot: int, task_id: str, hard_deadline: float) -> None:
        self._board.started(self._child, slot, task_id, hard_deadline)

    def finished(self, slot: int) -> None:
        self._board.finished(self._child, slot)
