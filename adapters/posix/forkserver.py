"""A fork server: a small process that forks the worker's children, so that no child is ever forked from a
process running other threads.

The worker parent runs a second thread for its broker chores. Forking a process that has threads copies
the locks those threads hold at that instant (a logging handler's, a connection pool's), and a child that
then takes such a lock waits forever; Python 3.12+ warns about exactly this. So the parent forks this server
first, while it has only one thread, and from then on the server forks each child on request. The server
never starts a thread, opens a connection or runs a task: it reads requests, forks, reaps, and reports.

Protocol, one line each, over two pipes:
  parent -> server  ``spawn <index> <consumer>``
  server -> parent  ``pid <pid>`` (the reply to a spawn), ``exit <pid> <code or -> <signal or ->``
When the parent's end of the request pipe closes (a clean exit, or the parent died), the server sends
SIGTERM to the children still running, so they hand back their tasks, waits for them, and exits.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from hexq.core.ports import ChildExit

log = logging.getLogger("hexq.worker")

ChildMain = Callable[[int, str], int]
_POLL_SECONDS = 0.01  # how often the server reaps while no request arrives: exits are reported this fast
_ORPHAN_GRACE_SECONDS = 30.0
_HELD = {signal.SIGINT, signal.SIGTERM}  # after the parent vanished: how long children get to finish before SIGKILL


class ForkServerGone(RuntimeError):
    """The fork server died: no child can be started any more."""


class ForkServer:
    """The parent's handle on the server. Only the thread that started it may call it."""

    def __init__(self, pid: int, requests: int, replies: int) -> None:
        self.pid = pid
        self._requests = requests
        self._replies = replies
        self._buffer = b""
        self._exits: list[ChildExit] = []
        self._gone = False

    @classmethod
    def start(cls, child_main: ChildMain) -> ForkServer:
        """Fork the server; call it while this process has one thread."""
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(request_write)
            os.close(reply_read)
            code = 1
            try:
                code = _Server(child_main, request_read, reply_write).serve()
            except BaseException:
                log.exception("fork server crashed")
            finally:
                os._exit(code)
        os.close(request_read)
        os.close(reply_write)
        os.set_blocking(reply_read, False)
        return cls(pid, request_write, reply_read)

    def spawn(self, index: int, consumer: str) -> int:
        if self._gone:
            raise ForkServerGone("the fork server has exited: cannot start worker children")
        try:
            os.write(self._requests, f"spawn {index} {consumer}\n".encode())
        except BrokenPipeError:
            self._gone = True
            raise ForkServerGone("the fork server has exited: cannot start worker children") from None
        pid: int | None = None
        while pid is None:
            for line in self._read(block=True):  # exits reported meanwhile are kept for the next reap
                kind, _, rest = line.partition(" ")
                if kind == "pid":
                    pid = int(rest)
                else:
                    self._exits.append(_exit_of(rest))
        return pid

    def exits(self) -> list[ChildExit]:
        """Children that ended since the last call, without blocking."""
        for line in self._read(block=False):
            kind, _, rest = line.partition(" ")
            if kind == "exit":
                self._exits.append(_exit_of(rest))
        found, self._exits = self._exits, []
        return found

    @property
    def gone(self) -> bool:
        return self._gone

    def close(self, timeout: float = 5.0) -> None:
        """Tell the server to stop (its children should be gone by now) and reap it."""
        if self._requests >= 0:
            os.close(self._requests)
            self._requests = -1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                done, _ = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            time.sleep(0.01)
        else:
            _signal(self.pid, signal.SIGKILL)
            _reap_quietly(self.pid)
        os.close(self._replies)

    def _read(self, block: bool) -> list[str]:
        while True:
            if block and b"\n" not in self._buffer:
                select.select([self._replies], [], [], 1.0)
            try:
                chunk = os.read(self._replies, 65536)
            except BlockingIOError:
                chunk = None
            if chunk == b"":
                self._gone = True
                raise ForkServerGone("the fork server has exited: cannot start or watch worker children")
            if chunk:
                self._buffer += chunk
            if b"\n" in self._buffer or not block:
                *lines, self._buffer = self._buffer.split(b"\n")
                return [line.decode() for line in lines]


class _Server:
    def __init__(self, child_main: ChildMain, requests: int, replies: int) -> None:
        self._child_main = child_main
        self._requests = requests
        self._replies = replies
        self._children: set[int] = set()

    def serve(self) -> int:
        # Ctrl-C reaches the whole process group and systemd signals the whole cgroup: the parent decides
        # when children stop, and the server outlives them to report their exits. Blocked rather than
        # ignored: a child inherits the mask, so a SIGTERM sent before it is ready waits instead of being lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
        buffer = b""
        while True:
            ready, _, _ = select.select([self._requests], [], [], _POLL_SECONDS)
            if ready:
                chunk = os.read(self._requests, 65536)
                if not chunk:
                    return self._orphaned()
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._handle(line.decode())
            self._reap()

    def _handle(self, line: str) -> None:
        kind, index, consumer = line.split(" ", 2)
        if kind != "spawn":
            raise ValueError(f"fork server: unknown request {line!r}")
        pid = os.fork()
        if pid == 0:
            os.close(self._requests)
            os.close(self._replies)
            self._run_child(int(index), consumer)
        self._children.add(pid)
        self._send(f"pid {pid}")

    def _run_child(self, index: int, consumer: str) -> None:
        code = 1
        try:
            for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGALRM):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C means
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
            code = self._child_main(index, consumer)
        except BaseException:
            log.exception("worker child crashed")
        finally:
            logging.shutdown()
            os._exit(code)

    def _reap(self) -> None:
        for pid in list(self._children):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, -1
            if not done:
                continue
            self._children.discard(pid)
            if status == -1:
                self._send(f"exit {pid} - -")
            elif os.WIFSIGNALED(status):
                self._send(f"exit {pid} - {os.WTERMSIG(status)}")
            else:
                self._send(f"exit {pid} {os.WEXITSTATUS(status)} -")

    def _send(self, line: str) -> None:
        try:
            os.write(self._replies, (line + "\n").encode())
        except BrokenPipeError:
            pass  # the parent is gone; _orphaned() cleans up once the request pipe says so

    def _orphaned(self) -> int:
        """The parent closed the request pipe: stop the children that are left, then exit."""
        for pid in self._children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + _ORPHAN_GRACE_SECONDS
        while self._children and time.monotonic() < deadline:
            self._reap()
            time.sleep(_POLL_SECONDS)
        for pid in self._children:
            _signal(pid, signal.SIGKILL)
            _reap_quietly(pid)
        return 0


def _exit_of(rest: str) -> ChildExit:
    pid, code, signum = rest.split(" ")
    return ChildExit(int(pid), None if code == "-" else int(code), None if signum == "-" else int(signum))


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _reap_quietly(pid: int) -> None:
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
