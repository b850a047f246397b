"""Logging for workers and schedulers: every line about a task names its id, task, queue and attempt.

A worker child logs a line per finished task (``hexq.task``, at INFO), so its logging path is on every task's
path, and it is kept cheap (measured in README, "Logs and traces"):

- ``LineFormatter`` makes the time's text once per second instead of once per line;
- in a worker child, ``batch_logs()`` turns on batching: lines below WARNING are kept in memory and written
  together, in pieces of whole lines of at most ``PIPE_BUF`` bytes (so that no other process writing to the
  same pipe can cut one), at the child's batch boundaries (``flush_logs()``: before it reserves again, which
  may block), at the latest ``MAX_DELAY`` seconds after the first waiting line (a timer thread: a long task
  does not hold them back), and when it exits. A WARNING or worse is written at once, after the lines still
  waiting, so the order of the child's lines is kept. What a task prints goes straight to its stream and may
  come before INFO lines still waiting.
- A child killed with SIGKILL (a hard timeout, or by hand) loses the INFO lines still waiting, at most
  ``MAX_DELAY`` seconds of them; its WARNING and ERROR lines were written already.
"""

from __future__ import annotations

import logging
import select
import sys
import threading
import time

from hexq.core.registry import current_attempt, current_task

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(task)s: %(message)s"
MAX_DELAY = 0.1  # seconds a batched line may wait before it is written
PIPE_BUF = getattr(select, "PIPE_BUF", 4096)  # a write to a pipe this long or shorter is never interleaved


class TaskContextFilter(logging.Filter):
    """Adds ``%(task)s``: `` task=<name> id=<id> queue=<q> attempt=<n>`` inside a task, else empty (and empty on
    a task's finish line, which says all that itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "task_outcome"):
            # A task's finish line (core/services/task_log.py) names the task itself and carries its fields.
            record.task = ""
            return True
        message = current_task.get()
        if message is None:
            record.task = ""
            record.task_id = record.task_name = record.task_queue = ""
            record.task_attempt = 0
        else:
            attempt = current_attempt.get()
            record.task = f" task={message.name} id={message.id} queue={message.queue} attempt={attempt}"
            record.task_id, record.task_name, record.task_queue = message.id, message.name, message.queue
            record.task_attempt = attempt
        return True


class LineFormatter(logging.Formatter):
    """``logging.Formatter`` with the same output, whose ``asctime`` text is made once per second: the
    ``localtime`` and ``strftime`` of every line were a sixth of a line's cost."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt)
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._second_text},{int(record.msecs):03d}"  # logging's default_msec_format, "%s,%03d"


class _Batching(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, once ``start_batching()`` is called, keeps lines below WARNING until
    ``flush()`` (see the module's docstring); before that it writes each line at once, as logging's own."""

    _pending: list[str]
    _wake: threading.Event | None = None
    _timer: threading.Thread | None = None
    _stop: threading.Event | None = None  # set by stop_batching: the timer thread ends at once, even mid-delay

    def start_batching(self, max_delay: float = MAX_DELAY) -> None:
        self._pending = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._flush_late, args=(max_delay,), name="hexq-log-flush",
                                       daemon=True)
        self._timer.start()

    def stop_batching(self) -> None:
        """Write what is kept and end the timer thread: each line is written at once again. A process that
        forks afterwards (a test suite, a task) has no thread of ours running."""
        wake, timer, stop = self._wake, self._timer, self._stop
        if wake is None or timer is None or stop is None:
            return
        stop.set()
        wake.set()
        timer.join()
        self.flush()
        self._wake = self._timer = None

    def close(self) -> None:
        self.stop_batching()
        super().close()

    def emit(self, record: logging.LogRecord) -> None:
        wake = self._wake
        if wake is None or record.levelno >= logging.WARNING:
            if wake is not None and self._pending:
                self._write_pending()  # the lines before it first (emit runs under the handler's lock)
            super().emit(record)
            return
        try:
            self._pending.append(self.format(record) + self.terminator)
        except Exception:
            self.handleError(record)
            return
        if len(self._pending) == 1:
            wake.set()

    def flush(self) -> None:
        self.acquire()
        try:
            if self._wake is not None and self._pending:
                self._write_pending()
            super().flush()
        finally:
            self.release()

    def _write_pending(self) -> None:
        lines, self._pending = self._pending, []
        stream = self.stream
        if stream is None:  # a FileHandler closed (logging.shutdown ran): nowhere to write any more
            return
        try:
            piece: list[str] = []
            size = 0
            for line in lines:
                length = len(line) if line.isascii() else len(line.encode(getattr(stream, "encoding", None)
                                                                          or "utf-8", "replace"))
                if piece and size + length > PIPE_BUF:
                    stream.write("".join(piece))
                    stream.flush()
                    piece, size = [], 0
                piece.append(line)
                size += length
            if piece:
                stream.write("".join(piece))
                stream.flush()
        except Exception:
            # logging's own handlers report a failed write (a closed or full stream) and go on: so does this.
            self.handleError(logging.makeLogRecord({"msg": "could not write %d log lines", "args": (len(lines),)}))

    def _flush_late(self, max_delay: float) -> None:
        wake, stop = self._wake, self._stop
        assert wake is not None and stop is not None
        while True:
            wake.wait()
            if stop.wait(max_delay):  # set: stopping (not a sleep, which would hold stop_batching up to max_delay)
                return
            wake.clear()  # before the flush: a line kept after it sets it again
            # Never wait for the handler's lock: whoever holds it writes the kept lines itself (a flush), and
            # logging.shutdown holds it while close() waits for this thread to end (stop_batching).
            if self.lock is not None and self.lock.acquire(timeout=0.05):
                try:
                    if self._pending:
                        self._write_pending()
                finally:
                    self.lock.release()
            else:
                wake.set()  # try again after the next delay


class BatchingStreamHandler(_Batching):
    """``StreamHandler`` that batches in a worker child."""


class BatchingFileHandler(_Batching, logging.FileHandler):
    """``FileHandler`` that batches in a worker child."""


def setup_logging(level: str | int, log_file: str | None) -> None:
    handler: logging.Handler = BatchingFileHandler(log_file) if log_file else BatchingStreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Library chatter (redis-py's per-connection notices, asyncio's selector choice) drowns task logs.
    for noisy in ("redis", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def batch_logs() -> bool:
    """In a worker child (after the fork): batch the lines below WARNING of the handlers ``setup_logging``
    made; ``flush_logs`` (and, at the latest, a timer ``MAX_DELAY`` seconds later) writes them. Says whether
    it did: not when INFO is not logged at all (nothing to batch) or the handlers are someone else's."""
    root = logging.getLogger()
    if not root.isEnabledFor(logging.INFO):
        return False
    started = False
    for handler in root.handlers:
        if isinstance(handler, _Batching) and handler._wake is None:
            handler.start_batching()
            started = True
    return started


def flush_logs() -> None:
    """Write the lines a worker child is keeping: at its batch boundaries and before it exits."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, _Batching):
            handler.flush()
