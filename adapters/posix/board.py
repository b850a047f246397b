"""The RunningBoard in anonymous shared memory, created before fork so children inherit it.

Each (child, slot) record is written by exactly one child and read by the parent. A sequence number
(odd while a write is in progress) lets the parent detect a torn read and simply read again: no locks,
no system calls on the per-task path.
"""

from __future__ import annotations

import mmap
import struct

_RECORD = struct.Struct("<Q64sdd")  # sequence, task id (utf-8, NUL padded), soft deadline, hard deadline


class SharedBoard:
    def __init__(self, children: int, slots: int) -> None:
        self.children = children
        self.slots = slots
        self._memory = mmap.mmap(-1, max(1, children * slots * _RECORD.size))
        self._sequences = [0] * (children * slots)

    def _offset(self, child: int, slot: int) -> int:
        if not (0 <= child < self.children and 0 <= slot < self.slots):
            raise IndexError(f"board has {self.children} children x {self.slots} slots, got ({child}, {slot})")
        return (child * self.slots + slot) * _RECORD.size

    def _write(self, child: int, slot: int, task_id: bytes, soft: float, hard: float) -> None:
        index = child * self.slots + slot
        offset = self._offset(child, slot)
        sequence = self._sequences[index] + 1  # odd: write in progress
        struct.pack_into("<Q", self._memory, offset, sequence)
        _RECORD.pack_into(self._memory, offset, sequence, task_id, soft, hard)
        self._sequences[index] = sequence + 1
        struct.pack_into("<Q", self._memory, offset, sequence + 1)

    def started(self, child: int, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None:
        self._write(child, slot, task_id.encode()[:64], soft_deadline, hard_deadline)

    def finished(self, child: int, slot: int) -> None:
        self._write(child, slot, b"", 0.0, 0.0)

    def running(self, child: int) -> list[tuple[str, float, float]]:
        found: list[tuple[str, float, float]] = []
        for slot in range(self.slots):
            offset = self._offset(child, slot)
            for _ in range(100):
                before, raw_id, soft, hard = _RECORD.unpack_from(self._memory, offset)
                (after,) = struct.unpack_from("<Q", self._memory, offset)
                if before == after and before % 2 == 0:
                    break
            task_id = raw_id.rstrip(b"\0").decode(errors="replace")
            if task_id:
                found.append((task_id, soft, hard))
        return found

    def reset(self, child: int) -> None:
        for slot in range(self.slots):
            offset = self._offset(child, slot)
            self._memory[offset:offset + _RECORD.size] = bytes(_RECORD.size)
            self._sequences[child * self.slots + slot] = 0


class ChildReporter:
    """The child's view of the board: its own row only."""

    def __init__(self, board: SharedBoard, child: int) -> None:
        self._board = board
        self._child = child

    def started(self, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None:
        self._board.started(self._child, slot, task_id, soft_deadline, hard_deadline)

    def finished(self, slot: int) -> None:
        self._board.finished(self._child, slot)
