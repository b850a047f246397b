"""A worker child's log lines below WARNING are written a batch at a time (entrypoints/logs.py); these check
that none is lost, none is cut, the order is kept, and a WARNING is written at once."""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hexq.core.message import TaskMessage
from hexq.core.services.task_log import log_succeeded
from hexq.entrypoints.logs import FORMAT, PIPE_BUF, BatchingFileHandler, BatchingStreamHandler, LineFormatter, _Batching


class Writes(io.StringIO):
    """A stream that remembers each piece written to it between flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []
        self._since_flush = ""

    def write(self, text: str) -> int:
        self._since_flush += text
        return super().write(text)

    def flush(self) -> None:
        if self._since_flush:
            self.pieces.append(self._since_flush)
            self._since_flush = ""


@pytest.fixture
def task_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("hexq.task")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    for handler in logger.handlers:
        if isinstance(handler, _Batching):
            handler.stop_batching()  # no timer thread may outlive the test: later tests fork
    logger.handlers[:], logger.level, logger.propagate = saved


# The timer thread is then in the middle of its 60 s delay: stopping must not wait for it to run out.
@pytest.mark.timeout(20)
def test_stopping_batching_writes_what_is_kept_and_ends_the_timer_thread(task_logger: logging.Logger) -> None:
    handler, stream = _handler(task_logger)
    task_logger.info("kept")
    time.sleep(0.2)  # the timer thread wakes for the kept line and starts its delay
    handler.stop_batching()
    assert stream.getvalue() == "INFO kept\n"
    assert not [t for t in threading.enumerate() if t.name == "hexq-log-flush"]
    task_logger.info("at once")
    assert stream.getvalue() == "INFO kept\nINFO at once\n"


def _handler(logger: logging.Logger, max_delay: float = 60.0) -> tuple[BatchingStreamHandler, Writes]:
    stream = Writes()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler.start_batching(max_delay)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler, stream


def _message(n: int) -> TaskMessage:
    return TaskMessage(id=f"{n:032x}", name="noop", queue="default")


def test_info_lines_wait_for_a_flush_and_all_of_them_are_written_in_order(task_logger: logging.Logger) -> None:
    handler, stream = _handler(task_logger)
    for n in range(500):
        log_succeeded(_message(n), 1, 0.001)
    assert stream.getvalue() == ""  # kept: the batch boundary has not come yet
    handler.flush()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 500
    assert lines == [f"INFO noop[{n:032x}] succeeded in 0.001 s (queue default, attempt 1)" for n in range(500)]


def test_a_flush_writes_whole_lines_in_pieces_a_pipe_never_cuts(task_logger: logging.Logger) -> None:
    handler, stream = _handler(task_logger)
    for n in range(500):
        task_logger.info("line %d %s", n, "é" * (n % 40))  # some lines longer in bytes than in characters
    handler.flush()
    assert len(stream.pieces) > 1
    for piece in stream.pieces:
        assert piece.endswith("\n")
        assert len(piece.encode()) <= PIPE_BUF
    assert [line.split()[2] for line in stream.getvalue().splitlines()] == [str(n) for n in range(500)]


def test_a_warning_is_written_at_once_after_the_lines_kept_before_it(task_logger: logging.Logger) -> None:
    _, stream = _handler(task_logger)
    task_logger.info("first")
    task_logger.info("second")
    task_logger.warning("careful")
    assert stream.getvalue().splitlines() == ["INFO first", "INFO second", "WARNING careful"]
    task_logger.info("third")
    task_logger.error("broken")
    assert stream.getvalue().splitlines()[-2:] == ["INFO third", "ERROR broken"]


def test_kept_lines_are_written_by_the_timer_without_a_flush(task_logger: logging.Logger) -> None:
    _, stream = _handler(task_logger, max_delay=0.05)
    task_logger.info("late")
    deadline = time.monotonic() + 5
    while stream.getvalue() == "" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "INFO late\n"
    task_logger.info("again")  # the timer works for every batch, not just the first
    deadline = time.monotonic() + 5
    while "again" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.getvalue() == "INFO late\nINFO again\n"


def test_closing_a_file_handler_writes_the_kept_lines(task_logger: logging.Logger, tmp_path: Path) -> None:
    path = f"{tmp_path}/worker.log"
    handler = BatchingFileHandler(path)
    handler.start_batching(60.0)
    task_logger.handlers[:] = [handler]
    task_logger.setLevel(logging.INFO)
    task_logger.propagate = False
    for n in range(100):
        task_logger.info("kept %d", n)
    handler.close()  # what logging.shutdown() does before the fork server's os._exit
    with open(path) as written:
        assert written.read().splitlines() == [f"kept {n}" for n in range(100)]


def test_without_batching_each_line_is_written_at_once(task_logger: logging.Logger) -> None:
    stream = Writes()
    handler = BatchingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    task_logger.handlers[:] = [handler]
    task_logger.setLevel(logging.INFO)
    task_logger.propagate = False
    task_logger.info("now")
    assert stream.getvalue() == "now\n"


@pytest.mark.parametrize("created", [1700000000.0, 1700000000.9996, 1700000001.25, 946684799.999])
def test_the_line_formatter_writes_the_time_as_logging_does(created: float) -> None:
    ours, theirs = LineFormatter(), logging.Formatter(FORMAT)
    for when in (created, created + 0.0004, created + 1.0):  # a second it has made already, then a new one
        record = logging.makeLogRecord({"msg": "x", "task": ""})
        record.created = when
        record.msecs = int((when - int(when)) * 1000) + 0.0
        assert ours.formatTime(record) == theirs.formatTime(record)
        assert ours.format(record) == theirs.format(record)


def test_logging_shutdown_ends_batching_without_waiting_on_its_own_lock(task_logger: logging.Logger,
                                                                         tmp_path: Path) -> None:
    # logging.shutdown() holds each handler's lock while it calls close(), which ends the timer thread: that
    # thread must never block on the lock, or a worker child's exit would hang.
    handler = BatchingFileHandler(f"{tmp_path}/worker.log")
    handler.start_batching(0.01)
    task_logger.handlers[:] = [handler]
    task_logger.setLevel(logging.INFO)
    task_logger.propagate = False
    task_logger.info("kept")
    done = threading.Event()

    def shut_down() -> None:
        handler.acquire()
        try:
            time.sleep(0.05)  # the timer wakes meanwhile and finds the lock taken
            handler.close()
        finally:
            handler.release()
        done.set()

    threading.Thread(target=shut_down, daemon=True).start()
    assert done.wait(5), "close() under the handler's lock hung on the timer thread"
    with open(f"{tmp_path}/worker.log") as written:
        assert written.read() == "kept\n"
