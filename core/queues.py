"""Queues and strict priority order (lower number = higher priority, as in WakaQ)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

import attrs

from hexq.core.durations import keep_result_seconds, to_seconds
from hexq.core.errors import ConfigError, UnknownQueueError
from hexq.core.rate_limit import RateLimit, rate_limit_of
from hexq.core.validation import check_name, optional_whole_number, whole_number

QUEUE_NAME_MAX_LENGTH = 200
# A worker's private queue, which the broker fills with its copies of each broadcast and its children serve
# first, is this prefix and the worker id; '@' cannot appear in a user queue name (check_name).
BROADCAST_QUEUE_PREFIX = "@broadcast."


def broadcast_queue(worker_id: str) -> str:
    """The worker's private queue for broadcasts."""
    return BROADCAST_QUEUE_PREFIX + worker_id


def check_queue_name(name: object) -> str:
    return check_name(name, "queue name", QUEUE_NAME_MAX_LENGTH)


def check_timeouts(soft: float | None, hard: float | None, owner: str) -> None:
    """Refuse the timeouts of one level (the app, a queue or a task) that cannot mean what they say.

    None is the only "no timeout": 0 reads as "no time at all" to some and as "off" to others (WakaQ users
    omit the option instead), so it is refused rather than guessed.
    """
    for label, value in (("soft_timeout", soft), ("hard_timeout", hard)):
        if value == 0:
            raise ConfigError(f"{owner}: {label} of 0 is not a timeout; use None for no timeout")
    if soft is not None and hard is not None and hard <= soft:
        raise ConfigError(f"{owner}: hard_timeout ({hard}s) must be greater than soft_timeout ({soft}s)")


def _soft(value: Any) -> float | None:
    return to_seconds(value, "queue soft_timeout")


def _hard(value: Any) -> float | None:
    return to_seconds(value, "queue hard_timeout")


def _keep(value: Any) -> float | None:
    return keep_result_seconds(value, "queue keep_result")


def _retries(value: Any) -> int | None:
    return optional_whole_number(value, "queue max_retries")


def _spelled_rate_limit(value: RateLimit | str | None) -> RateLimit | None:
    # Parsed by Queue.__attrs_post_init__, where the error can name the queue; this only types __init__.
    return cast("RateLimit | None", value)


def _priority(value: object) -> int:
    # Any int: -1 is "unset" (see Queue) and other negative numbers are treated the same way.
    return whole_number(value, "queue priority", minimum=None)


@attrs.frozen
class Queue:
    """A named queue with a priority, optional per-queue timeout/retry defaults, an optional global rate
    limit on the tasks started from it (``rate_limit="100/m"``, see ``hexq.core.rate_limit``), and
    ``keep_result`` (how long the outcomes of its tasks are kept, unless a task says otherwise).

    ``priority=-1`` means "unset": such a queue sorts after every numbered queue, as a bare string does.
    """

    name: str = attrs.field(converter=check_queue_name)
    priority: int = attrs.field(default=-1, converter=_priority)
    max_retries: int | None = attrs.field(default=None, converter=_retries)
    soft_timeout: float | None = attrs.field(default=None, converter=_soft)
    hard_timeout: float | None = attrs.field(default=None, converter=_hard)
    rate_limit: RateLimit | None = attrs.field(default=None, kw_only=True, converter=_spelled_rate_limit)
    keep_result: float | None = attrs.field(default=None, converter=_keep, kw_only=True)

    def __attrs_post_init__(self) -> None:
        check_timeouts(self.soft_timeout, self.hard_timeout, f"queue {self.name!r}")
        # Parsed here rather than by a converter, so that a bad spelling's error names the queue.
        object.__setattr__(self, "rate_limit", rate_limit_of(self.rate_limit, f"queue {self.name!r}"))

    @classmethod
    def create(cls, spec: Any) -> Queue:
        """Accept a Queue, ``(priority, name)``, ``(name, priority)`` or a bare name, as WakaQ does."""
        if isinstance(spec, Queue):
            return spec
        if isinstance(spec, str):
            return cls(spec)
        if isinstance(spec, (tuple, list)) and len(spec) == 2:
            first, second = spec
            if isinstance(first, int) and isinstance(second, str):
                return cls(second, priority=first)
            if isinstance(first, str) and isinstance(second, int):
                return cls(first, priority=second)
        raise ConfigError(
            f"invalid queue {spec!r}: use Queue(name, priority=...), (priority, name), (name, priority) "
            "or a name"
        )


@attrs.frozen
class QueueSet:
    """The app's queues in strict priority order: index 0 is served first."""

    ordered: tuple[Queue, ...]

    @classmethod
    def build(cls, specs: Iterable[Any]) -> QueueSet:
        queues = [Queue.create(spec) for spec in specs]
        if not queues:
            queues = [Queue("default")]
        names = [q.name for q in queues]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"queue names must be unique, repeated: {duplicates}")
        # A queue without an explicit priority is the lowest: it sorts after every numbered one, and
        # among themselves such queues keep their declaration order (sorted() is stable).
        lowest = max((q.priority for q in queues if q.priority >= 0), default=-1) + 1
        resolved = [q if q.priority >= 0 else attrs.evolve(q, priority=lowest) for q in queues]
        return cls(tuple(sorted(resolved, key=lambda q: q.priority)))

    @property
    def names(self) -> list[str]:
        return [q.name for q in self.ordered]

    @property
    def default(self) -> Queue:
        """The lowest-priority queue: where tasks go when nothing names a queue (WakaQ's rule)."""
        return self.ordered[-1]

    def get(self, name: str) -> Queue:
        for queue in self.ordered:
            if queue.name == name:
                return queue
        raise UnknownQueueError(name, self.names)

    def select(self, include: Sequence[str] | None = None, exclude: Sequence[str] = ()) -> list[str]:
        """Names a worker serves, highest priority first; unknown names raise UnknownQueueError."""
        for name in [*(include or ()), *exclude]:
            self.get(name)
        chosen = [n for n in self.names if (not include or n in include) and n not in exclude]
        if not chosen:
            raise ConfigError(
                f"no queue left to serve after queues={list(include or [])} exclude={list(exclude)}"
            )
        return chosen
