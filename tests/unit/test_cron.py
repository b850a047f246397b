"""Cron schedules over literal datetimes (month ends, leap days, DST), CronTask specs and misfire planning."""

from __future__ import annotations

import time as wallclock
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from hexq.core.cron import CronSchedule, CronTask, TickPlan, plan_tick
from hexq.core.errors import ConfigError, CronError

UTC = timezone.utc


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


# (label, expression, timezone, after, expected first fire strictly after, in UTC)
NEXT_AFTER: list[tuple[str, str, str, datetime, datetime]] = [
    ("every minute, on a tick", "* * * * *", "UTC", utc(2024, 1, 1, 0, 0), utc(2024, 1, 1, 0, 1)),
    ("every minute, mid-minute", "* * * * *", "UTC", utc(2024, 1, 1, 0, 0, 30), utc(2024, 1, 1, 0, 1)),
    ("every minute, year end", "* * * * *", "UTC", utc(2024, 12, 31, 23, 59, 59), utc(2025, 1, 1)),
    ("*/5 just before", "*/5 * * * *", "UTC", utc(2024, 1, 1, 0, 4, 59), utc(2024, 1, 1, 0, 5)),
    ("*/5 on a tick", "*/5 * * * *", "UTC", utc(2024, 1, 1, 0, 5), utc(2024, 1, 1, 0, 10)),
    ("*/5 over the hour", "*/5 * * * *", "UTC", utc(2024, 1, 1, 0, 57), utc(2024, 1, 1, 1, 0)),
    ("31st skips April", "0 0 31 * *", "UTC", utc(2024, 4, 1), utc(2024, 5, 31)),
    ("31st skips June", "0 0 31 * *", "UTC", utc(2024, 5, 31), utc(2024, 7, 31)),
    ("31st skips Sept and Nov", "0 0 31 * *", "UTC", utc(2024, 8, 31), utc(2024, 10, 31)),
    ("30th skips February", "0 0 30 * *", "UTC", utc(2023, 1, 30), utc(2023, 3, 30)),
    ("Feb 29 from a non-leap year", "0 0 29 2 *", "UTC", utc(2023, 1, 1), utc(2024, 2, 29)),
    ("Feb 29 waits for next leap year", "0 0 29 2 *", "UTC", utc(2024, 2, 29), utc(2028, 2, 29)),
    ("Feb 29 skips 2100 (not leap)", "0 0 29 2 *", "UTC", utc(2096, 3, 1), utc(2104, 2, 29)),
    ("last day, Feb non-leap", "0 0 L * *", "UTC", utc(2023, 2, 1), utc(2023, 2, 28)),
    ("last day, Feb leap", "0 0 L * *", "UTC", utc(2024, 2, 1), utc(2024, 2, 29)),
    ("weekday: next Monday", "0 9 * * 1", "UTC", utc(2024, 1, 3), utc(2024, 1, 8, 9)),
    ("6 fields: every 15 seconds", "* * * * * */15", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 0, 0, 15)),
    ("6 fields: seconds last", "0 0 * * * 30", "UTC", utc(2024, 1, 1), utc(2024, 1, 1, 0, 0, 30)),
    ("6 fields: next day", "0 0 * * * 30", "UTC", utc(2024, 1, 1, 0, 0, 30), utc(2024, 1, 2, 0, 0, 30)),
    # Europe/Paris: CET (+1) until 2024-03-31 01:00Z, then CEST (+2) until 2024-10-27 01:00Z.
    ("Paris 09:00 before spring DST", "0 9 * * *", "Europe/Paris", utc(2024, 3, 29, 12), utc(2024, 3, 30, 8)),
    ("Paris 09:00 after spring DST", "0 9 * * *", "Europe/Paris", utc(2024, 3, 30, 12), utc(2024, 3, 31, 7)),
    ("Paris 09:00 after fall DST", "0 9 * * *", "Europe/Paris", utc(2024, 10, 26, 12), utc(2024, 10, 27, 8)),
    # 02:30 does not exist on 2024-03-31 in Paris: it fires once, right after the jump (03:00 CEST).
    ("Paris skipped hour fires after the jump", "30 2 * * *", "Europe/Paris", utc(2024, 3, 30, 12),
     utc(2024, 3, 31, 1)),
    ("Paris skipped hour, next day normal", "30 2 * * *", "Europe/Paris", utc(2024, 3, 31, 1),
     utc(2024, 4, 1, 0, 30)),
    ("Paris hourly across the gap", "0 * * * *", "Europe/Paris", utc(2024, 3, 31, 0, 30), utc(2024, 3, 31, 1)),
    ("Paris repeated hour, first occurrence", "30 2 * * *", "Europe/Paris", utc(2024, 10, 26, 12),
     utc(2024, 10, 27, 0, 30)),
    # America/New_York: EST (-5) until 2024-03-10 07:00Z, EDT (-4) until 2024-11-03 06:00Z.
    ("New York 09:00 before spring DST", "0 9 * * *", "America/New_York", utc(2024, 3, 9, 15),
     utc(2024, 3, 10, 13)),
    ("New York skipped hour fires after the jump", "30 2 * * *", "America/New_York", utc(2024, 3, 9, 12),
     utc(2024, 3, 10, 7)),
    ("New York repeated hour, first occurrence", "30 1 * * *", "America/New_York", utc(2024, 11, 2, 12),
     utc(2024, 11, 3, 5, 30)),
    ("New York 09:00 after fall DST", "0 9 * * *", "America/New_York", utc(2024, 11, 2, 14),
     utc(2024, 11, 3, 14)),
    ("aware input in another zone", "0 12 * * *", "UTC",
     datetime(2024, 1, 1, 16, 0, tzinfo=timezone(timedelta(hours=5))), utc(2024, 1, 1, 12)),
    ("naive input is UTC", "*/5 * * * *", "UTC", datetime(2024, 1, 1, 0, 4, 59), utc(2024, 1, 1, 0, 5)),
    # 07:30 naive is 07:30Z = 09:30 Paris, past today's 09:00; read as Paris time it would fire today.
    ("naive input is UTC, not local", "0 9 * * *", "Europe/Paris", datetime(2024, 6, 1, 7, 30),
     utc(2024, 6, 2, 7)),
    ("lowercase utc", "0 0 * * *", "utc", utc(2024, 1, 1, 12), utc(2024, 1, 2)),
]


@pytest.mark.parametrize(("label", "expression", "zone", "after", "expected"), NEXT_AFTER,
                         ids=[n[0] for n in NEXT_AFTER])
def test_next_after(label: str, expression: str, zone: str, after: datetime, expected: datetime) -> None:
    fire = CronSchedule(expression, zone).next_after(after)
    assert fire == expected
    assert fire.utcoffset() == timedelta(0)


def _fires_between(schedule: CronSchedule, start: datetime, end: datetime) -> list[datetime]:
    fires, moment = [], start
    while (moment := schedule.next_after(moment)) < end:
        fires.append(moment)
    return fires


def test_spring_forward_daily_job_in_the_gap_fires_exactly_once_that_day() -> None:
    schedule = CronSchedule("30 2 * * *", "Europe/Paris")
    assert _fires_between(schedule, utc(2024, 3, 30, 22), utc(2024, 3, 31, 22)) == [utc(2024, 3, 31, 1)]


def test_every_fire_is_strictly_increasing_across_a_dst_year() -> None:
    schedule = CronSchedule("15 */3 * * *", "America/New_York")
    fires = _fires_between(schedule, utc(2024, 3, 1), utc(2024, 11, 30))
    assert len(fires) > 2000
    assert fires == sorted(set(fires))


@pytest.mark.parametrize(("zone", "expression", "start", "end"), [
    ("Europe/Paris", "30 2 * * *", utc(2024, 10, 26, 22), utc(2024, 10, 27, 23)),
    ("America/New_York", "30 1 * * *", utc(2024, 11, 3, 4), utc(2024, 11, 4, 4)),
])
def test_fall_back_repeated_local_time_fires_once(zone: str, expression: str, start: datetime,
                                                  end: datetime) -> None:
    assert len(_fires_between(CronSchedule(expression, zone), start, end)) == 1


def test_fall_back_fixed_hours_fire_at_the_first_occurrence_only() -> None:
    schedule = CronSchedule("0 1-3 * * *", "Europe/Paris")
    # 01:00 CEST, 02:00 CEST, (02:00 CET repeated: no), 03:00 CET
    assert _fires_between(schedule, utc(2024, 10, 26, 22), utc(2024, 10, 27, 4)) == [
        utc(2024, 10, 26, 23), utc(2024, 10, 27, 0), utc(2024, 10, 27, 2)]


def test_fall_back_wildcard_hours_keep_firing_every_real_hour() -> None:
    schedule = CronSchedule("0 * * * *", "Europe/Paris")
    assert _fires_between(schedule, utc(2024, 10, 26, 23, 30), utc(2024, 10, 27, 3)) == [
        utc(2024, 10, 27, 0), utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)]


@pytest.mark.parametrize(("expression", "expected"), [
    ("*/15 2 * * *", [utc(2024, 10, 27, 0, m) for m in (0, 15, 30, 45)]),
    ("* 2 * * *", [utc(2024, 10, 27, 0, m) for m in range(60)]),
    ("0 2 * * * */10", [utc(2024, 10, 27, 0, 0, s) for s in range(0, 60, 10)]),
])
def test_fall_back_fixed_hour_with_many_ticks_fires_in_the_first_occurrence_only(
    expression: str, expected: list[datetime]
) -> None:
    schedule = CronSchedule(expression, "Europe/Paris")
    assert _fires_between(schedule, utc(2024, 10, 26, 23), utc(2024, 10, 27, 3)) == expected


INVALID_CRONS = ["* * * *", "* * * * * * *", "garbage", "", "61 * * * *", "* 25 * * *", "* * 32 * *",
                 "* * * 13 *", "a b c d e", "*/x * * * *"]


@pytest.mark.parametrize("expression", INVALID_CRONS, ids=repr)
def test_invalid_crons_raise_naming_the_expression(expression: str) -> None:
    with pytest.raises(CronError) as info:
        CronSchedule(expression)
    assert repr(expression) in str(info.value)
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "", "../../etc/passwd", "Europe/"], ids=repr)
def test_unknown_timezone_raises_naming_it(zone: str) -> None:
    with pytest.raises(ConfigError) as info:
        CronSchedule("* * * * *", zone)
    assert repr(zone) in str(info.value)


def test_four_field_message_explains_the_format() -> None:
    with pytest.raises(CronError, match="expected 5 fields"):
        CronSchedule("* * * *")


# -- CronTask ---------------------------------------------------------------------------------------

CREATE: list[tuple[str, Any, tuple[str, str, str | None, tuple[Any, ...], dict[str, Any]]]] = [
    ("wakaq 4-tuple", ("*/5 * * * *", "mytask", [1, 1], {}), ("*/5 * * * *", "mytask", None, (1, 1), {})),
    ("wakaq 2-tuple", ("*/10 * * * *", "anothertask"), ("*/10 * * * *", "anothertask", None, (), {})),
    ("3-tuple", ["0 * * * *", "t", (3,)], ("0 * * * *", "t", None, (3,), {})),
    ("4-tuple with kwargs", ("0 * * * *", "t", [], {"a": 1}), ("0 * * * *", "t", None, (), {"a": 1})),
    ("instance", CronTask("* * * * *", "mytask", queue="q-med", args=[2, 2], kwargs={}),
     ("* * * * *", "mytask", "q-med", (2, 2), {})),
]


@pytest.mark.parametrize(("label", "spec", "expected"), CREATE, ids=[c[0] for c in CREATE])
def test_cron_task_create_from_wakaq_forms(label: str, spec: Any, expected: tuple) -> None:
    task = CronTask.create(spec)
    assert (task.schedule.expression, task.task_name, task.queue, task.args, task.kwargs) == expected
    assert task.schedule.timezone == "UTC"
    assert task.misfire_grace == 60.0


def test_cron_task_create_returns_instances_unchanged() -> None:
    task = CronTask("* * * * *", "t")
    assert CronTask.create(task) is task


@pytest.mark.parametrize("spec", [("* * * * *",), ("* * * * *", "t", [], {}, "x"), 5, "* * * * *", None],
                         ids=repr)
def test_cron_task_create_refuses_other_shapes(spec: Any) -> None:
    with pytest.raises(CronError):
        CronTask.create(spec)


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    (("* * * *", "t"), {}, "invalid cron"),
    (("* * * * *", ""), {}, "non-empty str"),
    (("* * * * *", 5), {}, "non-empty str"),
    (("* * * * *", "t"), {"misfire_grace": -1}, "misfire_grace"),
    (("* * * * *", "t"), {"timezone": "Nowhere/Land"}, "unknown timezone"),
])
def test_cron_task_refuses_bad_values(args: tuple, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CronError, match=message):
        CronTask(*args, **kwargs)


def test_cron_task_copies_args_and_kwargs_and_has_a_stable_key() -> None:
    args, kwargs = [1], {"a": 1}
    task = CronTask("0 9 * * *", "report", args=args, kwargs=kwargs, timezone="Europe/Paris")
    args.append(2)
    kwargs["b"] = 2
    assert task.args == (1,) and task.kwargs == {"a": 1}
    assert task.key == "report@0 9 * * *@Europe/Paris"
    assert CronTask("0 9 * * *", "report", timezone="Europe/Paris").key == task.key
    assert CronTask("0 9 * * *", "report").key != task.key


def test_cron_task_parses_its_schedule_in_its_timezone() -> None:
    task = CronTask("0 9 * * *", "t", timezone="Europe/Paris")
    assert task.schedule == CronSchedule("0 9 * * *", "Europe/Paris")


@pytest.mark.parametrize(("args", "kwargs"), [(5, None), ("ab", None), ((), [("a", 1)])], ids=repr)
def test_cron_task_refuses_args_it_cannot_use(args: Any, kwargs: Any) -> None:
    with pytest.raises(CronError):
        CronTask("* * * * *", "t", args=args, kwargs=kwargs if kwargs is not None else {})


# -- plan_tick --------------------------------------------------------------------------------------

EVERY_MINUTE = CronTask("* * * * *", "t", misfire_grace=60)
EVERY_5 = CronTask("*/5 * * * *", "t", misfire_grace=60)
HOURLY = CronTask("0 * * * *", "t", misfire_grace=60)
PATIENT = CronTask("* * * * *", "t", misfire_grace=300)
NO_GRACE = CronTask("* * * * *", "t", misfire_grace=0)

# (label, task, last_fired, now, expected plan)
PLANS: list[tuple[str, CronTask, datetime | None, datetime, TickPlan]] = [
    ("first run replays nothing", EVERY_MINUTE, None, utc(2024, 1, 1, 10, 0, 30),
     TickPlan(None, False, utc(2024, 1, 1, 10, 1))),
    ("first run, hourly, nothing from the past", HOURLY, None, utc(2024, 1, 1, 10, 59, 59),
     TickPlan(None, False, utc(2024, 1, 1, 11))),
    ("first run exactly on a tick fires it", EVERY_MINUTE, None, utc(2024, 1, 1, 10, 1),
     TickPlan(utc(2024, 1, 1, 10, 1), False, utc(2024, 1, 1, 10, 2))),
    ("not due yet", EVERY_MINUTE, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 0, 59),
     TickPlan(None, False, utc(2024, 1, 1, 10, 1))),
    ("due tick fires", EVERY_MINUTE, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 1, 5),
     TickPlan(utc(2024, 1, 1, 10, 1), False, utc(2024, 1, 1, 10, 2))),
    ("due tick fires only once", EVERY_MINUTE, utc(2024, 1, 1, 10, 1), utc(2024, 1, 1, 10, 1, 10),
     TickPlan(None, False, utc(2024, 1, 1, 10, 2))),
    ("exactly on time", EVERY_5, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 5),
     TickPlan(utc(2024, 1, 1, 10, 5), False, utc(2024, 1, 1, 10, 10))),
    ("missed ticks within grace coalesce into the latest", PATIENT, utc(2024, 1, 1, 10, 0),
     utc(2024, 1, 1, 10, 3, 30), TickPlan(utc(2024, 1, 1, 10, 3), False, utc(2024, 1, 1, 10, 4))),
    ("older ticks skipped, latest within grace fires", EVERY_MINUTE, utc(2024, 1, 1, 10, 0),
     utc(2024, 1, 1, 10, 10, 30), TickPlan(utc(2024, 1, 1, 10, 10), True, utc(2024, 1, 1, 10, 11))),
    ("every missed tick beyond grace", HOURLY, utc(2024, 1, 1, 8), utc(2024, 1, 1, 10, 30),
     TickPlan(None, True, utc(2024, 1, 1, 11))),
    ("tick just inside grace fires", EVERY_5, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 5, 59),
     TickPlan(utc(2024, 1, 1, 10, 5), False, utc(2024, 1, 1, 10, 10))),
    ("tick just beyond grace is skipped", EVERY_5, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 6, 1),
     TickPlan(None, True, utc(2024, 1, 1, 10, 10))),
    ("no grace, late by a second", NO_GRACE, utc(2024, 1, 1, 10, 0), utc(2024, 1, 1, 10, 1, 1),
     TickPlan(None, True, utc(2024, 1, 1, 10, 2))),
    ("last fired in the future (clock skew)", EVERY_MINUTE, utc(2024, 1, 1, 10, 5), utc(2024, 1, 1, 10, 0),
     TickPlan(None, False, utc(2024, 1, 1, 10, 6))),
]


@pytest.mark.parametrize(("label", "task", "last", "now", "expected"), PLANS, ids=[p[0] for p in PLANS])
def test_plan_tick(label: str, task: CronTask, last: datetime | None, now: datetime,
                   expected: TickPlan) -> None:
    assert plan_tick(task, last, now) == expected


@pytest.mark.parametrize(("task", "now"), [
    (EVERY_5, utc(2024, 1, 1, 10, 6)),  # the 10:05 tick is exactly 60 s old
    (NO_GRACE, utc(2024, 1, 1, 10, 5)),  # grace 0, now exactly on the 10:05 tick
])
def test_tick_exactly_misfire_grace_old_still_fires(task: CronTask, now: datetime) -> None:
    assert plan_tick(task, utc(2024, 1, 1, 10, 0), now).fire == utc(2024, 1, 1, 10, 5)


def test_a_scheduler_loop_fires_each_tick_once() -> None:
    last: datetime | None = None
    fired: list[datetime] = []
    now = utc(2024, 1, 1, 10, 0, 30)
    while now < utc(2024, 1, 1, 10, 5, 30):
        plan = plan_tick(EVERY_MINUTE, last, now)
        if plan.fire is not None:
            fired.append(plan.fire)
            last = plan.fire
        now = min(plan.next_check, now + timedelta(seconds=20))
    assert fired == [utc(2024, 1, 1, 10, m) for m in range(1, 6)]


def test_long_outage_with_a_seconds_field_is_planned_quickly() -> None:
    task = CronTask("* * * * * *", "t", misfire_grace=10)
    started = wallclock.perf_counter()
    plan = plan_tick(task, utc(2023, 1, 1), utc(2024, 1, 1, 0, 0, 0))
    assert wallclock.perf_counter() - started < 2.0
    assert plan == TickPlan(utc(2024, 1, 1), True, utc(2024, 1, 1, 0, 0, 1))


def test_plan_tick_in_a_timezone() -> None:
    task = CronTask("0 9 * * *", "t", timezone="Europe/Paris", misfire_grace=600)
    plan = plan_tick(task, utc(2024, 3, 30, 8), utc(2024, 3, 31, 7, 5))
    assert plan == TickPlan(utc(2024, 3, 31, 7), False, utc(2024, 4, 1, 7))
