"""Unique tasks: while an identical task is queued, waiting for its eta or a retry, or running, sending it
again stores nothing and gives back the waiting task's id.

The identity of a call is its task's name and either the key given with the call
(``task.options(unique_key=...)``, any JSON value) or, by default, its arguments, both in canonical JSON
(sorted keys, no spaces). Queues are not part of it: the same call sent to another queue is the same work. The
digest of that identity names the task's *lock*, which the broker takes atomically with storing the task
(``OutgoingTask.unique``) and holds for at most the task's window.

A unique task's id names its lock: the usual 32-digit id, ``u``, then the 32-digit digest (65 characters).
So every broker operation that ends a task (an acknowledgement, a dead letter, a purge) can release the
lock from the id alone, in the round trip it makes anyway, and tasks that are not unique cost nothing: their
ids are 32 characters (or a broadcast copy's ``<id>.<n>``) and never match.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import timedelta
from typing import Any

from hexq.core import payload
from hexq.core.errors import ConfigError, HexqError
from hexq.core.ports import UniqueLock

BASE_ID_LENGTH = 32
DIGEST_LENGTH = 32  # hex digits of SHA-256 kept: 128 bits, so two identities never share a lock by chance
MARK = "u"
UNIQUE_ID_LENGTH = BASE_ID_LENGTH + 1 + DIGEST_LENGTH
MAX_WINDOW_SECONDS = 366 * 24 * 3600  # a lock longer than a year is a unit mistake (ms given as seconds)
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


class UniqueKeyError(HexqError, TypeError):
    """A ``unique_key`` that cannot be encoded as JSON, or one given to a task declared without ``unique``."""

    def __init__(self, task: str, message: str) -> None:
        self.task = task
        super().__init__(message)


def window_ms(value: object, owner: str) -> int | None:
    """``@app.task(unique=...)`` as milliseconds (None: not unique). A window is a timedelta or seconds,
    above 0 and at most a year: it bounds how long a lock outlives a task that never ends (a lost worker
    and its lease, a producer of an older hexq)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise ConfigError(
            f"{owner}: unique must be a timedelta or a number of seconds (how long at most an identical task "
            f"is refused while this one waits or runs), got {value!r}; for example unique=timedelta(minutes=10)")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0.001 or seconds > MAX_WINDOW_SECONDS:
        raise ConfigError(
            f"{owner}: unique window must be from 1 ms to 366 days, got {value!r}; it is how long at most an "
            "identical task is refused while this one waits or runs (released as soon as it ends)")
    return max(1, round(seconds * 1000))


def digest(task: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], key: Any = None) -> str:
    """The lock name of a call: from ``key`` when given (not None), else from the arguments."""
    if key is None:
        native_args, native_kwargs = payload.encode_arguments(task, args, kwargs)
        identity: dict[str, Any] = {"t": task, "a": native_args, "k": native_kwargs}
    else:
        identity = {"t": task, "key": _native_key(task, key)}
    return hashlib.sha256(_CANONICAL.encode(identity).encode()).hexdigest()[:DIGEST_LENGTH]


def _native_key(task: str, key: Any) -> Any:
    try:
        return payload.encode_value("unique_key", key)
    except ValueError as exc:
        raise UniqueKeyError(task, f"task {task!r}: unique_key {key!r} cannot be encoded as JSON ({exc}); pass a "
                                   "str, a number, or a list or dict of those (nothing was enqueued)") from None


def lock_for(task: str, unique_ms: int, now: float, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
             key: Any = None) -> UniqueLock:
    return UniqueLock(digest(task, args, kwargs, key), int(now * 1000), unique_ms)


def unique_id(base: str, lock: UniqueLock) -> str:
    """The id of a unique task: its own id, then the lock it holds."""
    return f"{base}{MARK}{lock.key}"


def lock_of(task_id: str) -> str | None:
    """The lock a task id holds (its digest), or None for a task that is not unique."""
    if len(task_id) == UNIQUE_ID_LENGTH and task_id[BASE_ID_LENGTH] == MARK:
        return task_id[BASE_ID_LENGTH + 1:]
    return None


def check_key_allowed(task: str, unique_ms: int | None, key: Any) -> None:
    """A per-call key on a task that is not unique would be silently ignored: refuse it instead."""
    if key is not None and unique_ms is None:
        raise UniqueKeyError(task, f"task {task!r} was given unique_key={key!r} but is not declared unique: "
                                   "declare it with @app.task(unique=timedelta(...)) (nothing was enqueued)")
