"""``TaskHandle``: what ``.delay()`` returns, a ``str`` equal to the task id that can also read the task's
status and wait for its result. Kept in a module of its own so that cancellation (``.cancel()``) and async
producers (``.acancel()``) add their methods here."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hexq.core.outcome import Outcome
from hexq.core.ports import Cancelled
from hexq.core.status import TaskStatus

if TYPE_CHECKING:
    from hexq.core.services.results import ResultReader
    from hexq.entrypoints.app import HexQ


class TaskHandle(str):
    """A task id (``handle == "0190..."``, ``handle.id``) with a way back to the task.

    ``status()`` reads where the task is now; ``result(timeout=None)`` waits for it to end and returns its
    return value, or raises ``TaskFailed`` (it failed, was dead-lettered, cancelled or expired: see
    ``TaskFailed.status``), ``ResultNotFound`` (the broker holds neither the task nor its outcome), or
    ``TimeoutError``. Results are kept only for tasks with ``keep_result`` set (on the app, the queue or the
    task): without it ``status()`` still tells queued, scheduled and running apart, and then reads unknown.

    ``app.handle(task_id)`` rebuilds one in any process. A handle pickles as its id and its app is the one
    that made it; it never holds a connection.
    """

    _app: HexQ  # (a str subclass cannot have __slots__ of its own)

    def __new__(cls, task_id: str, app: HexQ) -> TaskHandle:
        handle = super().__new__(cls, task_id)
        handle._app = app
        return handle

    @property
    def id(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"<TaskHandle {self.id}>"

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        return str, (self.id,)  # the app is not picklable: a pickled handle is its id

    def _reader(self) -> ResultReader:
        from hexq.entrypoints import bootstrap

        return bootstrap.result_reader(self._app)

    def status(self) -> TaskStatus:
        """Queued, scheduled (its eta, or a retry's delay), running, or how it ended: succeeded, failed, dead,
        cancelled, expired; unknown when the broker holds neither the task nor its kept outcome."""
        return self._reader().status(self.id)

    def outcome(self, timeout: float | None = None) -> Outcome:
        """How the task ended (status, value or error, when), waiting as ``result`` does, without raising
        for a failure."""
        return self._reader().outcome(self.id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The task's return value, waiting up to ``timeout`` seconds (None: as long as it takes) for it to
        end, blocked on the broker (no polling). Raises ``TaskFailed`` if it did not succeed, ``TimeoutError``
        if it has not ended in time (it keeps going), ``ResultNotFound`` if the broker knows nothing of it."""
        return self._reader().result(self.id, timeout)

    def cancel(self) -> Cancelled:
        """Cancel the task (``app.cancel``): removed if it waits, stopped if it runs; the answer says which, or
        that it had finished or is unknown (nothing done)."""
        return self._app.cancel(self.id)

    async def aresult(self, timeout: float | None = None) -> Any:
        """``result`` for async code: the blocking wait runs in a thread, so the event loop is never blocked.
        Cancelling the await leaves that thread waiting until its current slice of the wait ends (at most
        ``hexq.core.services.results.WAIT_SLICE``, 5 s)."""
        return await asyncio.to_thread(self.result, timeout)

    async def acancel(self) -> Cancelled:
        """Cancel this task from async code and say what was found (``Cancelled``): ``app.acancel``, the
        broker's cancel in a thread, so the event loop is never blocked."""
        return await self._app.acancel(self.id)
