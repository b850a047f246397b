"""Telling a task's own CancelledError from the cancellation of the asyncio task that runs it.

A CancelledError out of a task run means one of two things. Either the task raised it itself (it awaited a
future that something else cancelled): the task failed, and that is recorded like any other exception. Or
the asyncio task running it is being cancelled (``asyncio.run`` cancels what is left when a worker child
stops): the run then has no outcome, the cancellation must go on up, and the task, still owned, comes back
as after a crash. hexq's own soft timeout is neither: ``wait_for`` turns it into TimeoutError.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from hexq.core.services.invoke import Escaped, contained

TaskBody = Coroutine[Any, Any, Any]


class OwnCancellation(Exception):
    """The task itself raised CancelledError; carries it, to be recorded as the task's failure."""

    def __init__(self, original: asyncio.CancelledError) -> None:
        super().__init__(repr(original))
        self.original = original


async def run_in_own_task(body: TaskBody) -> Any:
    """Run ``body`` in an asyncio task of its own, so that its cancellation cannot be mistaken for ours.

    Exact on every Python, but it costs a task and a loop iteration per run: the fallback for Pythons
    without ``Task.cancelling()`` (3.10).
    """
    inner = asyncio.ensure_future(contained(_own_cancellation_marked(body)))
    try:
        await asyncio.wait((inner,))
    except asyncio.CancelledError:
        inner.cancel()  # we are being cancelled, and the body with us: let it unwind first
        await asyncio.wait((inner,))
        if not inner.cancelled():
            inner.exception()  # retrieved, or asyncio would log it as never retrieved
        raise
    try:
        return inner.result()
    except Escaped as escaped:
        raise escaped.original from None


async def _own_cancellation_marked(body: TaskBody) -> Any:
    # Only the body can cancel its own task (we cancel it only when we are cancelled ourselves, and then its
    # outcome is dropped), so any CancelledError here is the task's own.
    try:
        return await body
    except asyncio.CancelledError as exc:
        raise OwnCancellation(exc) from None


if sys.version_info >= (3, 11):

    async def run_checking_cancelling(body: TaskBody) -> Any:
        """Run ``body`` in the current asyncio task: a CancelledError is ours when someone asked to cancel
        this task (``Task.cancelling()``), else the task's own.

        A task that cancels the asyncio task running it is taken at its word, as a shutdown would be.
        """
        try:
            return await body
        except asyncio.CancelledError as exc:
            running = asyncio.current_task()
            if running is not None and running.cancelling():
                raise
            raise OwnCancellation(exc) from None

    run_task_body = run_checking_cancelling
else:
    run_task_body = run_in_own_task
