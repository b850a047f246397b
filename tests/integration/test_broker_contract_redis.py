"""RedisBroker against a real redis-server: the shared contract, then what only a real server shows
(script cache loss, outages, memory limits, credentials, blocking waits, hash slots).

Redis only (``redis_only``): this module tests the Redis adapter itself. The same contract runs on SQLite
in tests/unit/test_broker_contract_sqlite.py, and SQLite's own failure modes in tests/unit/test_sqlite_*.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.crc import key_slot
from redis_server import RedisServer

from hexq.adapters.redis.async_producer import AsyncRedisProducer
from hexq.adapters.redis.broker import RedisBroker
from hexq.core.errors import BrokerAuthError, BrokerFullError, BrokerUnavailableError
from hexq.core.ports import AsyncProducer, Broker, OutcomeRecord, OutgoingTask
from hexq.core.rules import LeaseRules
from hexq.entrypoints.settings import Connection
from tests.unit.async_producer_contract import AsyncProducerContract, MakePair
from tests.unit.broker_contract import LEASE, T0, BrokerContract, MakeBroker, broker_factory, ids, take, task

pytestmark = [pytest.mark.integration, pytest.mark.redis_only]

PrivateRedis = Callable[..., RedisServer]


def broker_for(url: str, prefix: str = "it", rules: LeaseRules = LeaseRules(),
               **options: float | None) -> RedisBroker:
    return RedisBroker.from_connection(Connection(url, **options), prefix, rules=rules)  # type: ignore[arg-type]


def waiting_reserve(broker: RedisBroker, wait: float) -> tuple[list[str], float]:
    """An idle worker's reservation: the ids it took and how long it took."""
    started = time.monotonic()
    got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), wait).deliveries
    return ids(list(got)), time.monotonic() - started


class TestRedisBrokerContract(BrokerContract):
    @pytest.fixture
    def make_broker(self, redis_url: str, key_prefix: str) -> Iterator[MakeBroker]:
        yield from broker_factory(lambda rules: broker_for(redis_url, key_prefix, rules))


class TestAsyncRedisProducerContract(AsyncProducerContract):
    """``await task.adelay()``'s producer on redis.asyncio, against the real server."""

    @pytest.fixture
    def make_pair(self, redis_url: str, key_prefix: str) -> Iterator[MakePair]:
        made: list[RedisBroker] = []

        def make() -> tuple[Broker, AsyncProducer]:
            made.append(broker_for(redis_url, key_prefix))
            return made[-1], AsyncRedisProducer(Connection(redis_url), key_prefix)  # type: ignore[arg-type]

        yield make
        for broker in made:
            broker.close()


def test_lost_script_cache_is_reloaded_transparently(private_redis: PrivateRedis) -> None:
    server = private_redis()
    broker = broker_for(server.url)
    broker.enqueue([task("a")])
    server.client().script_flush()
    broker.enqueue([task("b")])
    assert ids(take(broker)) == ["a", "b"]
    server.client().script_flush()
    assert broker.requeue_dead() == 0
    broker.close()


def test_unavailable_while_stopped_and_working_after_restart(private_redis: PrivateRedis) -> None:
    server = private_redis()
    broker = broker_for(server.url, socket_timeout=2.0, socket_connect_timeout=2.0)
    broker.enqueue([task("a")])
    server.stop()
    calls: list[Callable[[], object]] = [
        lambda: broker.enqueue([task("b")]),
        lambda: broker.reserve("c1", ["default"], 10, T0, 1000),
        lambda: broker.reserve("c1", ["default"], 10, T0, 1000, wait=0.2),
        lambda: broker.queue_stats(["default"]),
        lambda: broker.broadcast(task("everyone"), T0),
    ]
    for call in calls:
        with pytest.raises(BrokerUnavailableError) as caught:
            call()
        assert f"127.0.0.1:{server.port}" in str(caught.value)
        assert "retry" in str(caught.value)
    server.start()  # same port, empty data set, no scripts loaded
    broker.enqueue([task("b")])
    assert ids(take(broker)) == ["b"]
    broker.enqueue([task("c")])
    got, took = waiting_reserve(broker, 5.0)  # the blocking connection is back too
    assert got == ["c"] and took < 2.0
    broker.close()


def test_full_store_refuses_the_whole_write(private_redis: PrivateRedis) -> None:
    server = private_redis()
    admin = server.client()
    original = admin.config_get("maxmemory*")
    broker = broker_for(server.url, "full")
    try:
        # 1 MB above what an idle server uses, so the refusal is caused by this enqueue alone.
        used = int(admin.info("memory")["used_memory"])
        admin.config_set("maxmemory", used + 1024 * 1024)
        admin.config_set("maxmemory-policy", "noeviction")
        big = "x" * 100_000
        with pytest.raises(BrokerFullError, match="out of memory"):
            broker.enqueue([task(f"t{i}", payload=big) for i in range(50)])
        # Whatever was stored, each task is whole: an id in the queue always has its payload.
        assert admin.llen("{full}:q:default") == admin.hlen("{full}:tasks")
    finally:
        admin.config_set("maxmemory", original["maxmemory"])
        admin.config_set("maxmemory-policy", original["maxmemory-policy"])
    broker.enqueue([task("after")])
    assert "after" in ids(take(broker))
    broker.close()


def test_a_single_delay_is_one_multi_that_stores_the_task_whole(private_redis: PrivateRedis) -> None:
    server = private_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    broker = broker_for(server.url, "one")
    try:
        payload = '{"args":["héllo ✓ ' + "x" * 70_000 + '"]}'  # multibyte text, and longer than one read
        broker.enqueue([task("warm")])  # opens the connection: what redis-py sends on connecting is not counted
        client.config_resetstat()
        broker.enqueue([task("a", payload=payload)])
        sent = {name: n for name, n in _commands(client).items() if not name.startswith(("config", "info"))}
        assert sent == {"multi": 1, "hset": 1, "rpush": 1, "lmove": 1, "exec": 1}  # not the push script
        assert client.hget("{one}:tasks", "a") == payload and client.lrange("{one}:q:default", 0, -1) == ["warm", "a"]
    finally:
        broker.close()


def test_a_single_delay_refused_amid_its_multi_stores_nothing_and_the_next_one_works(
        private_redis: PrivateRedis) -> None:
    # A full server answers -OOM where the MULTI expects +QUEUED: the connection is dropped, the push script the
    # broker falls back on is refused too, and the caller gets the clear error.
    server = private_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    broker = broker_for(server.url, "oom")
    broker.enqueue([task("before")])
    try:
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        with pytest.raises(BrokerFullError, match="out of memory"):
            broker.enqueue([task("refused")])
    finally:
        client.config_set("maxmemory", 0)
    assert client.hexists("{oom}:tasks", "refused") == 0 and client.lrange("{oom}:q:default", 0, -1) == ["before"]
    client.config_resetstat()
    broker.enqueue([task("after")])
    assert _commands(client).get("exec") == 1 and "evalsha" not in _commands(client)
    assert ids(take(broker)) == ["before", "after"]
    broker.close()


def test_wrong_or_missing_password_is_an_auth_error_that_hides_the_password(
        private_redis: PrivateRedis) -> None:
    server = private_redis(password="s3cret-pw")
    good = broker_for(server.url)
    good.enqueue([task("a")])
    for url in (f"redis://:wrong-pw@127.0.0.1:{server.port}/0", f"redis://127.0.0.1:{server.port}/0"):
        broker = broker_for(url)
        with pytest.raises(BrokerAuthError, match="password") as caught:
            broker.enqueue([task("b")])
        assert "wrong-pw" not in str(caught.value)
        assert "s3cret-pw" not in str(caught.value)
        broker.close()
    assert ids(take(good)) == ["a"]
    good.close()


def test_unix_socket_url(private_redis: PrivateRedis) -> None:
    server = private_redis(unix_socket=True)
    broker = broker_for(server.unix_url)
    broker.enqueue([task("a")])
    assert ids(take(broker)) == ["a"]
    broker.close()


def test_idle_worker_takes_a_task_within_a_second_of_its_enqueue(redis_url: str, key_prefix: str) -> None:
    waiter, producer = broker_for(redis_url, key_prefix), broker_for(redis_url, key_prefix)
    woken: list[tuple[list[str], float]] = []
    thread = threading.Thread(target=lambda: woken.append(waiting_reserve(waiter, 10.0)))
    thread.start()
    time.sleep(0.2)
    producer.enqueue([task("a")])
    thread.join(5.0)
    assert woken and woken[0][0] == ["a"]
    assert woken[0][1] < 1.5
    waiter.close()
    producer.close()


def test_waits_longer_than_the_socket_timeout(redis_url: str, key_prefix: str) -> None:
    broker = broker_for(redis_url, key_prefix, socket_timeout=0.3)
    got, took = waiting_reserve(broker, 0.8)
    assert got == [] and took >= 0.7
    broker.close()


def test_broker_on_a_plain_client_also_waits_beyond_its_socket_timeout(redis_server: RedisServer,
                                                                        key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True, socket_timeout=0.3)
    broker = RedisBroker(client, key_prefix)
    got, took = waiting_reserve(broker, 0.8)
    assert got == [] and took >= 0.7
    broker.enqueue([task("a")])
    got, took = waiting_reserve(broker, 0.8)
    assert got == ["a"] and took < 0.5
    broker.close()


def test_every_key_shares_the_prefix_hash_slot(private_redis: PrivateRedis) -> None:
    server = private_redis()
    broker = broker_for(server.url, "app")
    broker.enqueue([task("a"), task("b", "low"), task("e", eta_ms=T0 + 10_000, dedup_key="k")])
    take(broker, ["default", "low"], limit=1)
    broker.dead_letter("c1", "a", "default", "p", "r", T0)
    broker.claim_cron_tick("s", T0, OutgoingTask("cron", "low", "p"))
    broker.heartbeat("w1", "{}", T0)
    broker.recover_consumer("c1", [])
    take(broker, ["low"], consumer="c2", limit=1)
    take(broker, ["calm"], consumer="c3")  # idle on "calm"...
    broker.enqueue([task("w", "calm")])  # ...so this leaves a wake token
    keys = server.client().keys("*")
    expected = {"{app}:" + k for k in ("tasks", "eta:default", "etakeys:default", "owned:c2", "inflight",
                                       "leases", "dead", "cron", "workers", "workerinfo", "idle:calm",
                                       "wake:calm", "q:low")}
    assert expected <= set(keys)
    assert {key_slot(k.encode()) for k in keys} == {key_slot(b"app")}
    broker.close()


def test_big_batches_keep_order(redis_url: str, key_prefix: str) -> None:
    broker = broker_for(redis_url, key_prefix)
    broker.enqueue([task(f"t{i:05d}") for i in range(2500)])
    got: list[str] = []
    while batch := take(broker, limit=1000):
        got += ids(batch)
    assert got == [f"t{i:05d}" for i in range(2500)]
    broker.close()


def test_the_in_flight_hash_is_a_hashtable_from_its_first_task_and_goes_with_its_last(
        redis_url: str, key_prefix: str) -> None:
    """Redis only: the encoding is the server's. A small hash would be a listpack, whose every HSET and HDEL
    of a batch's ids scans it (INFLIGHT_MARK in keys.py)."""
    broker = broker_for(redis_url, key_prefix)
    client = redis.Redis.from_url(redis_url)
    inflight = f"{{{key_prefix}}}:inflight"
    broker.enqueue([task("a"), task("b")])
    take(broker, limit=1)
    assert client.object("encoding", inflight) == b"hashtable"
    take(broker, limit=1, acks=("a",))
    assert client.object("encoding", inflight) == b"hashtable"
    broker.ack("c1", ["b"])
    assert client.exists(inflight) == 0
    client.close()
    broker.close()


def test_a_broadcast_is_announced_on_its_own_channel_with_the_copies_stored(redis_url: str, key_prefix: str) -> None:
    """Redis only: the PUBLISH that the broadcast script adds, for watchers (a dashboard); the copies in the
    workers' queues are what runs, so the message is informational."""
    broker = broker_for(redis_url, key_prefix)
    watcher = redis.Redis.from_url(redis_url, decode_responses=True).pubsub()
    watcher.subscribe(f"{{{key_prefix}}}:announce")
    assert watcher.get_message(timeout=5)["type"] == "subscribe"  # type: ignore[index]
    now = int(time.time() * 1000)
    broker.heartbeat("w1", "{}", now)
    broker.heartbeat("w2", "{}", now)
    assert broker.broadcast(task("b1"), now) == 2
    message = watcher.get_message(timeout=5)
    assert message is not None and message["data"] == "b1 2"
    watcher.close()
    broker.close()


def test_async_durable_enqueue_without_replicas_says_each_call_its_tasks_are_stored(redis_url: str,
                                                                                   key_prefix: str) -> None:
    """``wait_replicas`` through redis.asyncio on a server with no replica: WAIT times out, and every combined
    call learns that its own tasks are stored but not replicated."""
    import asyncio

    from hexq.adapters.redis.errors import NotReplicatedError

    producer = AsyncRedisProducer(Connection(f"{redis_url}?wait_replicas=1&wait_timeout_ms=50"),  # type: ignore[arg-type]
                                  key_prefix)

    async def send() -> list[object]:
        calls = [producer.enqueue([task("a")]), producer.enqueue([task("b1"), task("b2")])]
        outcomes = list(await asyncio.gather(*calls, return_exceptions=True))
        await producer.aclose()
        return outcomes

    first, second = asyncio.run(send())
    assert isinstance(first, NotReplicatedError) and first.task_ids == ["a"]
    assert isinstance(second, NotReplicatedError) and second.task_ids == ["b1", "b2"]
    broker = broker_for(redis_url, key_prefix)
    assert ids(take(broker)) == ["a", "b1", "b2"]
    broker.close()


def _commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()}


def _ack_cost(broker: RedisBroker, client: redis.Redis, task_id: str, outcome: OutcomeRecord | None) -> dict[str, int]:
    """The commands one acknowledgement costs the server (scripts' own commands counted, as the bench does)."""
    broker.enqueue([task(task_id)])
    assert ids(list(take(broker))) == [task_id]
    client.config_resetstat()
    broker.ack("c1", [task_id], [outcome] if outcome else [])
    return {name: calls for name, calls in _commands(client).items() if name not in ("config", "info")}


def test_keeping_an_outcome_costs_one_command_in_the_acknowledgement(private_redis: PrivateRedis) -> None:
    # The budget: with results kept, at most one more command per task, inside the ack's round trip.
    server = private_redis()
    client = redis.Redis.from_url(server.url, decode_responses=True)
    broker = broker_for(server.url)
    try:
        plain = _ack_cost(broker, client, "plain", None)
        kept = _ack_cost(broker, client, "kept", OutcomeRecord("kept", '{"v":1}', 60_000, T0))
        extra = {name: kept.get(name, 0) - plain.get(name, 0) for name in set(plain) | set(kept)}
        assert {name: n for name, n in extra.items() if n} == {"set": 1}
        assert client.pttl("{it}:result:kept") > 50_000
        assert broker.wait_outcome("kept", T0, 0.0) == '{"v":1}'
    finally:
        broker.close()


def test_a_waiter_is_woken_by_the_outcome_at_once_and_every_waiter_gets_it(redis_url: str, key_prefix: str) -> None:
    broker = broker_for(redis_url, key_prefix)
    got: list[tuple[str | None, float]] = []

    def wait() -> None:
        started = time.monotonic()
        got.append((broker.wait_outcome("w", T0, 10.0), time.monotonic() - started))

    waiters = [threading.Thread(target=wait) for _ in range(3)]
    try:
        for waiter in waiters:
            waiter.start()
        time.sleep(0.3)  # all three blocked, their mark in place
        broker.record_outcome(OutcomeRecord("w", '"done"', 60_000, T0))
        for waiter in waiters:
            waiter.join(timeout=10)
        assert [document for document, _ in got] == ['"done"'] * 3
        assert max(took for _, took in got) < 5.0  # woken by the outcome, not by the 10 s timeout
        assert broker.task_state("w", T0).outcome == '"done"'
    finally:
        broker.close()
