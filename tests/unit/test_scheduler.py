"""The scheduler with a fake clock: exactly-once ticks across schedulers, seconds crons, misfires."""

from __future__ import annotations

from service_fixtures import make_app

from hexq import CronTask
from hexq.core.services.scheduler import Scheduler
from hexq.entrypoints.bootstrap import task_factory


def count_pending(broker: object, queue: str) -> int:
    return broker.queue_stats([queue])[0].pending  # type: ignore[attr-defined, no-any-return]


def test_three_schedulers_fire_each_tick_exactly_once() -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * *", "job", queue="low")])

    @app.task
    def job() -> None: ...

    clock.wall = 1_700_000_000.0  # 22:13:20 UTC
    schedulers = [Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules) for _ in range(3)]
    for _ in range(10 * 60 * 4):  # ten minutes in quarter seconds
        for scheduler in schedulers:
            scheduler.tick()
        clock.advance(0.25)
    assert sum(s.fired for s in schedulers) == 10
    assert count_pending(broker, "low") == 10


def test_a_seconds_field_cron_fires_every_second() -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * * *", "job")])

    @app.task
    def job() -> None: ...

    scheduler = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules)
    clock.wall = 1_700_000_000.5
    for _ in range(40):
        scheduler.tick()
        clock.advance(0.25)
    assert scheduler.fired == 10


def test_cron_tasks_get_ids_that_sort_by_the_time_they_fired() -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * * *", "job")])

    @app.task
    def job() -> None: ...

    scheduler = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules)
    for _ in range(5):
        scheduler.tick()
        clock.advance(1.0)
    ids = [d.id for d in broker.reserve("probe", ["low"], 10, int(clock.now() * 1000), 1000).deliveries]
    assert len(ids) == 4 and ids == sorted(ids) and all(len(i) == 32 for i in ids)  # not the first tick
    assert int(ids[0][:16], 16) // 10**9 == int(clock.now()) - 4  # the time comes from the Clock


def test_tick_returns_the_wait_until_the_next_fire() -> None:
    app, broker, clock = make_app(schedules=[CronTask("*/5 * * * *", "job")])

    @app.task
    def job() -> None: ...

    clock.wall = 1_700_000_000.0  # 22:13:20 -> next fire at 22:15:00
    wait = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules).tick()
    assert wait == 100.0


def test_downtime_beyond_the_misfire_grace_skips_old_ticks_but_fires_recent_ones_once() -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * *", "job", misfire_grace=90)])

    @app.task
    def job() -> None: ...

    clock.wall = 1_700_000_000.0
    first = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules)
    for _ in range(200):
        first.tick()
        clock.advance(1)
    assert first.fired == 3
    clock.advance(600)  # ten minutes without any scheduler
    second = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules)
    second.tick()
    assert second.fired == 1  # the newest missed tick was within 90 s: fired once, older ones skipped
    second.tick()
    assert second.fired == 1


def test_check_refuses_a_schedule_naming_an_unknown_task() -> None:
    import pytest

    from hexq import UnknownTaskError

    app, broker, clock = make_app(schedules=[CronTask("* * * * *", "nope")])
    with pytest.raises(UnknownTaskError, match="nope"):
        Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules).check()
