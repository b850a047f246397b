"""Unique tasks through the app (``@app.task(unique=...)``, ``.options(unique_key=...)``): identity, ids, batches,
cron ticks, the in-process mode, and a partitioned broker's global lock. The broker rules themselves are in
the contract suite (``UniqueContract``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest
from broker_contract import LEASE, T0, unique_task
from service_fixtures import make_app

from hexq import CronTask, HexQ, UniqueKeyError
from hexq.adapters.memory import FakeClock
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.partitioned import PartitionedBroker
from hexq.adapters.redis.partitions import partition_tags
from hexq.core import unique
from hexq.core.rules import LeaseRules
from hexq.core.services.scheduler import Scheduler
from hexq.entrypoints.bootstrap import task_factory


def stored(app: HexQ) -> int:
    return sum(s.pending + s.eta for s in app.broker.queue_stats(app.queues.names))


def test_the_same_call_gives_the_waiting_tasks_id_and_another_call_a_task_of_its_own() -> None:
    app, _, _ = make_app()

    @app.task(unique=timedelta(minutes=5))
    def send_report(user_id: int, *, fmt: str = "pdf") -> None: ...

    first = send_report.delay(7, fmt="csv")
    assert send_report.delay(7, fmt="csv") == first
    assert send_report.options(queue="high").delay(7, fmt="csv") == first  # queues are not part of it
    other = send_report.delay(8, fmt="csv")
    assert other != first
    assert send_report.delay(7) not in (first, other)  # other arguments, another call
    assert stored(app) == 3


def test_a_unique_tasks_id_names_its_lock_and_other_ids_name_none() -> None:
    app, _, _ = make_app()

    @app.task(unique=60)
    def job(x: int) -> None: ...

    @app.task
    def plain(x: int) -> None: ...

    task_id = job.delay(1)
    assert len(task_id) == unique.UNIQUE_ID_LENGTH and unique.lock_of(task_id) == unique.digest("job", [1], {})
    assert unique.lock_of(plain.delay(1)) is None
    assert unique.lock_of(task_id[:32] + "." + "1" * 32) is None  # only "u" at that place marks one


def test_the_identity_is_canonical_json_of_the_arguments() -> None:
    assert unique.digest("t", [1], {"b": 2, "a": 1}) == unique.digest("t", (1,), {"a": 1, "b": 2})
    assert unique.digest("t", [datetime(2024, 1, 1, tzinfo=timezone.utc)], {}) == unique.digest(
        "t", [datetime(2024, 1, 1, tzinfo=timezone.utc)], {})
    assert unique.digest("t", [1], {}) != unique.digest("u", [1], {})  # the task's name is part of it
    assert unique.digest("t", [1], {}) != unique.digest("t", [], {"x": 1})  # positional and keyword differ
    assert unique.digest("t", [], {}, key={"b": [1, 2], "a": "x"}) == unique.digest(
        "t", [9], {}, key={"a": "x", "b": [1, 2]})
    assert unique.digest("t", [], {}, key="k") != unique.digest("t", ["k"], {})  # a key is not an argument list


def test_a_unique_key_replaces_the_arguments_as_the_identity() -> None:
    app, _, _ = make_app()

    @app.task(unique=60)
    def sync_account(account: int, reason: str) -> None: ...

    first = sync_account.options(unique_key=["account", 7]).delay(7, "signup")
    assert sync_account.options(unique_key=["account", 7]).delay(7, "login") == first
    assert sync_account.delay(7, "signup") != first  # without the key: the arguments
    assert sync_account.options(unique_key=["account", 8]).delay(8, "signup") != first


def test_a_batch_stores_one_task_per_identity_and_answers_every_call() -> None:
    app, _, _ = make_app()

    @app.task(unique=60)
    def job(x: int) -> None: ...

    before = job.delay(1)
    ids = job.delay_many([(1,), (2,), (2,), job.options(unique_key="k").bind(3), job.options(unique_key="k").bind(4)])
    assert ids[0] == before and ids[1] == ids[2] and ids[3] == ids[4]
    assert len({before, ids[1], ids[3]}) == 3
    assert stored(app) == 3


def test_the_lock_goes_when_the_task_is_acknowledged() -> None:
    app, broker, _ = make_app()

    @app.task(unique=60)
    def job(x: int) -> None: ...

    first = job.delay(1)
    (delivery,) = broker.reserve("c1", ["low"], 10, T0, LEASE).deliveries
    assert delivery.id == first and job.delay(1) == first  # running: still held
    broker.ack("c1", [first])
    assert job.delay(1) != first


def test_the_window_is_taken_from_the_producers_clock() -> None:
    app, _, clock = make_app()

    @app.task(unique=timedelta(seconds=30))
    def job() -> None: ...

    first = job.delay()
    clock.advance(29.9)
    assert job.delay() == first
    clock.advance(0.2)
    assert job.delay() != first


def test_the_in_process_mode_runs_each_call_since_each_one_ends_before_the_next() -> None:
    app = HexQ(url="memory://", clock=FakeClock())
    runs: list[int] = []

    @app.task(unique=60)
    def job(x: int) -> None:
        runs.append(x)

    first, second = job.delay(1), job.delay(1)
    assert first != second and runs == [1, 1]


def test_broadcasting_a_unique_task_is_not_unique() -> None:
    app = HexQ(url="memory://", clock=FakeClock())
    runs: list[int] = []

    @app.task(unique=60)
    def job(x: int) -> None:
        runs.append(x)

    assert job.broadcast(1) == 1 and job.broadcast(1) == 1
    assert runs == [1, 1]


def test_a_cron_tick_finding_the_last_run_still_waiting_stores_nothing_and_counts_as_fired() -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * * *", "job")])

    @app.task(unique=600)
    def job() -> None: ...

    clock.wall = 1_700_000_000.5
    scheduler = Scheduler(app.registry, task_factory(app, clock), broker, clock, app.schedules)
    for _ in range(20):
        scheduler.tick()
        clock.advance(0.25)
    assert scheduler.fired == 5 and stored(app) == 1  # one run waits for the five ticks
    (delivery,) = broker.reserve("c1", ["low"], 10, int(clock.wall * 1000), LEASE).deliveries
    broker.ack("c1", [delivery.id])
    clock.advance(1)
    scheduler.tick()
    assert stored(app) == 1


@pytest.fixture
def partitioned() -> Iterator[PartitionedBroker]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    broker = PartitionedBroker([RedisBroker(client, "app", rules=LeaseRules(), tag=tag)
                                for tag in partition_tags("app", 3)])
    yield broker
    broker.close()


def test_partitions_keep_one_global_lock_in_the_partition_the_key_names(partitioned: PartitionedBroker) -> None:
    tasks = [unique_task(f"t{n}", key=f"k{n}") for n in range(12)]
    assert partitioned.enqueue(tasks) == [t.id for t in tasks]
    duplicates = [unique_task(f"d{n}", key=f"k{n}") for n in range(12)]
    for _ in range(3):  # whatever partition the turn points at, every producer finds the same lock
        assert partitioned.enqueue(duplicates) == [t.id for t in tasks]
        assert [partitioned.enqueue([d]) for d in duplicates] == [[t.id] for t in tasks]
    depths = [rows[0].pending for rows in partitioned.partition_stats(["default"])]
    assert sum(depths) == 12
    for task in tasks:
        assert task.unique is not None
        home = partitioned.partitions[partitioned.partition_of(task.unique.key)]
        assert home.lookup(task.id) is not None


def test_partitions_claim_a_unique_tasks_ticks_where_its_lock_is(partitioned: PartitionedBroker) -> None:
    same_lock = unique_task("probe")  # what every tick above holds: lock "k"
    assert partitioned.claim_cron_tick("s", T0, unique_task("a")) is True
    assert partitioned.claim_cron_tick("s", T0, unique_task("b")) is False  # exactly once, as ever
    assert partitioned.claim_cron_tick("s", T0 + 1000, unique_task("c")) is True  # recorded, nothing stored
    assert partitioned.last_cron_tick("s") == T0 + 1000
    assert sum(rows[0].pending for rows in partitioned.partition_stats(["default"])) == 1
    assert same_lock.unique is not None
    home = partitioned.partition_of(same_lock.unique.key)
    assert partitioned.partitions[home].last_cron_tick("s") == T0 + 1000
    # A process that never claimed finds the schedule's latest tick wherever it is recorded.
    other = PartitionedBroker(partitioned.partitions)
    assert other.last_cron_tick("s") == T0 + 1000


def test_a_unique_key_that_is_not_json_or_on_a_task_that_is_not_unique_is_refused() -> None:
    app, _, _ = make_app()

    @app.task(unique=60)
    def job() -> None: ...

    @app.task
    def plain() -> None: ...

    with pytest.raises(UniqueKeyError, match="cannot be encoded as JSON"):
        job.options(unique_key=float("nan")).delay()
    with pytest.raises(UniqueKeyError, match="is not declared unique"):
        plain.options(unique_key="x")
    assert stored(app) == 0
