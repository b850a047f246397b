"""Stopping a running task whose cancellation was requested: what a worker child knows of the requests for
its tasks, and how a run is stopped.

The worker parent learns of the requests at each lease renewal and interrupts the child, which reads them
(``hexq.adapters.posix.interrupts``). A task reserved and not started yet is then never started
(``TaskRunner.prepare``); a running sync task gets ``TaskCancelled`` raised in it, the way a soft timeout
is raised; a running async task's asyncio task is cancelled. Either way the run ends as "cancelled": the
task is discarded, never retried. A task that swallows it is killed with its child after ``cancel_grace``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import Protocol

import attrs


class CancelRequests(Protocol):
    """What a worker child knows of the cancellation requests for its tasks (told by its parent)."""

    def requested(self, task_id: str) -> bool:
        """True when this task's cancellation was requested: it must not start."""
        ...

    def running(self, task_id: str, stop: Callable[[], None] | None) -> None:
        """``task_id`` runs until ``finished``: a request for it calls ``stop`` (an async task), or raises
        TaskCancelled in it (``stop`` None: a sync task, running in the child's main thread)."""
        ...

    def finished(self, task_id: str) -> None: ...


class NoCancelRequests:
    """Where nobody can ask (in-process runs): a task is cancelled before it runs, or not at all."""

    def requested(self, task_id: str) -> bool:
        return False

    def running(self, task_id: str, stop: Callable[[], None] | None) -> None:
        return None

    def finished(self, task_id: str) -> None:
        return None


@attrs.define
class Stopper:
    """Cancels the asyncio task running one async task run, once, and only while that run lasts: a request
    heard just after the run ended must not cancel what the same asyncio task does next."""

    task: asyncio.Task[object] | None
    active: bool = True
    stopped: bool = False

    def stop(self) -> None:
        if self.active and not self.stopped and self.task is not None:
            self.stopped = True
            self.task.cancel()

    def absorb(self) -> None:
        """The cancellation was ours and is handled: on Pythons that count cancellation requests, take it
        back, so that code after the run (hooks, timeouts) is not taken for being cancelled."""
        if sys.version_info >= (3, 11) and self.task is not None:
            self.task.uncancel()
