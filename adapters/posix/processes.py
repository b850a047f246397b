"""ProcessControl for a worker parent: children forked by a fork server, signals, psutil readings."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import psutil

from hexq.adapters.posix.forkserver import ChildMain, ForkServer
from hexq.adapters.posix.interrupts import CANCEL_SIGNAL
from hexq.core.ports import ChildExit


class PosixProcessControl:
    """Start with ``start(child_main)`` while the process has a single thread (see forkserver.py)."""

    def __init__(self, server: ForkServer, on_exit: Callable[[int], None] | None = None) -> None:
        self._server = server
        self._on_exit = on_exit  # told of every child that ended (the metrics exporter tidies its files)
        self._children: set[int] = set()

    @classmethod
    def start(cls, child_main: ChildMain, on_exit: Callable[[int], None] | None = None) -> PosixProcessControl:
        return cls(ForkServer.start(child_main), on_exit)

    def start_child(self, index: int, consumer: str) -> int:
        pid = self._server.spawn(index, consumer)
        self._children.add(pid)
        return pid

    def terminate(self, pid: int) -> None:
        self._send(pid, signal.SIGTERM)

    def kill(self, pid: int) -> None:
        self._send(pid, signal.SIGKILL)

    def interrupt(self, pid: int) -> None:
        self._send(pid, CANCEL_SIGNAL)

    def reap(self) -> list[ChildExit]:
        exits = self._server.exits()
        for exit_ in exits:
            self._children.discard(exit_.pid)
            if self._on_exit is not None:
                self._on_exit(exit_.pid)
        return exits

    def memory_percent(self) -> float:
        return float(psutil.virtual_memory().percent)

    def rss(self, pid: int) -> int:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0

    def close(self) -> None:
        self._server.close()

    def _send(self, pid: int, signum: int) -> None:
        # Only our own children: a pid reused by an unrelated process after a child was reaped is never hit.
        if pid not in self._children:
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass
