"""Soft timeouts for sync tasks: SIGALRM (setitimer) raises SoftTimeout in the child's main thread.

setitimer has microsecond resolution, so a soft timeout fires on time instead of on a one-second tick.
"""

from __future__ import annotations

import signal
from types import FrameType

from hexq.core.errors import SoftTimeout


class SignalAlarm:
    def __init__(self) -> None:
        self._armed = False
        self._seconds = 0.0
        signal.signal(signal.SIGALRM, self._fire)

    def arm(self, seconds: float) -> None:
        self._armed = True
        self._seconds = seconds
        signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.001))

    def disarm(self) -> None:
        self._armed = False
        signal.setitimer(signal.ITIMER_REAL, 0)

    def _fire(self, signum: int, frame: FrameType | None) -> None:
        # A late signal after the task finished must not hit unrelated code.
        if self._armed:
            self._armed = False
            raise SoftTimeout(f"task ran past its soft timeout of {self._seconds}s")
