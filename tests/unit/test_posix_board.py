"""SharedBoard: the running-task board in shared memory that worker children write and their parent reads."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import pytest

import hexq.adapters.posix.board as board_module
from hexq.adapters.posix.board import MAX_TASK_ID_BYTES, ChildReporter, SharedBoard

# A broadcast copy's id as an earlier hexq made them (<id>.<host>.<pid>.<hex>) on a Kubernetes pod: longer than
# the 64 bytes the board kept then. Such ids may still be queued, and any producer may send long ids.
# The real sequence struct, for the helpers below to use even while a test has patched the module's.
_SEQUENCE = board_module._SEQUENCE
POD_COPY_ID = "0123456789abcdef0123456789abcdef.hexq-worker-7d9f8b6c5d-x2k4q.default.svc.1234.a1b2c3"


def _offset(board: SharedBoard, child: int, slot: int) -> int:
    return board._index(child, slot) * board_module._RECORD_SIZE


def _sequence(board: SharedBoard, child: int, slot: int) -> int:
    value: int = _SEQUENCE.unpack_from(board._memory, _offset(board, child, slot))[0]
    return value


def _begin_write(board: SharedBoard, child: int, slot: int, task_id: str, written: float = 0.5) -> None:
    """Do what a writer does up to the middle of a write: odd sequence, part of the new payload copied."""
    offset = _offset(board, child, slot)
    sequence = _sequence(board, child, slot)
    _SEQUENCE.pack_into(board._memory, offset, sequence + 1)
    payload = board_module._payload(board_module._Entry(task_id, 99.0))
    start = offset + board_module._PAYLOAD_START
    end = start + int(len(payload) * written)
    board._memory[start:end] = payload[:end - start]


def _end_write(board: SharedBoard, child: int, slot: int, task_id: str) -> None:
    """Finish the write _begin_write started: the whole payload, then the even sequence."""
    offset = _offset(board, child, slot)
    payload = board_module._payload(board_module._Entry(task_id, 99.0))
    start = offset + board_module._PAYLOAD_START
    board._memory[start:start + len(payload)] = payload
    _SEQUENCE.pack_into(board._memory, offset, _sequence(board, child, slot) + 1)


class _HookedSequence:
    """Stands in for the sequence-number struct to run ``hook(n)`` after the n-th sequence read."""

    def __init__(self, hook: Callable[[int], None]) -> None:
        self._real = _SEQUENCE
        self._hook = hook
        self.size = self._real.size
        self.reads = 0

    def unpack_from(self, buffer: Any, offset: int = 0) -> tuple[Any, ...]:
        value = self._real.unpack_from(buffer, offset)
        self.reads += 1
        self._hook(self.reads)
        return value

    def pack_into(self, buffer: Any, offset: int, *values: Any) -> None:
        self._real.pack_into(buffer, offset, *values)


# -- round trips ---------------------------------------------------------------------------------------------


def test_a_new_board_runs_nothing() -> None:
    board = SharedBoard(2, 3)
    assert board.running(0) == []
    assert board.running(1) == []


def test_started_is_running_until_finished() -> None:
    board = SharedBoard(1, 2)
    board.started(0, 1, "task-a", 12.5)
    assert board.running(0) == [("task-a", 12.5)]
    board.finished(0, 1)
    assert board.running(0) == []


def test_a_slot_can_be_reused_after_finishing() -> None:
    board = SharedBoard(1, 1)
    for n in range(5):
        board.started(0, 0, f"task-{n}", float(n))
        assert board.running(0) == [(f"task-{n}", float(n))]
        board.finished(0, 0)
    assert board.running(0) == []


def test_no_hard_deadline_reads_back_as_zero() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "no-deadline", 0.0)
    assert board.running(0) == [("no-deadline", 0.0)]


def test_started_again_replaces_the_slot() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "first", 1.0)
    board.started(0, 0, "second", 2.0)
    assert board.running(0) == [("second", 2.0)]


def test_reset_clears_every_slot_of_that_child_only() -> None:
    board = SharedBoard(2, 2)
    board.started(0, 0, "a", 1.0)
    board.started(0, 1, "b", 2.0)
    board.started(1, 0, "c", 3.0)
    board.reset(0)
    assert board.running(0) == []
    assert board.running(1) == [("c", 3.0)]
    board.started(0, 1, "d", 4.0)  # the replacement child writes from a zeroed record
    assert board.running(0) == [("d", 4.0)]


def test_children_and_slots_are_independent() -> None:
    board = SharedBoard(3, 4)
    for child in range(3):
        for slot in range(4):
            if (child + slot) % 2 == 0:
                board.started(child, slot, f"t{child}.{slot}", child * 10 + slot)
    board.finished(2, 2)
    assert board.running(0) == [("t0.0", 0.0), ("t0.2", 2.0)]
    assert board.running(1) == [("t1.1", 11.0), ("t1.3", 13.0)]
    assert board.running(2) == [("t2.0", 20.0)]


def test_running_lists_by_slot_order() -> None:
    board = SharedBoard(1, 3)
    board.started(0, 2, "late-slot", 1.0)
    board.started(0, 0, "early-slot", 2.0)
    assert board.running(0) == [("early-slot", 2.0), ("late-slot", 1.0)]


def test_child_reporter_writes_its_own_row() -> None:
    board = SharedBoard(2, 2)
    reporter = ChildReporter(board, 1)
    reporter.started(1, "mine", 7.0)
    assert board.running(1) == [("mine", 7.0)]
    assert board.running(0) == []
    reporter.finished(1)
    assert board.running(1) == []


# -- ids are kept whole --------------------------------------------------------------------------------------


def test_the_limit_is_255_bytes() -> None:
    assert MAX_TASK_ID_BYTES == 255


def test_a_broadcast_copy_id_from_a_long_host_name_is_kept_whole() -> None:
    assert len(POD_COPY_ID.encode()) > 64
    board = SharedBoard(1, 1)
    board.started(0, 0, POD_COPY_ID, 5.0)
    assert board.running(0) == [(POD_COPY_ID, 5.0)]


def test_an_id_of_exactly_the_limit_fits() -> None:
    board = SharedBoard(1, 1)
    task_id = "x" * MAX_TASK_ID_BYTES
    board.started(0, 0, task_id, 1.0)
    assert board.running(0) == [(task_id, 1.0)]


def test_an_id_one_byte_too_long_is_refused_and_the_board_is_unchanged() -> None:
    board = SharedBoard(1, 2)
    board.started(0, 0, "already-running", 3.0)
    with pytest.raises(ValueError, match=r"256 bytes.*limit of 255 bytes"):
        board.started(0, 0, "y" * (MAX_TASK_ID_BYTES + 1), 9.0)
    with pytest.raises(ValueError, match="256 bytes"):
        board.started(0, 1, "y" * (MAX_TASK_ID_BYTES + 1), 9.0)
    assert board.running(0) == [("already-running", 3.0)]


def test_a_refused_id_does_not_disturb_the_sequence_number() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "ok", 1.0)
    before = _sequence(board, 0, 0)
    with pytest.raises(ValueError):
        board.started(0, 0, "z" * 1000, 1.0)
    assert _sequence(board, 0, 0) == before


def test_non_ascii_ids_round_trip() -> None:
    board = SharedBoard(1, 3)
    ids = ["tâche-été", "任务-日本語", "emoji-\U0001f680-\u00e9"]
    for slot, task_id in enumerate(ids):
        board.started(0, slot, task_id, float(slot))
    assert board.running(0) == [(task_id, float(slot)) for slot, task_id in enumerate(ids)]


def test_the_limit_counts_utf8_bytes_not_characters() -> None:
    board = SharedBoard(1, 1)
    fits = "é" * 127 + "x"  # 255 bytes in 128 characters
    board.started(0, 0, fits, 1.0)
    assert board.running(0) == [(fits, 1.0)]
    too_long = "é" * 128  # 256 bytes in 128 characters
    with pytest.raises(ValueError, match="256 bytes"):
        board.started(0, 0, too_long, 1.0)
    assert board.running(0) == [(fits, 1.0)]


def test_a_long_id_is_shortened_only_in_the_error_message() -> None:
    board = SharedBoard(1, 1)
    with pytest.raises(ValueError, match=r"10000 bytes.*'aaaa.*\.\.\.$"):
        board.started(0, 0, "a" * 10_000, 1.0)


def test_an_id_that_is_not_utf8_encodable_is_refused() -> None:
    board = SharedBoard(1, 1)
    with pytest.raises(ValueError, match="UTF-8"):
        board.started(0, 0, "bad-\udcff", 1.0)
    assert board.running(0) == []


def test_an_empty_id_is_still_reported_as_running() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "", 4.0)
    assert board.running(0) == [("", 4.0)]


# -- torn reads ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("written", [0.0, 0.5, 1.0])
def test_a_write_in_progress_is_not_read(written: float) -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "old-task", 1.0)
    assert board.running(0) == [("old-task", 1.0)]
    _begin_write(board, 0, 0, "new-task-that-is-being-written", written)
    # Neither the new id nor a mixture: the last consistent value.
    assert board.running(0) == [("old-task", 1.0)]
    _end_write(board, 0, 0, "new-task-that-is-being-written")
    assert board.running(0) == [("new-task-that-is-being-written", 99.0)]


def test_a_write_in_progress_before_any_read_shows_the_slot_free() -> None:
    board = SharedBoard(1, 1)
    _begin_write(board, 0, 0, "half", 0.5)
    assert board.running(0) == []


def test_a_finish_in_progress_still_shows_the_task() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "ending", 2.0)
    assert board.running(0) == [("ending", 2.0)]
    offset = _offset(board, 0, 0)
    _SEQUENCE.pack_into(board._memory, offset, _sequence(board, 0, 0) + 1)
    payload = board_module._payload(None)
    start = offset + board_module._PAYLOAD_START
    board._memory[start:start + len(payload)] = payload  # the free record copied, the sequence still odd
    assert board.running(0) == [("ending", 2.0)]


def test_a_write_starting_during_the_copy_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "old-task", 1.0)
    assert board.running(0) == [("old-task", 1.0)]

    def writer_starts(reads: int) -> None:
        if reads == 1:  # between the reader's first sequence read and its copy of the payload
            _begin_write(board, 0, 0, "new-task", 1.0)

    hooked = _HookedSequence(writer_starts)
    monkeypatch.setattr(board_module, "_SEQUENCE", hooked)
    # The copy holds the whole new payload (its CRC is valid) but the sequence changed under it: rejected.
    assert board.running(0) == [("old-task", 1.0)]
    assert hooked.reads > 2  # it did try again


def test_the_reader_retries_until_the_writer_finishes(monkeypatch: pytest.MonkeyPatch) -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "old-task", 1.0)
    assert board.running(0) == [("old-task", 1.0)]
    _begin_write(board, 0, 0, "new-task", 0.5)

    def writer_finishes(reads: int) -> None:
        if reads == 6:  # the writer resumes after the reader has seen three torn records
            _end_write(board, 0, 0, "new-task")

    monkeypatch.setattr(board_module, "_SEQUENCE", _HookedSequence(writer_finishes))
    assert board.running(0) == [("new-task", 99.0)]


def test_a_body_failing_its_checksum_is_treated_as_torn() -> None:
    # What a weakly ordered CPU could show: even, equal sequence numbers around a body that mixes two writes.
    board = SharedBoard(1, 1)
    board.started(0, 0, "good-task", 1.0)
    assert board.running(0) == [("good-task", 1.0)]
    id_start = board_module._PAYLOAD_START + board_module._CRC.size + struct.calcsize("<d?H")
    offset = _offset(board, 0, 0) + id_start + 1
    board._memory[offset:offset + 1] = b"X"  # "gXod-task": what no writer wrote
    assert board.running(0) == [("good-task", 1.0)]


def test_reset_clears_a_record_left_mid_write_by_a_killed_child() -> None:
    board = SharedBoard(1, 1)
    board.started(0, 0, "old-task", 1.0)
    assert board.running(0) == [("old-task", 1.0)]
    _begin_write(board, 0, 0, "never-finished", 0.5)
    board.reset(0)
    assert board.running(0) == []
    board.started(0, 0, "next", 2.0)
    assert board.running(0) == [("next", 2.0)]
    assert _sequence(board, 0, 0) % 2 == 0


def test_reset_forgets_what_the_dead_child_was_running() -> None:
    # The replacement child's first write is caught half done: that must not bring back the old child's task.
    board = SharedBoard(1, 1)
    board.started(0, 0, "old-child-task", 1.0)
    assert board.running(0) == [("old-child-task", 1.0)]
    board.reset(0)
    _begin_write(board, 0, 0, "new-child-task", 0.5)
    assert board.running(0) == []


def test_a_writer_after_an_odd_sequence_still_marks_its_write_odd() -> None:
    board = SharedBoard(1, 1)
    _begin_write(board, 0, 0, "abandoned", 0.5)  # odd, as if reset had not run
    seen: list[int] = []
    real_pack = _SEQUENCE.pack_into

    class _Recording:
        size = _SEQUENCE.size
        unpack_from = _SEQUENCE.unpack_from

        @staticmethod
        def pack_into(buffer: Any, offset: int, value: int) -> None:
            seen.append(value)
            real_pack(buffer, offset, value)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(board_module, "_SEQUENCE", _Recording)
        board.started(0, 0, "fresh", 1.0)
    assert [n % 2 for n in seen] == [1, 0]
    assert board.running(0) == [("fresh", 1.0)]


# -- across fork, as in production ---------------------------------------------------------------------------


def test_a_forked_child_writes_and_the_parent_reads() -> None:
    board = SharedBoard(2, 2)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            reporter = ChildReporter(board, 1)
            reporter.started(0, "finished-in-child", 1.0)
            reporter.finished(0)
            reporter.started(1, POD_COPY_ID, 42.5)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert board.running(1) == [(POD_COPY_ID, 42.5)]
    assert board.running(0) == []


def test_the_parent_sees_a_childs_writes_while_it_runs() -> None:
    board = SharedBoard(1, 1)
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            board.started(0, 0, "live-task", 3.0)
            os.write(ready_w, b"1")
            os.read(go_r, 1)  # stay alive until the parent has looked
            board.finished(0, 0)
            code = 0
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"1"
        assert board.running(0) == [("live-task", 3.0)]
    finally:
        os.write(go_w, b"1")
        _, status = os.waitpid(pid, 0)
        for fd in (ready_r, ready_w, go_r, go_w):
            os.close(fd)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert board.running(0) == []


# -- out of range --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("child", "slot"), [(-1, 0), (2, 0), (0, -1), (0, 3), (5, 5)])
def test_out_of_range_child_or_slot_raises_index_error(child: int, slot: int) -> None:
    board = SharedBoard(2, 3)
    with pytest.raises(IndexError, match=r"2 children x 3 slots"):
        board.started(child, slot, "t", 1.0)
    with pytest.raises(IndexError):
        board.finished(child, slot)


@pytest.mark.parametrize("child", [-1, 2])
def test_out_of_range_child_raises_on_read_and_reset(child: int) -> None:
    board = SharedBoard(2, 3)
    with pytest.raises(IndexError):
        board.running(child)
    with pytest.raises(IndexError):
        board.reset(child)
