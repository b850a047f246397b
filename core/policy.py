"""Timeout and retry policy: which limits apply to a task run, and what happens after it fails.

Precedence follows WakaQ exactly: the task decorator wins, then the task's Queue, then the app default.
Every function here is pure; randomness and time arrive as arguments.
"""

from __future__ import annotations

from typing import Literal

import attrs

from hexq.core.queues import Queue, check_timeouts

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


@attrs.frozen
class AppDefaults:
    max_retries: int | None = None
    soft_timeout: float | None = None
    hard_timeout: float | None = None
    max_deliveries: int = 5


@attrs.frozen
class Limits:
    """The resolved limits of one task run."""

    soft_timeout: float | None
    hard_timeout: float | None
    max_retries: int

    def __attrs_post_init__(self) -> None:
        check_timeouts(self.soft_timeout, self.hard_timeout, "resolved limits")


def _first(*values: float | int | None) -> float | int | None:
    return next((v for v in values if v is not None), None)


def resolve_limits(task: TaskOptions, queue: Queue, app: AppDefaults) -> Limits:
    soft = _first(task.soft_timeout, queue.soft_timeout, app.soft_timeout)
    hard = _first(task.hard_timeout, queue.hard_timeout, app.hard_timeout)
    if soft is not None and hard is not None and hard <= soft:
        # The levels may each be valid and still combine badly (a task soft timeout above the app's hard
        # timeout): the hard limit must win, so the soft one is dropped rather than never firing.
        soft = None
    retries = _first(task.max_retries, queue.max_retries, app.max_retries)
    return Limits(
        soft_timeout=None if soft is None else float(soft),
        hard_timeout=None if hard is None else float(hard),
        max_retries=int(retries or 0),
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
