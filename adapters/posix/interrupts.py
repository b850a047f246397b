"""A worker child hears of cancellation requests: the parent writes them on the board and sends SIGUSR1.

The handler runs in the child's main thread between two bytecodes, as SIGALRM's does for soft timeouts
(``alarm.py``). It reads the requests; for a running sync task among them it raises ``TaskCancelled`` inside
the task; for running async tasks it schedules their stop on the event loop (``call_soon_threadsafe``
writes to the loop's self-pipe, which wakes it even from a signal handler); tasks reserved and not started
yet are refused by the runner when their turn comes (``requested``).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from types import FrameType

from hexq.core.errors import TaskCancelled
from hexq.core.ports import RunningBoard

CANCEL_SIGNAL = signal.SIGUSR1


class SignalledCancellation:
    """The ``CancelRequests`` of a worker child; installs its SIGUSR1 handler when built."""

    def __init__(self, board: RunningBoard, child: int) -> None:
        self._board = board
        self._child = child
        self._requested: frozenset[str] = frozenset()
        self._sync: str | None = None
        self._async: dict[str, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        signal.signal(CANCEL_SIGNAL, self._heard)

    def requested(self, task_id: str) -> bool:
        return bool(self._requested) and task_id in self._requested

    def running(self, task_id: str, stop: Callable[[], None] | None) -> None:
        if stop is None:
            self._sync = task_id
        else:
            self._loop = asyncio.get_running_loop()
            self._async[task_id] = stop

    def finished(self, task_id: str) -> None:
        if self._sync == task_id:
            self._sync = None
        self._async.pop(task_id, None)

    def _heard(self, signum: int, frame: FrameType | None) -> None:
        self._requested = self._board.cancel_requests(self._child)
        if self._loop is not None:
            for task_id, stop in list(self._async.items()):
                if task_id in self._requested:
                    self._loop.call_soon_threadsafe(stop)
        running = self._sync
        if running is not None and running in self._requested:
            self._sync = None  # raised once: a second signal must not hit the task's own clean-up
            raise TaskCancelled(f"task {running} was cancelled")
