"""RedisBroker details beyond the shared contract, on fakeredis: key layout, malformed data, client
construction and error translation."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis
import redis.exceptions as rx
from broker_contract import GRACE, LEASE, STALE_WORKER, T0, ids, settle, stats, take, task, unique_task

from hexq.adapters.redis import keys as key_layout
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.client import HEALTH_CHECK_INTERVAL
from hexq.adapters.redis.errors import translate
from hexq.adapters.redis.scripts import NAMES, source
from hexq.core.errors import BrokerAuthError, BrokerFullError, BrokerUnavailableError, ConfigError
from hexq.core.ports import DeadLetter, Delivery, MinuteTally, OutcomeRecord
from hexq.core.rate_limit import QueueRate, RateLimit, RateLimits
from hexq.core.rules import minute_of
from hexq.entrypoints.settings import Connection

P = "{app}:"


@pytest.fixture
def client() -> Iterator[Any]:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def broker(client: Any) -> Iterator[RedisBroker]:
    broker = RedisBroker(client, "app")
    yield broker
    broker.close()


def test_every_script_compiles(client: Any) -> None:
    for name in NAMES:
        assert client.script_load(source(name))


# The layout existing deployments hold (keys.py's docstring table): changing it needs a migration.
DEPLOYED_LAYOUT = {
    "{p}:q:<queue>": "list", "{p}:tasks": "hash", "{p}:eta:<queue>": "zset", "{p}:etakeys:<queue>": "hash",
    "{p}:crashes": "hash", "{p}:owned:<consumer>": "list", "{p}:inflight": "hash", "{p}:leases": "zset",
    "{p}:suspects": "hash", "{p}:dead": "list", "{p}:cron": "hash", "{p}:workers": "zset",
    "{p}:workerinfo": "hash", "{p}:wake": "list",
    # {p}:broadcast, a pub/sub channel, held nothing: broadcasts are copied into '@broadcast.<worker>' queues.
    # Added with per-queue wake-ups; {p}:wake, which they replace, is still read (producers of before).
    "{p}:idle:<queue>": "zset", "{p}:armed:<queue>": "list", "{p}:wake:<queue>": "list",
    # Added with partitions: written only by an app with partitions > 1, so today's deployments hold none.
    "{p}:meta": "hash",
    # A channel, not a key: one message per broadcast for whoever watches.
    "{p}:announce": "pubsub",
    # Added with deadlines: written only when a task with expires= expires.
    "{p}:expired": "hash",
    # Added with unique tasks: written only for tasks declared unique.
    "{p}:unique:<key>": "string",
    # Added with cancellation: written only while a running task's cancellation is pending.
    "{p}:cancels": "hash",
    # Added with rate limits: written only by workers that enforce one.
    "{p}:rates": "hash",
    # Added with results: written only for tasks with keep_result, so today's deployments hold none (it was a
    # list in the commits that added results; a string, SET with GET, since it became one command per task).
    "{p}:result:<id>": "string",
    "{p}:outcomewake:<id>": "list",
    # Added with the dashboard: written by heartbeats that carry a worker's per-minute counts; expires.
    "{p}:tally:<minute>": "hash",
}


def documented_layout() -> dict[str, str]:
    """The table in keys.py's docstring: key pattern -> type."""
    return dict(re.findall(r"^(\{p\}:\S+) +(\w+) ", key_layout.__doc__ or "", re.MULTILINE))


def documented_row(key: str) -> str | None:
    for pattern in documented_layout():
        regex = re.escape(pattern.replace("{p}", "{app}")).replace("<queue>", ".+").replace("<consumer>", ".+")
        regex = regex.replace(re.escape("<key>"), "[0-9a-f]{32}").replace("<id>", ".+")
        regex = regex.replace(re.escape("<minute>"), "[0-9]+")
        if re.fullmatch(regex, key):
            return pattern
    return None


def test_the_documented_layout_is_the_deployed_one() -> None:
    assert documented_layout() == DEPLOYED_LAYOUT


def test_a_full_cycle_writes_exactly_the_documented_keys(broker: RedisBroker, client: Any) -> None:
    later = T0 + 101 + GRACE
    steps: list[Callable[[], object]] = [
        lambda: broker.enqueue([task("a"), task("b"), task("e", eta_ms=T0 + 10_000, dedup_key="k"), task("l", "low")]),
        lambda: take(broker, limit=2, lease_ms=100),
        lambda: settle(broker, T0 + 101),  # c1's lease is suspected...
        lambda: settle(broker, later),  # ...then recovered, a crash counted for each of its tasks
        lambda: take(broker, consumer="c2", now_ms=later),
        lambda: broker.ack("c2", ["a"], [OutcomeRecord("a", "{}", 60_000, later)]),  # its outcome kept
        lambda: broker.wait_outcome("y", later, 0.01),  # a waiter's mark in result:y...
        lambda: broker.record_outcome(OutcomeRecord("y", "{}", 60_000, later)),  # ...so this pushes outcomewake:y
        lambda: broker.dead_letter("c2", "b", "default", "p-b", "boom", later),
        lambda: broker.discard("c2", "l", "low", "expired"),
        lambda: broker.enqueue([task("x")]),
        lambda: take(broker, consumer="c4"),
        lambda: broker.cancel("x", later),  # marked: it is owned
        lambda: broker.renew_leases(["c4"], later + 30_000),
        lambda: broker.renew_leases(["c2"], later + 30_000),
        lambda: broker.claim_cron_tick("s", T0, task("cron", "low")),
        lambda: broker.heartbeat("w1", "{}", T0, MinuteTally(minute_of(T0), done={"default": 1}, pending={"low": 2})),
        lambda: take(broker, "@broadcast.w1", consumer="w1.0"),  # the worker's child, idle on its '@' queue...
        lambda: broker.broadcast(task("everyone"), T0),  # ...is woken by its copy in q:@broadcast.w1
        lambda: broker.forget_worker("w1"),  # which goes with the worker, with its idle mark and tokens
        lambda: take(broker, "calm", consumer="c3"),  # finds nothing: idle on "calm", which it arms...
        lambda: broker.enqueue([task("w", "calm")]),  # ...so this fires a wake token
        lambda: take(broker, "quiet", consumer="c3"),  # armed, and left so
        lambda: broker.enqueue([unique_task("u")]),  # a unique task's lock, held while it waits
        lambda: broker.enqueue([task("r1", "rated"), task("r2", "rated")]),
        lambda: broker.reserve("c4", ["rated"], 5, T0, LEASE, rates=RateLimits(  # one taken, one left queued
            queues=(QueueRate("rated", RateLimit.parse("1/s")),))),
    ]
    seen: dict[str, str] = {}
    for step in steps:
        step()
        seen.update({key: client.type(key) for key in client.keys("*")})
    rows = {key: documented_row(key) for key in seen}
    assert None not in rows.values(), f"undocumented keys: {[k for k, row in rows.items() if row is None]}"
    # meta only when partitioned; the shared wake list only producers of earlier versions write
    not_in_a_cycle = {"{p}:meta": "hash", "{p}:wake": "list", "{p}:announce": "pubsub"}
    assert {row: seen[key] for key, row in rows.items()} | not_in_a_cycle == DEPLOYED_LAYOUT
    assert {"{app}:q:@broadcast.w1", "{app}:idle:@broadcast.w1", "{app}:wake:@broadcast.w1"} <= set(seen)
    assert [key for key in client.keys("*") if "@broadcast" in key] == []


def test_lua_and_python_name_keys_alike(client: Any) -> None:
    keys = key_layout.Keys("app")
    expected = {name: keys.base + suffix for name, suffix in key_layout.SINGLE_KEYS.items()}
    expected |= {f'{function}("x")': keys.base + infix + "x" for function, infix in key_layout.FAMILIES.items()}
    probe = key_layout.lua_preamble() + "return {" + ", ".join(expected) + "}"
    assert client.eval(probe, 1, keys.tasks) == list(expected.values())
    assert {name: getattr(keys, name.lower()) for name in key_layout.SINGLE_KEYS} == {
        name: expected[name] for name in key_layout.SINGLE_KEYS}
    assert [keys.queue("x"), keys.eta("x"), keys.owned("x")] == [
        expected['qkey("x")'], expected['etakey("x")'], expected['ownedkey("x")']]


def test_layout_of_queued_waiting_and_owned_tasks(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("a"), task("b"), task("e", eta_ms=T0 + 10, dedup_key="k")])
    take(broker, limit=1)
    assert client.lrange(P + "q:default", 0, -1) == ["b"]
    assert client.hgetall(P + "tasks") == {"a": "p-a", "b": "p-b", "e": "p-e"}
    assert client.zrange(P + "eta:default", 0, -1, withscores=True) == [("e", T0 + 10)]
    assert client.hgetall(P + "etakeys:default") == {"k:k": "e", "i:e": "k"}
    assert client.lrange(P + "owned:c1", 0, -1) == ["a"]
    assert client.hgetall(P + "inflight") == {"a": f"{T0}|default|c1",
                                              key_layout.INFLIGHT_MARK: key_layout.INFLIGHT_MARK_VALUE}
    assert client.zscore(P + "leases", "c1") == T0 + 30_000


def test_promotion_forgets_the_dedup_index(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("e", eta_ms=T0 + 10, dedup_key="k"), task("f", eta_ms=T0 + 10)])
    take(broker, now_ms=T0 + 10, limit=0)
    assert client.exists(P + "etakeys:default") == 0
    assert client.exists(P + "eta:default") == 0


def test_ack_leaves_no_trace(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("a")])
    take(broker)
    broker.recover_consumer("c1", ["a"])
    take(broker)
    broker.ack("c1", ["a"])
    assert [k for k in client.keys("*") if k not in (P + "leases", P + "wake")] == []


# Each way an owned task ends, for the consumer "c1" that owns task "a" of queue "default".
ENDINGS: dict[str, Callable[[RedisBroker], object]] = {
    "ack": lambda broker: broker.ack("c1", ["a"]),
    "release": lambda broker: broker.release("c1", ["a"]),
    "retry": lambda broker: broker.retry("c1", task("a")),
    "dead_letter": lambda broker: broker.dead_letter("c1", "a", "default", "p-a", "boom", T0),
    "discard": lambda broker: broker.discard("c1", "a", "default", "expired"),
    "recover": lambda broker: broker.recover_consumer("c1", []),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_the_in_flight_hash_keeps_its_mark_while_tasks_fly_and_goes_with_the_last(
        broker: RedisBroker, client: Any, ending: str) -> None:
    broker.enqueue([task("a"), task("b")])
    take(broker, limit=1)
    take(broker, limit=1, consumer="c2")
    assert client.hget(P + "inflight", key_layout.INFLIGHT_MARK) == key_layout.INFLIGHT_MARK_VALUE
    ENDINGS[ending](broker)
    # b still flies: the mark stays, and nothing that reads the hash takes it for a task.
    assert set(client.hkeys(P + "inflight")) == {"b", key_layout.INFLIGHT_MARK}
    assert [row.id for row in broker.in_flight()] == ["b"]
    assert [s.in_flight for s in broker.queue_stats(["default"])] == [1]
    broker.ack("c2", ["b"])
    assert client.exists(P + "inflight") == 0


@pytest.mark.parametrize("ending", ENDINGS)
def test_whatever_ends_the_last_task_in_flight_deletes_the_in_flight_hash(
        broker: RedisBroker, client: Any, ending: str) -> None:
    broker.enqueue([task("a")])
    take(broker, limit=1)
    ENDINGS[ending](broker)
    assert client.exists(P + "inflight") == 0


def test_an_id_without_payload_is_delivered_with_payload_none(broker: RedisBroker, client: Any) -> None:
    client.rpush(P + "q:default", "stranger")
    broker.enqueue([task("a")])
    got = take(broker)
    assert [(d.id, d.payload) for d in got] == [("stranger", None), ("a", "p-a")]


def test_malformed_records_are_shown_or_skipped(broker: RedisBroker, client: Any) -> None:
    client.lpush(P + "dead", "not json")
    client.hset(P + "inflight", "x", "garbage")
    letters = broker.dead_letters()
    assert [(d.id, d.payload, d.reason) for d in letters] == [("", "not json", "malformed dead letter record")]
    assert broker.in_flight() == []
    assert broker.requeue_dead(["x"]) == 0
    assert broker.requeue_dead() == 0
    assert broker.dead_letters() == []


def test_dead_letters_are_json_newest_first(broker: RedisBroker, client: Any) -> None:
    broker.dead_letter("c1", "a", "default", None, "r1", T0)
    broker.dead_letter("c1", "b", "default", "pb", "r2", T0 + 1)
    assert [json.loads(r)["id"] for r in client.lrange(P + "dead", 0, -1)] == ["b", "a"]


def test_a_dead_record_has_a_traceback_field_only_when_there_is_one(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("a"), task("b")])
    take(broker)
    broker.dead_letter("c1", "a", "default", "pa", "hard timeout", T0)
    broker.dead_letter("c1", "b", "default", "pb", "raised", T0 + 1, traceback="Traceback ...\nValueError: x\n")
    newest, oldest = (json.loads(r) for r in client.lrange(P + "dead", 0, -1))
    assert "traceback" not in oldest and newest["traceback"] == "Traceback ...\nValueError: x\n"


def test_a_dead_record_written_before_tracebacks_reads_with_an_empty_one(broker: RedisBroker, client: Any) -> None:
    # As hexq wrote them before dead letters kept tracebacks: no such field.
    client.lpush(P + "dead", json.dumps({"id": "old", "queue": "default", "payload": "p-old", "reason": "raised",
                                         "failed_at_ms": T0}))
    [letter] = broker.dead_letters()
    assert letter == DeadLetter("old", "default", "p-old", "raised", T0, "") == broker.find_dead("old")[0]
    assert broker.requeue_dead(["old"]) == 1 and [d.id for d in take(broker)] == ["old"]


def test_no_wake_token_while_nobody_is_idle(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task(str(i)) for i in range(200)])
    broker.enqueue([task("x")])
    assert client.keys(P + "wake*") == [] and client.keys(P + "idle*") == []


def test_an_idle_consumer_is_woken_once_and_unmarked_when_it_takes_work(broker: RedisBroker, client: Any) -> None:
    assert take(broker, ["high", "default"]) == []
    assert client.zscore(P + "idle:default", "c1") == T0 and client.zscore(P + "idle:high", "c1") == T0
    assert client.llen(P + "armed:default") == 1 and client.llen(P + "armed:high") == 1
    for name in "abc":
        broker.enqueue([task(name)])
    assert client.lrange(P + "wake:default", 0, -1) == ["1"]  # the armed token, fired once
    assert client.keys(P + "armed:default") == [] and client.keys(P + "wake:high") == []
    assert ids(take(broker, ["high", "default"])) == ["a", "b", "c"]
    assert client.keys(P + "idle*") == []
    broker.enqueue([task("d")])
    assert client.llen(P + "wake:default") == 1  # the token the consumer never waited for, not another


def test_an_eta_task_wakes_an_idle_consumer_to_look_again(broker: RedisBroker, client: Any) -> None:
    assert take(broker) == []
    broker.enqueue([task("later", eta_ms=T0 + 500)])
    assert client.llen(P + "wake:default") == 1


def test_a_woken_consumer_passes_the_wake_up_on(broker: RedisBroker, client: Any) -> None:
    assert take(broker, consumer="c1") == [] and take(broker, consumer="c2") == []
    broker.enqueue([task("a"), task("b")])
    assert client.llen(P + "wake:default") == 1
    got = broker.reserve("c1", ["default"], 1, T0, LEASE, (), 1.0).deliveries  # takes the token, then "a"
    assert ids(list(got)) == ["a"]
    assert client.llen(P + "wake:default") == 1  # for c2, still idle, as "b" waits
    assert client.zrange(P + "idle:default", 0, -1) == ["c2"]
    got = broker.reserve("c2", ["default"], 1, T0, LEASE, (), 1.0).deliveries
    assert ids(list(got)) == ["b"] and client.keys(P + "wake:default") == []


def test_a_woken_consumer_that_emptied_the_queue_arms_it_for_the_others(broker: RedisBroker, client: Any) -> None:
    assert take(broker, consumer="c1") == [] and take(broker, consumer="c2") == []
    broker.enqueue([task("a")])
    assert ids(list(broker.reserve("c1", ["default"], 5, T0, LEASE, (), 1.0).deliveries)) == ["a"]
    assert client.llen(P + "armed:default") == 1  # c2 is still idle: the next task must wake it
    broker.enqueue([task("b")])
    assert client.llen(P + "wake:default") == 1


def test_a_single_task_the_multi_could_not_store_goes_through_the_push_script(
        broker: RedisBroker, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert take(broker) == []  # idle, so the task must also fire the armed token

    def lost(*commands: Any, **options: Any) -> list[Any]:
        raise rx.ConnectionError("lost before the reply")

    monkeypatch.setattr(broker._direct, "exchange", lost)
    broker.enqueue([task("a")])
    assert client.lrange(P + "q:default", 0, -1) == ["a"] and client.hget(P + "tasks", "a") == "p-a"
    assert client.llen(P + "wake:default") == 1


def test_a_single_task_the_multi_stored_before_its_reply_was_lost_is_not_queued_twice(
        broker: RedisBroker, client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    exchange = broker._direct.exchange

    def stored_then_lost(packed: bytes, expected: bytes) -> Any:
        exchange(packed, expected)
        raise rx.ConnectionError("lost after EXEC ran")

    monkeypatch.setattr(broker._direct, "exchange", stored_then_lost)
    broker.enqueue([task("a")])  # the push script the caller falls back on finds the payload
    assert client.lrange(P + "q:default", 0, -1) == ["a"] and client.hget(P + "tasks", "a") == "p-a"


def test_stale_idle_marks_are_dropped(broker: RedisBroker, client: Any) -> None:
    assert take(broker, consumer="gone") == []
    assert take(broker, consumer="c2", now_ms=T0 + STALE_WORKER + 1) == []
    assert client.zrange(P + "idle:default", 0, -1) == ["c2"]
    assert 0 < client.pttl(P + "idle:default") <= STALE_WORKER
    assert 0 < client.pttl(P + "armed:default") <= STALE_WORKER  # renewed by every idle wait


def test_a_waiting_consumer_also_hears_the_shared_wake_list_of_earlier_producers(
        broker: RedisBroker, client: Any) -> None:
    client.rpush(P + "wake", "1")
    client.rpush(P + "q:default", "old")  # as a producer of the previous version stores a task
    client.hset(P + "tasks", "old", "p-old")
    assert take(broker, "other") == []
    started = time.monotonic()
    assert broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries[0].id == "old"
    assert time.monotonic() - started < 2.0


def test_acks_cut_the_head_of_the_owned_list(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task(name) for name in "abcde"])
    take(broker)
    broker.ack("c1", ["a", "b"])
    assert client.lrange(P + "owned:c1", 0, -1) == ["c", "d", "e"]
    broker.ack("c1", ["d"])  # not at the head: still found
    assert client.lrange(P + "owned:c1", 0, -1) == ["c", "e"]
    broker.ack("c1", ["e", "c", "zz"])
    assert client.exists(P + "owned:c1") == 0 and broker.in_flight() == []


def test_big_batches_are_split_but_keep_order(broker: RedisBroker) -> None:
    broker.enqueue([task(f"t{i:05d}") for i in range(2500)])
    assert stats(broker) == (2500, 0, 0)
    got: list[str] = []
    while batch := take(broker, limit=1000):
        got += ids(batch)
    assert got == [f"t{i:05d}" for i in range(2500)]


def test_reserve_recovers_a_bounded_number_of_expired_consumers(broker: RedisBroker) -> None:
    broker.enqueue([task(str(i)) for i in range(25)])
    for i in range(25):
        take(broker, consumer=f"c{i}", limit=1, lease_ms=1)
    settle(broker, T0 + 10)  # marks all 25 as suspected, recovers none
    assert stats(broker) == (0, 0, 25)
    settle(broker, T0 + 10 + GRACE)
    assert stats(broker) == (10, 0, 15)
    settle(broker, T0 + 10 + GRACE)
    settle(broker, T0 + 10 + GRACE)
    assert stats(broker) == (25, 0, 0)


def test_payloads_that_are_not_utf8_reach_the_caller_as_bytes(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("a")])
    client.hset(P + "tasks", "a", b"\xff\xfe")
    assert broker.lookup("a") == Delivery("a", "", b"\xff\xfe", 0)
    assert take(broker) == [Delivery("a", "default", b"\xff\xfe", 0)]
    assert broker.lookup("a") == Delivery("a", "default", b"\xff\xfe", 0)


def test_script_cache_loss_is_handled(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("a")])
    client.script_flush()
    assert ids(take(broker)) == ["a"]


def test_prefix_with_braces_is_refused(client: Any) -> None:
    with pytest.raises(ConfigError, match="prefix"):
        RedisBroker(client, "a{b}")


# -- construction -------------------------------------------------------------------------------------
def kwargs_of(broker: RedisBroker) -> tuple[dict[str, Any], dict[str, Any]]:
    return (broker._client.connection_pool.connection_kwargs, broker._blocking.connection_pool.connection_kwargs)


def test_from_connection_does_not_connect_and_sets_timeouts() -> None:
    broker = RedisBroker.from_connection(Connection("redis://:pw@10.255.255.1:6390/3", socket_timeout=7.0,
                                                    socket_connect_timeout=2.0), "app")
    main, blocking = kwargs_of(broker)
    assert (main["host"], main["port"], main["db"], main["password"]) == ("10.255.255.1", 6390, 3, "pw")
    assert (main["socket_timeout"], main["socket_connect_timeout"]) == (7.0, 2.0)
    assert blocking["socket_timeout"] is None
    # The health check is off only on a redis-py whose on_connect could recurse through it (client.py).
    assert main["decode_responses"] is True and main["health_check_interval"] == HEALTH_CHECK_INTERVAL
    assert HEALTH_CHECK_INTERVAL > 0 or redis.__version__.startswith("5.")
    broker.close()


def test_from_connection_tls_and_unix() -> None:
    tls = RedisBroker.from_connection(Connection("rediss://h:6380/0", ssl_ca_certs="/ca.pem",
                                                 ssl_certfile="/c.pem", ssl_keyfile="/k.pem"), "app")
    assert tls._client.connection_pool.connection_class is redis.SSLConnection
    main, _ = kwargs_of(tls)
    assert (main["ssl_ca_certs"], main["ssl_certfile"], main["ssl_keyfile"]) == ("/ca.pem", "/c.pem", "/k.pem")
    unix = RedisBroker.from_connection(Connection("unix:///run/redis.sock?db=2"), "app")
    assert unix._client.connection_pool.connection_class is redis.UnixDomainSocketConnection
    assert kwargs_of(unix)[0]["path"] == "/run/redis.sock"


def test_unreachable_server_is_unavailable_and_the_password_stays_hidden() -> None:
    broker = RedisBroker.from_connection(Connection("redis://u:topsecret@127.0.0.1:1/0"), "app")
    with pytest.raises(BrokerUnavailableError) as caught:
        broker.enqueue([task("a")])
    message = str(caught.value)
    assert "topsecret" not in message
    assert "u:***@127.0.0.1:1" in message and "retry" in message
    assert isinstance(caught.value.__cause__, rx.ConnectionError)


@pytest.mark.parametrize(("error", "expected"), [
    (rx.ConnectionError("refused"), BrokerUnavailableError),
    (rx.TimeoutError("timed out"), BrokerUnavailableError),
    (rx.BusyLoadingError("LOADING Redis is loading the dataset in memory"), BrokerUnavailableError),
    (rx.ReadOnlyError("You can't write against a read only replica."), BrokerUnavailableError),
    (rx.AuthenticationError("invalid password"), BrokerAuthError),
    (rx.ResponseError("WRONGPASS invalid username-password pair or user is disabled."), BrokerAuthError),
    (rx.ResponseError("NOAUTH Authentication required."), BrokerAuthError),
    (rx.ResponseError("OOM command not allowed when used memory > 'maxmemory'."), BrokerFullError),
    (rx.OutOfMemoryError("command not allowed when used memory > 'maxmemory'. script: abc"), BrokerFullError),
    (rx.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), None),
])
def test_translation(error: rx.RedisError, expected: type[Exception] | None) -> None:
    mapped = translate(error, "redis://u:***@h:1/0")
    if expected is None:
        assert mapped is None
    else:
        assert type(mapped) is expected
        assert "redis://u:***@h:1/0" in str(mapped)


def test_a_pipelined_batch_survives_script_cache_loss_without_duplicates(broker: RedisBroker, client: Any) -> None:
    broker.enqueue([task("warm")])
    client.script_flush()
    broker.enqueue([task(f"p{i:04d}") for i in range(1200)])
    got: list[str] = []
    while batch := take(broker, limit=1000):
        got += ids(batch)
    assert got == ["warm"] + [f"p{i:04d}" for i in range(1200)]
