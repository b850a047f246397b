"""Every outgoing task is built here: tasks sent by producers, cron ticks and broadcasts (whose per-worker
copies the broker stores, see ``Producer.broadcast``), all with one id scheme that sorts by creation time
and takes its time from the Clock."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from hexq.core import unique
from hexq.core.message import Codec, TaskMessage
from hexq.core.ports import Clock, OutgoingTask


class TaskIds:
    """Ids like UUIDv7: 16 hex digits of nanoseconds, then 8 hex digits naming the process and an 8-digit
    counter, 32 in all.

    Brokers order waiting tasks due in the same millisecond by id, so time-ordered ids keep them in the
    order they were sent. ``node`` names the process (random, and new after a fork: the system adapter
    provides it) so two processes never make the same id; the counter keeps one process's ids unique and
    increasing even when the clock stands still or steps back.
    """

    def __init__(self, clock: Clock, node: Callable[[], str]) -> None:
        self._clock = clock
        self._node = node
        self._counter = itertools.count()
        self._last = 0

    def new(self) -> str:
        nanos = max(int(self._clock.now() * 1e9), self._last + 1)
        self._last = nanos
        return f"{nanos:016x}{self._node()}{next(self._counter) & 0xFFFFFFFF:08x}"


@attrs.frozen
class TaskFactory:
    codec: Codec
    ids: TaskIds

    def new(self, name: str, queue: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], now: float,
            eta: float | None = None, broadcast: bool = False, expires: float | None = None,
            unique_ms: int | None = None, unique_key: Any = None, *,
            trace: Mapping[str, str] | None = None) -> OutgoingTask:
        """A first attempt of task ``name``; ``eta`` in epoch seconds (None: runnable now); ``expires``, the
        deadline in epoch seconds (None: none). ``unique_ms``: a unique task's window, its identity taken from
        ``unique_key`` (when not None) or the arguments. ``trace``, the sender's trace context (None: none)."""
        task_id = self.ids.new()
        lock = None
        if unique_ms is not None:
            lock = unique.lock_for(name, unique_ms, now, args, kwargs, unique_key)
            task_id = unique.unique_id(task_id, lock)
        if eta is None:
            payload = self.codec.encode_fields(task_id, name, queue, args, kwargs, 0, now, None, broadcast, expires,
                                               trace=trace)
            return OutgoingTask(task_id, queue, payload, unique=lock)
        message = TaskMessage(task_id, name, queue, tuple(args), kwargs, 0, now, eta, broadcast, expires, trace)
        # Rounded up: a task due at 12.3456 s must not become visible at 12.345 s (eta is never early). A
        # unique task has no dedup key: its lock is its identity, across queues.
        return OutgoingTask(task_id, queue, self.codec.encode(message), math.ceil(eta * 1000),
                            None if lock else message.fingerprint(), lock)
