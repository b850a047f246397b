"""ProcessControl over fork, signals and psutil."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable

import psutil

from hexq.adapters.posix.board import SharedBoard
from hexq.core.ports import ChildExit

log = logging.getLogger("hexq.worker")


class PosixProcessControl:
    def __init__(self) -> None:
        self._children: set[int] = set()

    def board(self, children: int, slots: int) -> SharedBoard:
        return SharedBoard(children, slots)

    def start_child(self, target: Callable[[], int]) -> int:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self._children.add(pid)
            return pid
        code = 1
        try:
            # The parent's handlers must not run in the child: it installs its own.
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGALRM):
                signal.signal(signum, signal.SIG_DFL)
            code = target()
        except BaseException:
            log.exception("worker child crashed")
        finally:
            logging.shutdown()
            os._exit(code)
        return 0  # unreachable

    def _send(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self, pid: int) -> None:
        self._send(pid, signal.SIGTERM)

    def interrupt_task(self, pid: int) -> None:
        self._send(pid, signal.SIGALRM)

    def kill(self, pid: int) -> None:
        self._send(pid, signal.SIGKILL)

    def reap(self) -> list[ChildExit]:
        exits: list[ChildExit] = []
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                self._children.discard(pid)
                exits.append(ChildExit(pid, None, None))
                continue
            if done == 0:
                continue
            self._children.discard(pid)
            if os.WIFSIGNALED(status):
                exits.append(ChildExit(pid, None, os.WTERMSIG(status)))
            else:
                exits.append(ChildExit(pid, os.WEXITSTATUS(status), None))
        return exits

    def is_alive(self, pid: int) -> bool:
        return pid in self._children

    def memory_percent(self) -> float:
        return float(psutil.virtual_memory().percent)

    def rss(self, pid: int) -> int:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return 0

    def monotonic(self) -> float:
        # CLOCK_MONOTONIC is system-wide on Linux and macOS, so deadlines written by a child make sense
        # to the parent.
        return time.monotonic()
