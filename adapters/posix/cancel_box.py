"""The other half of the running board: what the worker parent asks each child to cancel.

The board proper (``board.py``) is written by the children and read by the parent. This is written by the
parent only (its broker thread, after each lease renewal that returned cancellation requests) and read by a
child when the parent interrupts it (``interrupts.py``). One block per child, in anonymous shared memory
made before any fork, guarded by a seqlock and a CRC exactly as a board record is: the reader retries a
torn read, and if a block stays torn it keeps what it read last (the parent writes again at its next beat).

A block holds as many whole ids as fit in ``BLOCK_BYTES``; the rest wait for a later write, once the first
ones have ended (requests are only ever for tasks the child holds, a bounded number).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from collections.abc import Sequence

from hexq.core.message import MAX_TASK_ID_BYTES

_SEQUENCE = struct.Struct("@Q")  # native, 8 bytes, aligned: one load or store (see board.py)
_HEADER = struct.Struct("<IH")  # CRC-32 of the body, then how many ids it holds
BLOCK_BYTES = 8192
_BODY_BYTES = BLOCK_BYTES - _SEQUENCE.size - _HEADER.size
_READ_ATTEMPTS = 100


def _pack(task_ids: Sequence[str]) -> bytes:
    """A one-byte length then the UTF-8 bytes of each id that fits (ids longer than the board's limit are
    never running, so never asked for), padded to the body's size."""
    body = bytearray()
    count = 0
    for task_id in task_ids:
        raw = task_id.encode("utf-8", "surrogatepass")
        if len(raw) > MAX_TASK_ID_BYTES or len(body) + 1 + len(raw) > _BODY_BYTES:
            continue
        body += bytes([len(raw)]) + raw
        count += 1
    body += bytes(_BODY_BYTES - len(body))
    return _HEADER.pack(zlib.crc32(body), count) + bytes(body)


def _unpack(block: bytes) -> frozenset[str] | None:
    """The ids of a block read between two equal even sequence numbers, or None if it does not check out."""
    crc, count = _HEADER.unpack_from(block)
    body = block[_HEADER.size:]
    if crc != zlib.crc32(body):
        return None
    found: list[str] = []
    at = 0
    try:
        for _ in range(count):
            length = body[at]
            found.append(body[at + 1:at + 1 + length].decode("utf-8", "surrogatepass"))
            at += 1 + length
    except (IndexError, UnicodeDecodeError):
        return None
    return frozenset(found)


class CancelBox:
    def __init__(self, children: int) -> None:
        self.children = children
        self._memory = mmap.mmap(-1, max(1, children) * BLOCK_BYTES)
        self._last: list[frozenset[str]] = [frozenset()] * max(1, children)  # each child reads its own

    def _offset(self, child: int) -> int:
        if not 0 <= child < self.children:
            raise IndexError(f"the cancel box has {self.children} children, got {child}")
        return child * BLOCK_BYTES

    def write(self, child: int, task_ids: Sequence[str]) -> None:
        offset = self._offset(child)
        payload = _pack(task_ids)
        (sequence,) = _SEQUENCE.unpack_from(self._memory, offset)
        writing = (sequence + 1) | 1
        _SEQUENCE.pack_into(self._memory, offset, writing)
        self._memory[offset + _SEQUENCE.size:offset + BLOCK_BYTES] = payload
        _SEQUENCE.pack_into(self._memory, offset, writing + 1)

    def read(self, child: int) -> frozenset[str]:
        offset = self._offset(child)
        for _ in range(_READ_ATTEMPTS):
            (before,) = _SEQUENCE.unpack_from(self._memory, offset)
            block = self._memory[offset + _SEQUENCE.size:offset + BLOCK_BYTES]
            (after,) = _SEQUENCE.unpack_from(self._memory, offset)
            if before != after or before % 2:
                continue
            if before == 0:
                return frozenset()  # never written
            found = _unpack(block)
            if found is not None:
                self._last[child] = found
                return found
        return self._last[child]

    def reset(self, child: int) -> None:
        """Clear a child's block; only while nobody reads it (the child is gone, no new one yet)."""
        offset = self._offset(child)
        self._memory[offset:offset + BLOCK_BYTES] = bytes(BLOCK_BYTES)
        self._last[child] = frozenset()
