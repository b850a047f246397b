"""Turning the many ways users spell a duration into float seconds."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from hexq.core.errors import ConfigError


def to_seconds(value: float | int | timedelta | None, what: str) -> float | None:
    """Seconds as float, or None when unset. Negative or non-numeric values raise ConfigError."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be seconds (int/float) or a timedelta, got {value!r}")
    else:
        seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"{what} must be zero or positive (a finite number of seconds), got {value!r}")
    return seconds


MAX_ETA_SECONDS = 100 * 365 * 24 * 3600


def eta_to_epoch(eta: object, now: float) -> float:
    """An eta given as a timedelta, a datetime (naive = UTC) or a number of seconds from now, as epoch
    seconds. Past etas are allowed (the task runs at once); more than 100 years ahead is refused as a
    mistake (a timestamp passed where seconds from now belong, or nanoseconds for seconds)."""
    if isinstance(eta, timedelta):
        epoch = now + eta.total_seconds()
    elif isinstance(eta, datetime):
        moment = eta if eta.tzinfo is not None else eta.replace(tzinfo=timezone.utc)
        epoch = moment.timestamp()
    elif isinstance(eta, (int, float)) and not isinstance(eta, bool):
        if not math.isfinite(eta):
            raise ConfigError(f"eta must be a finite number of seconds, got {eta!r}")
        epoch = now + float(eta)
    else:
        raise ConfigError(f"eta must be a timedelta, a datetime or seconds from now, got {eta!r}")
    if epoch - now > MAX_ETA_SECONDS:
        raise ConfigError(
            f"eta {eta!r} is more than 100 years away: a number eta means seconds from now (pass a "
            "datetime for a point in time)"
        )
    return epoch


def expires_after(value: object, what: str) -> float | None:
    """A deadline given as a duration (a timedelta or seconds, measured from each send), as positive float
    seconds; None when unset. A datetime is refused here: a fixed moment suits one call, not a task's default."""
    if value is None:
        return None
    if isinstance(value, datetime):
        raise ConfigError(f"{what} must be a duration (seconds or a timedelta, counted from each .delay()), got "
                          f"the datetime {value!r}: give a moment to one call with .options(expires=...)")
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise ConfigError(f"{what} must be seconds (int/float) or a timedelta, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{what} must be a positive, finite duration, got {value!r}: a task needs some time "
                          "to be started in (None means no deadline)")
    return seconds


def deadline_to_epoch(expires: object, now: float) -> float:
    """A per-call deadline as epoch seconds: a timedelta or a number of seconds from now (positive), or a
    datetime (naive = UTC, as for eta). Whether it has already passed is for the caller to say, naming the task."""
    if isinstance(expires, datetime):
        moment = expires if expires.tzinfo is not None else expires.replace(tzinfo=timezone.utc)
        epoch = moment.timestamp()
    else:
        seconds = expires_after(expires, "expires")
        assert seconds is not None
        epoch = now + seconds
    if epoch - now > MAX_ETA_SECONDS:
        raise ConfigError(f"expires {expires!r} is more than 100 years away: a number means seconds from now "
                          "(pass a datetime for a point in time)")
    return epoch
def keep_result_seconds(value: float | int | timedelta | None, what: str) -> float | None:
    """A ``keep_result`` (how long a task's outcome is kept): None when unset (ask the next level: task, then
    queue, then app), 0 for "keep nothing" (a task or queue opting out of its app's setting), else at least a
    millisecond and at most 100 years."""
    seconds = to_seconds(value, what)
    if seconds is None or seconds == 0:
        return seconds
    if seconds < 0.001 or seconds > MAX_ETA_SECONDS:
        raise ConfigError(f"{what} must be a duration from 1 ms to 100 years (a timedelta or seconds), or 0 to "
                          f"keep nothing, got {value!r}")
    return seconds
