"""Reading tasks' status and outcomes for their handles: ``.status()``, ``.result()``.

Waiting never polls: ``Results.wait_outcome`` blocks on the broker's own notification (a blocking wait on the
task's wake-up list on Redis). It is asked for at most ``WAIT_SLICE`` seconds at a time; between two waits one
``task_state`` read notices a task that ended without keeping an outcome (``keep_result`` unset in the app the
workers run), or whose outcome expired, so that ``.result()`` without a timeout raises instead of waiting
for ever. A task that is still live costs three commands per ``WAIT_SLICE`` of waiting on Redis.
"""

from __future__ import annotations

from typing import Any

import attrs

from hexq.core.errors import ConfigError, ResultNotFound, TaskFailed
from hexq.core.outcome import Outcome, decode_outcome
from hexq.core.ports import Clock, Results
from hexq.core.status import TaskStatus
from hexq.core.validation import is_number

WAIT_SLICE = 5.0


def value_of(task_id: str, outcome: Outcome) -> Any:
    """The task's return value, or TaskFailed for any other ending (failed, dead, cancelled, expired)."""
    if outcome.status is TaskStatus.SUCCEEDED:
        return outcome.value
    error = outcome.error
    raise TaskFailed(task_id, outcome.task, outcome.status.value, error.type if error else outcome.status.value,
                     error.message if error else "", error.traceback if error else "")


@attrs.frozen
class ResultReader:
    broker: Results
    clock: Clock
    wait_slice: float = WAIT_SLICE  # the longest single wait between two task_state reads

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def status(self, task_id: str) -> TaskStatus:
        """Where the task is: its live state while the broker holds it, else how it ended (its kept outcome),
        else UNKNOWN."""
        state = self.broker.task_state(task_id, self._now_ms())
        if state.live is not None:
            return state.live
        if state.outcome is None:
            return TaskStatus.UNKNOWN
        return decode_outcome(state.outcome).status

    def outcome(self, task_id: str, timeout: float | None = None) -> Outcome:
        """The task's outcome, waiting up to ``timeout`` seconds (None: as long as it takes) for it to end.
        Raises ResultNotFound when the broker holds neither the task nor its outcome, TimeoutError when the
        task has not ended in time."""
        if timeout is not None and (not is_number(timeout) or not timeout >= 0):
            raise ConfigError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else self.clock.monotonic() + timeout
        while True:
            state = self.broker.task_state(task_id, self._now_ms())
            if state.live is None:
                if state.outcome is None:
                    raise ResultNotFound(task_id)
                return decode_outcome(state.outcome)
            left = self.wait_slice if deadline is None else deadline - self.clock.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_id} did not finish within {timeout:g} s (it is {state.live.value}; "
                                   f"it keeps running: call result() again to wait longer)")
            document = self.broker.wait_outcome(task_id, self._now_ms(), min(left, self.wait_slice))
            if document is not None:
                return decode_outcome(document)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's return value (see ``outcome``); TaskFailed if it ended any other way."""
        return value_of(task_id, self.outcome(task_id, timeout))
