"""One app over several partitions (``PartitionedBroker``), on fakeredis: what the composite adds to the broker
contract (which it passes whole with one partition, ``test_broker_contract.py``). With several partitions,
FIFO and priority hold within a partition, and across partitions every task is still delivered, once."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
from broker_contract import LEASE, T0, task

from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.partitioned import STICKY_RESERVATIONS, PartitionedBroker
from hexq.adapters.redis.partitions import partition_tags, slot_of_tag
from hexq.core.errors import BrokerUnavailableError, ConfigError
from hexq.core.ports import MinuteTally, OutcomeRecord, OutgoingTask, TaskState
from hexq.core.rules import LeaseRules, minute_of
from hexq.core.status import TaskStatus

PREFIX = "app"


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


def partitioned(server: fakeredis.FakeServer, count: int = 3, **options: Any) -> PartitionedBroker:
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    return PartitionedBroker([RedisBroker(client, PREFIX, rules=LeaseRules(), tag=tag)
                              for tag in partition_tags(PREFIX, count)], **options)


@pytest.fixture
def broker(server: fakeredis.FakeServer) -> Iterator[PartitionedBroker]:
    made = partitioned(server)
    yield made
    made.close()


def drain(broker: PartitionedBroker, consumer: str = "c1", queues: tuple[str, ...] = ("default",),
          limit: int = 100) -> list[str]:
    """Reserve and acknowledge until a reservation comes back empty; the ids in the order they came."""
    seen: list[str] = []
    acks: list[str] = []
    while True:
        got = broker.reserve(consumer, queues, limit, T0, LEASE, acks).deliveries
        if not got:
            return seen
        acks = [d.id for d in got]
        seen += acks


def depth_per_partition(broker: PartitionedBroker, queue: str = "default") -> list[int]:
    return [rows[0].pending for rows in broker.partition_stats([queue])]


def test_tags_keep_partition_zero_and_fall_in_distinct_slot_ranges() -> None:
    assert partition_tags(PREFIX, 1) == (PREFIX,)
    for count in (2, 3, 4, 6, 16):
        tags = partition_tags(PREFIX, count)
        assert tags[0] == PREFIX  # going from 1 to N partitions moves nothing
        assert len({slot_of_tag(tag) * count // 16384 for tag in tags}) == count


def test_tasks_spread_over_every_partition_and_each_is_delivered_once(broker: PartitionedBroker) -> None:
    for i in range(30):
        broker.enqueue([task(f"t{i}")])
    broker.enqueue([task(f"b{i}") for i in range(30)])
    assert depth_per_partition(broker) == [20, 20, 20]
    got = drain(broker, limit=7)
    assert sorted(got) == sorted([f"t{i}" for i in range(30)] + [f"b{i}" for i in range(30)])
    assert broker.queue_stats(["default"])[0].pending == 0


def test_fifo_and_priority_hold_within_a_partition(server: fakeredis.FakeServer) -> None:
    broker = partitioned(server)
    part = broker.partitions[1]
    part.enqueue([task("low1", "low"), task("high1", "high"), task("low2", "low"), task("high2", "high")])
    assert drain(broker, queues=("high", "low"), limit=1) == ["high1", "high2", "low1", "low2"]


def test_no_partition_starves_while_another_stays_busy(server: fakeredis.FakeServer) -> None:
    broker = partitioned(server)
    busy, quiet = broker.partitions[0], broker.partitions[2]
    busy.enqueue([task(f"busy{i}") for i in range(100)])
    quiet.enqueue([task("quiet")])
    taken: list[str] = []
    acks: list[str] = []
    for _ in range(3 * STICKY_RESERVATIONS):
        got = broker.reserve("c1", ["default"], 1, T0, LEASE, acks).deliveries
        acks = [d.id for d in got]
        taken += acks
    assert "quiet" in taken[:2 * STICKY_RESERVATIONS]


def test_acks_settle_in_the_partition_that_handed_the_task_out(broker: PartitionedBroker) -> None:
    broker.enqueue([task(f"t{i}") for i in range(6)])
    got = []
    for _ in range(6):
        got += broker.reserve("c1", ["default"], 1, T0, LEASE).deliveries
    assert len(broker.in_flight()) == 6
    broker.ack("c1", [d.id for d in got])
    assert broker.in_flight() == []
    assert all(part.lookup(d.id) is None for part in broker.partitions for d in got)


def test_a_dead_consumer_is_recovered_in_every_partition(broker: PartitionedBroker) -> None:
    broker.enqueue([task(f"t{i}") for i in range(6)])
    for _ in range(6):
        broker.reserve("c1", ["default"], 1, T0, LEASE)
    assert broker.recover_consumer("c1", ["t0"]) == 6
    assert broker.queue_stats(["default"])[0].pending == 6
    crashed = broker.lookup("t0")
    assert crashed is not None and crashed.crashes == 1


def test_the_parent_settles_for_a_dead_child_without_knowing_the_partition(server: fakeredis.FakeServer) -> None:
    child = partitioned(server)
    parent = partitioned(server)  # another process: it never saw the reservation
    child.enqueue([task(f"t{i}") for i in range(3)])
    owned = [d for _ in range(3) for d in child.reserve("c1", ["default"], 1, T0, LEASE).deliveries]
    victim = owned[1]
    found = parent.lookup(victim.id)
    assert found is not None and found.queue == "default"
    parent.dead_letter("c1", victim.id, "default", "payload", "hard timeout", T0)
    retried = owned[2]
    parent.retry("c1", OutgoingTask(retried.id, "default", "again"))
    assert [letter.id for letter in parent.dead_letters()] == [victim.id]
    assert sorted(d.id for d in parent.in_flight()) == [owned[0].id]
    assert drain(parent, consumer="c2") == [retried.id]


def test_dedup_keys_and_broadcast_copies_have_a_partition_of_their_own(broker: PartitionedBroker) -> None:
    for i in range(5):
        broker.enqueue([task(f"e{i}", eta_ms=T0 + 1000 + i, dedup_key="same")])
    assert broker.queue_stats(["default"])[0].eta == 1
    broker.enqueue([task("copy", "@broadcast.w1")])  # a broadcast copy dead-lettered, then requeued
    assert depth_per_partition(broker, "@broadcast.w1") == [1, 0, 0]


def test_broadcasts_are_copied_in_partition_zero_next_to_the_heartbeats(broker: PartitionedBroker) -> None:
    broker.heartbeat("w1", "{}", T0)
    broker.heartbeat("w2", "{}", T0)
    assert broker.broadcast(task("everyone"), T0) == 2
    assert depth_per_partition(broker, "@broadcast.w1") == [1, 0, 0]
    assert len(drain(broker, "w2.0", ("@broadcast.w2",))) == 1  # served from partition 0 like any queue
    broker.forget_worker("w1")
    assert depth_per_partition(broker, "@broadcast.w1") == [0, 0, 0]
    assert broker.broadcast(task("again"), T0) == 1


def test_cron_and_heartbeats_live_in_partition_zero(broker: PartitionedBroker) -> None:
    assert broker.claim_cron_tick("every-minute", T0, task("tick"))
    assert not broker.claim_cron_tick("every-minute", T0, task("tick-again"))
    broker.heartbeat("w1", "{}", T0)
    assert [beat.worker_id for beat in broker.partitions[0].workers()] == ["w1"]
    assert broker.partitions[1].last_cron_tick("every-minute") is None


def test_the_dashboards_counters_live_in_partition_zero(broker: PartitionedBroker) -> None:
    broker.heartbeat("w1", "{}", T0, MinuteTally(minute_of(T0), done={"default": 4}))
    assert broker.tallies(T0, T0) == broker.partitions[0].tallies(T0, T0) == [
        MinuteTally(minute_of(T0), done={"default": 4})]
    assert broker.partitions[1].tallies(T0, T0) == []


def test_dead_letters_are_found_and_deleted_in_every_partition(broker: PartitionedBroker) -> None:
    for index, part in enumerate(broker.partitions):
        part.dead_letter("c1", "same", "default", f"p{index}", f"r{index}", T0 + index)
        part.dead_letter("c1", f"only{index}", "default", "p", "r", T0)
    assert [d.reason for d in broker.find_dead("same")] == [f"r{i}" for i in reversed(range(len(broker.partitions)))]
    assert broker.delete_dead(["same", "only1"]) == len(broker.partitions) + 1
    assert sorted(d.id for d in broker.dead_letters()) == sorted(
        f"only{i}" for i in range(len(broker.partitions)) if i != 1)


def test_another_partition_count_is_refused_naming_the_fix(server: fakeredis.FakeServer) -> None:
    partitioned(server, 3).enqueue([task("a")])
    with pytest.raises(ConfigError, match=r"spread over 3 partitions .*partitions=4.*DEL \{app\}:meta"):
        partitioned(server, 4).enqueue([task("b")])
    partitioned(server, 3).enqueue([task("c")])  # the same count is fine


def test_one_partition_records_nothing(server: fakeredis.FakeServer) -> None:
    partitioned(server, 1).enqueue([task("a")])
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    assert not client.exists("{app}:meta")


class Unreachable(RedisBroker):
    """A partition whose node is down."""

    def enqueue(self, tasks: Any) -> None:
        raise BrokerUnavailableError("node down")

    def reserve(self, *args: Any, **kwargs: Any) -> Any:
        raise BrokerUnavailableError("node down")


def test_a_partition_that_is_down_is_skipped_by_producers_and_workers(server: fakeredis.FakeServer) -> None:
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    tags = partition_tags(PREFIX, 3)
    parts = [RedisBroker(client, PREFIX, tag=tags[0]), Unreachable(client, PREFIX, tag=tags[1]),
             RedisBroker(client, PREFIX, tag=tags[2])]
    broker = PartitionedBroker(parts)
    for i in range(9):
        broker.enqueue([task(f"t{i}")])
    assert sorted(drain(broker)) == [f"t{i}" for i in range(9)]


def test_reserve_fails_only_when_no_partition_answers(server: fakeredis.FakeServer) -> None:
    client = fakeredis.FakeRedis(server=server, decode_responses=True)
    broker = PartitionedBroker([Unreachable(client, PREFIX, tag=tag) for tag in partition_tags(PREFIX, 2)])
    with pytest.raises(BrokerUnavailableError):
        broker.reserve("c1", ["default"], 1, T0, LEASE)


def test_a_higher_priority_task_in_another_partition_waits_at_most_n_minus_one_lower_batches(
        server: fakeredis.FakeServer) -> None:
    broker = partitioned(server)
    for part in broker.partitions:
        part.enqueue([task(f"low-{part.keys.tag}-{i}", "low") for i in range(20)])
    queues = ["high", "low"]
    taken: list[str] = []
    acks: list[str] = []
    for _ in range(5):  # busy on low work everywhere
        got = broker.reserve("c1", queues, 1, T0, LEASE, acks).deliveries
        acks = [d.id for d in got]
    for k, part in enumerate(broker.partitions):
        part.enqueue([task(f"high{k}", "high")])
    for _ in range(2 * 3):
        got = broker.reserve("c1", queues, 1, T0, LEASE, acks).deliveries
        acks = [d.id for d in got]
        taken += acks
    # Each of the three high tasks is taken within N - 1 = 2 lower batches of the one before it.
    positions = [taken.index(f"high{k}") for k in range(3)]
    assert max(positions) <= 2 + 2, taken


def test_work_from_the_top_queue_stays_on_its_partition(server: fakeredis.FakeServer) -> None:
    broker = partitioned(server)
    for part in broker.partitions:
        part.enqueue([task(f"{part.keys.tag}-{i}", "high") for i in range(10)])
    taken = [d.id for _ in range(STICKY_RESERVATIONS)
             for d in broker.reserve("c1", ["high", "low"], 1, T0, LEASE).deliveries]
    assert len({task_id.rsplit("-", 1)[0] for task_id in taken}) == 1  # acks keep riding on reservations


def test_the_worker_start_up_probe_meets_the_layout_check(server: fakeredis.FakeServer) -> None:
    partitioned(server, 3).enqueue([task("a")])
    with pytest.raises(ConfigError, match="partitions=2"):
        partitioned(server, 2).queue_stats(["default"])  # what a worker reads before its first child starts


def test_each_partition_enforces_its_share_of_a_rate_limit(broker: PartitionedBroker) -> None:
    from hexq.core.rate_limit import QueueRate, RateLimit, RateLimits

    broker.enqueue([task(f"t{i}") for i in range(9)])  # three in each partition
    assert depth_per_partition(broker) == [3, 3, 3]
    rates = RateLimits(queues=(QueueRate("default", RateLimit.parse("3/s")),))  # 1/s in each partition

    def second(now_ms: int) -> list[str]:
        taken: list[str] = []
        while got := broker.reserve("c1", ["default"], 100, now_ms, LEASE, rates=rates).deliveries:
            taken += [d.id for d in got]
        return taken

    # Together the partitions never exceed the whole; each takes one per second from its own backlog.
    assert len(second(T0)) == 3
    assert broker.reserve("c1", ["default"], 100, T0 + 999, LEASE, rates=rates).next_eta_ms == T0 + 1000
    assert len(second(T0 + 999)) == 0
    assert len(second(T0 + 1000)) == 3
    assert depth_per_partition(broker) == [1, 1, 1]


def test_outcomes_go_with_their_acks_to_the_partition_that_handed_the_task_out(broker: PartitionedBroker) -> None:
    broker.enqueue([task(f"t{i}") for i in range(6)])  # two in each partition
    handed: dict[str, int] = {}
    acks: list[str] = []
    outcomes: list[OutcomeRecord] = []
    while True:
        got = broker.reserve("c1", ("default",), 100, T0, LEASE, acks, outcomes=outcomes).deliveries
        if not got:
            break
        for delivery in got:
            handed[delivery.id] = next(i for i, part in enumerate(broker.partitions) if part.lookup(delivery.id))
        acks = [d.id for d in got]
        outcomes = [OutcomeRecord(d.id, f'"{d.id}"', 60_000, T0) for d in got]
    assert len(handed) == 6 and set(handed.values()) == {0, 1, 2}
    for task_id, index in handed.items():
        states = [part.task_state(task_id, T0) for part in broker.partitions]
        assert [i for i, state in enumerate(states) if state.outcome] == [index]  # in its own partition only
        assert broker.task_state(task_id, T0) == TaskState(None, f'"{task_id}"')
        assert broker.wait_outcome(task_id, T0, 1.0) == f'"{task_id}"'


def test_task_state_finds_a_task_in_any_partition(broker: PartitionedBroker) -> None:
    broker.enqueue([task(f"t{i}") for i in range(3)])
    assert [broker.task_state(f"t{i}", T0).live for i in range(3)] == [TaskStatus.QUEUED] * 3
    got = broker.reserve("c1", ("default",), 1, T0, LEASE).deliveries
    assert broker.task_state(got[0].id, T0).live is TaskStatus.RUNNING
    assert broker.task_state("nowhere", T0) == TaskState(None, None)
    assert broker.wait_outcome("nowhere", T0, 5.0) is None  # held by no partition: at once


def test_a_dead_letter_keeps_its_outcome_in_the_task_partition(broker: PartitionedBroker) -> None:
    broker.enqueue([task("a"), task("b"), task("c")])
    got = broker.reserve("c1", ("default",), 1, T0, LEASE).deliveries
    index = next(i for i, part in enumerate(broker.partitions) if part.lookup(got[0].id))
    broker.dead_letter("c1", got[0].id, "default", "p", "boom", T0, OutcomeRecord(got[0].id, '"dead"', 60_000, T0))
    assert broker.partitions[index].task_state(got[0].id, T0).outcome == '"dead"'
    queued = next(task_id for task_id in "abc" if task_id != got[0].id)
    broker.record_outcome(OutcomeRecord(queued, '"standalone"', 60_000, T0))  # where that task is stored
    holder = next(i for i, part in enumerate(broker.partitions) if part.lookup(queued))
    assert broker.partitions[holder].task_state(queued, T0) == TaskState(TaskStatus.QUEUED, '"standalone"')
