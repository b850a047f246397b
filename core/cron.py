"""Cron schedules as pure objects: parsed once, asked ``next_after(dt)``; plus the misfire rule."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import croniter

from hexq.core.errors import CronError

UTC = timezone.utc


def _zone(name: str) -> ZoneInfo | timezone:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CronError(f"unknown timezone {name!r}: use an IANA name such as 'Europe/Paris'") from exc


@attrs.frozen
class CronSchedule:
    """A 5-field cron expression, or croniter's 6-field form whose last field is seconds.

    Evaluated in ``timezone`` (default UTC), so ``0 9 * * *`` with ``Europe/Paris`` fires at 09:00 Paris
    time on both sides of a DST change. A local time skipped by a spring-forward fires once, right after the jump (as
    standard cron does); a fixed hour repeated by a fall-back fires at its first occurrence only.
    """

    expression: str
    timezone: str = "UTC"

    def __attrs_post_init__(self) -> None:
        fields = self.expression.split()
        if len(fields) not in (5, 6):
            raise CronError(
                f"invalid cron {self.expression!r}: expected 5 fields (min hour day month weekday) or 6 "
                "with seconds last"
            )
        if not croniter.is_valid(self.expression):
            raise CronError(f"invalid cron {self.expression!r}: croniter cannot parse it")
        _zone(self.timezone)

    def next_after(self, moment: datetime) -> datetime:
        """The first fire time strictly after ``moment`` (aware; naive means UTC), returned in UTC."""
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        zone = _zone(self.timezone)
        fixed_hour = "*" not in self.expression.split()[1]
        local = moment.astimezone(zone)
        # Up to an hour of ticks (a seconds field) can fall in a repeated hour.
        for _ in range(3601):
            fire: datetime = croniter(self.expression, local).get_next(datetime).astimezone(UTC)
            # A fall-back repeats an hour of local time. A schedule for a fixed hour ("30 1 * * *") fires
            # at the first occurrence only, as cron users expect; wildcard hours keep firing in both.
            as_local = fire.astimezone(zone)
            first_occurrence = as_local.replace(tzinfo=None).replace(tzinfo=zone, fold=0).astimezone(UTC)
            if not (fixed_hour and first_occurrence < fire):
                return fire
            local = as_local
        return fire


def _task_name(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise CronError(f"cron task name must be a non-empty str, got {value!r}")
    return value


def _grace(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CronError(f"misfire_grace must be >= 0 seconds, got {value!r}")
    return float(value)


def _args(value: object) -> tuple[Any, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise CronError(f"cron task args must be a list or tuple, got {value!r}")
    return tuple(value)


def _kwargs(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CronError(f"cron task kwargs must be a dict, got {value!r}")
    return dict(value)


@attrs.frozen
class CronTask:
    """A task the scheduler enqueues at each fire time of ``cron`` (evaluated in ``timezone``)."""

    cron: str
    task_name: str = attrs.field(converter=_task_name)
    queue: str | None = None
    args: tuple[Any, ...] = attrs.field(default=(), converter=_args)
    kwargs: dict[str, Any] = attrs.field(factory=dict, converter=_kwargs)
    timezone: str = "UTC"
    misfire_grace: float = attrs.field(default=60.0, converter=_grace)
    schedule: CronSchedule = attrs.field(init=False)

    @schedule.default
    def _parse(self) -> CronSchedule:
        return CronSchedule(self.cron, self.timezone)

    @classmethod
    def create(cls, spec: Any) -> CronTask:
        """Accept a CronTask or WakaQ's tuple ``(cron, task_name[, args[, kwargs]])``."""
        if isinstance(spec, CronTask):
            return spec
        if isinstance(spec, (tuple, list)) and 2 <= len(spec) <= 4:
            return cls(spec[0], spec[1], args=spec[2] if len(spec) > 2 else (),
                       kwargs=spec[3] if len(spec) > 3 else {})
        raise CronError(f"invalid schedule {spec!r}: use CronTask(...) or (cron, task_name, args, kwargs)")

    @property
    def key(self) -> str:
        """Stable identity of this schedule entry, used for exactly-once tick claims."""
        return f"{self.task_name}@{self.schedule.expression}@{self.schedule.timezone}"


@attrs.frozen
class TickPlan:
    fire: datetime | None  # the tick to fire now, if any
    skipped: bool  # some ticks were older than the misfire grace and will never fire
    next_check: datetime  # when the next tick falls due


def plan_tick(task: CronTask, last_fired: datetime | None, now: datetime) -> TickPlan:
    """Which tick of ``task`` to fire at ``now``, given the last tick fired by any scheduler.

    Misfire policy: ticks missed while no scheduler ran are coalesced into one: the latest of them fires
    if it is within ``misfire_grace`` seconds of now; older ones are skipped. A schedule never fired
    before starts from now: nothing from the past is replayed on first deployment.
    """
    horizon = now - timedelta(seconds=task.misfire_grace)
    if last_fired is None:
        start = now - timedelta(microseconds=1)
        skipped = False
    elif last_fired < horizon:
        # Only the grace window can still fire: scanning from last_fired could walk millions of
        # seconds-field ticks after a long outage.
        skipped = task.schedule.next_after(last_fired) < horizon
        start = horizon - timedelta(microseconds=1)  # a tick exactly at the horizon may still fire
    else:
        start = last_fired
        skipped = False
    latest_due: datetime | None = None
    tick = task.schedule.next_after(start)
    while tick <= now:
        latest_due = tick
        tick = task.schedule.next_after(tick)
    return TickPlan(latest_due, skipped, tick)
