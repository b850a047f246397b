"""Timeout and retry policy: which limits apply to a task run, and what happens after it fails.

Precedence follows WakaQ exactly: the task decorator wins, then the task's Queue, then the app default.
Every function here is pure; randomness and time arrive as arguments.
"""

from __future__ import annotations

from typing import Literal

import attrs

from hexq.core.errors import ConfigError
from hexq.core.queues import Queue, check_timeouts
from hexq.core.rate_limit import RateLimit

FailureKind = Literal["soft_timeout", "hard_timeout", "exception", "crash"]


@attrs.frozen
class TaskOptions:
    """What ``@app.task(...)`` said; None means "not set here, ask the queue, then the app"."""

    queue: str | None = None
    max_retries: int | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = ()
    backoff: float = 1.0
    backoff_max: float = 600.0
    expires: float | None = None  # seconds from each send: the deadline a run must start by
    unique_ms: int | None = None  # a unique task's window (hexq.core.unique); None: not unique
    rate_limit: RateLimit | None = None  # global, on the task's starts (hexq.core.rate_limit)
    keep_result: float | None = None  # seconds; 0 keeps nothing (see durations.keep_result_seconds)

    def __attrs_post_init__(self) -> None:
        check_timeouts(self.soft_timeout, self.hard_timeout, "task options")


@attrs.frozen
class AppDefaults:
    max_retries: int | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    max_deliveries: int = 5
    keep_result: float | None = None

    def __attrs_post_init__(self) -> None:
        check_timeouts(self.soft_timeout, self.hard_timeout, "app defaults")


@attrs.frozen
class Limits:
    """The resolved limits of one task run. ``conflict`` says why a soft timeout was dropped (see
    ``resolve_limits``), for the worker to log; None when nothing was."""

    soft_timeout: float | None
    hard_timeout: float | None
    max_retries: int
    conflict: str | None = None
    keep_result_ms: int | None = None  # how long the outcome is kept; None: no record is written

    def __attrs_post_init__(self) -> None:
        check_timeouts(self.soft_timeout, self.hard_timeout, "resolved limits")


@attrs.frozen
class _Setting:
    """A resolved timeout and the level it came from, to name it when it does not fit another."""

    seconds: float | None
    source: str


def _first(*values: int | None) -> int | None:
    return next((v for v in values if v is not None), None)


def _first_setting(task: float | None, queue: float | None, app: float | None, queue_name: str) -> _Setting:
    levels = ((task, "the task"), (queue, f"queue {queue_name!r}"), (app, "the app"))
    return next((_Setting(float(v), source) for v, source in levels if v is not None), _Setting(None, ""))


def _timeouts(task: TaskOptions, queue: Queue, app: AppDefaults) -> tuple[_Setting, _Setting]:
    return (_first_setting(task.soft_timeout, queue.soft_timeout, app.soft_timeout, queue.name),
            _first_setting(task.hard_timeout, queue.hard_timeout, app.hard_timeout, queue.name))


def _conflict(soft: _Setting, hard: _Setting) -> str | None:
    if soft.seconds is None or hard.seconds is None or soft.seconds < hard.seconds:
        return None
    return (f"soft_timeout {soft.seconds:g}s (from {soft.source}) is not below "
            f"hard_timeout {hard.seconds:g}s (from {hard.source})")


def timeout_conflict(task: TaskOptions, queue: Queue, app: AppDefaults) -> str | None:
    """Why the soft and hard timeouts resolved for ``task`` on ``queue`` cannot work together, or None."""
    return _conflict(*_timeouts(task, queue, app))


def check_limits(task: TaskOptions, queue: Queue, app: AppDefaults, owner: str) -> None:
    """Refuse, when a task is declared, timeouts that combine across levels so that the soft one never fires."""
    conflict = timeout_conflict(task, queue, app)
    if conflict is not None:
        raise ConfigError(f"{owner}: {conflict}, so the soft timeout would never fire; lower soft_timeout, "
                          "raise hard_timeout, or pass soft_timeout=None")


def resolve_limits(task: TaskOptions, queue: Queue, app: AppDefaults) -> Limits:
    """The limits of one run of ``task`` on ``queue``: each one from the task, else the queue, else the app
    (``keep_result`` too: 0 at a level keeps nothing, whatever the levels below say).

    The rule for timeouts: None is the only "no timeout" (0 is refused where it is declared, by
    ``check_timeouts``), and a soft timeout must be below the hard one, or the hard timeout would always kill
    the task first. Each level is checked on its own when it is declared (``check_timeouts``); a combination
    of levels (a task soft timeout against its queue's or the app's hard timeout) is refused by
    ``check_limits`` when the task is declared, for the queue it goes to by default. A combination only met
    here, at run time (a producer with another config, a task sent to another queue), can no longer be
    refused: the soft timeout is dropped, so the hard limit still holds, and ``Limits.conflict`` says why.
    """
    soft, hard = _timeouts(task, queue, app)
    conflict = _conflict(soft, hard)
    retries = _first(task.max_retries, queue.max_retries, app.max_retries)
    keep = next((v for v in (task.keep_result, queue.keep_result, app.keep_result) if v is not None), None)
    return Limits(
        soft_timeout=None if conflict is not None else soft.seconds,
        hard_timeout=hard.seconds,
        max_retries=int(retries or 0),
        conflict=conflict,
        keep_result_ms=max(1, round(keep * 1000)) if keep else None,
    )


@attrs.frozen
class Retry:
    delay: float
    reason: str


@attrs.frozen
class GiveUp:
    reason: str


def after_failure(
    kind: FailureKind,
    limits: Limits,
    options: TaskOptions,
    retries_used: int,
    error: BaseException | None,
    rand: float,
) -> Retry | GiveUp:
    """Decide between another attempt and the dead-letter list after a failed run.

    Soft and hard timeouts retry at once while ``max_retries`` allows (WakaQ retries soft timeouts). An
    exception retries only when the task opted in with ``retry_on``; it then waits an exponential
    backoff with full jitter (``rand`` in [0, 1)) so that a failing dependency is not hammered in step.
    """
    what = _describe(kind, error)
    if retries_used >= limits.max_retries:
        if kind == "exception" and not _matches(error, options.retry_on):
            return GiveUp(what)
        return GiveUp(f"{what}; gave up after {retries_used} retries (max_retries={limits.max_retries})")
    if kind in ("soft_timeout", "hard_timeout"):
        return Retry(0.0, what)
    if kind == "exception" and _matches(error, options.retry_on):
        ceiling = min(options.backoff_max, options.backoff * (2 ** min(retries_used, 64)))
        return Retry(ceiling * rand, what)
    return GiveUp(what)


def safe_str(error: BaseException) -> str:
    """``str(error)``, even for an exception whose ``__str__`` itself raises."""
    try:
        return str(error)
    except Exception:
        return f"<unprintable {type(error).__name__}>"


def _matches(error: BaseException | None, kinds: tuple[type[BaseException], ...]) -> bool:
    return error is not None and bool(kinds) and isinstance(error, kinds)


def _describe(kind: FailureKind, error: BaseException | None) -> str:
    if kind == "exception" and error is not None:
        return f"raised {type(error).__name__}: {safe_str(error)}"
    return kind.replace("_", " ")


@attrs.frozen
class Redelivery:
    """Verdict on a task that comes back after the process running it died."""

    run: bool
    reason: str


def on_redelivery(crashes: int, max_deliveries: int) -> Redelivery:
    """A task whose worker died ``crashes`` times runs again until it has started ``max_deliveries`` times.

    This is what turns a poison task (one that OOM-kills or segfaults its worker every time) into a
    dead letter instead of an endless loop, while a task caught in one unrelated crash still runs.
    """
    if crashes >= max_deliveries:
        return Redelivery(False, f"worker died while running it {crashes} times (max_deliveries={max_deliveries})")
    return Redelivery(True, "")
