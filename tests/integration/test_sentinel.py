"""Redis Sentinel on real servers: a primary, a replica and three sentinels (``sentinel.py``).

HexQ on a ``redis+sentinel://`` URL with real `hexq worker` processes; a failover followed by producers,
workers and schedulers without restarting any of them (SIGKILL of the primary under load, counted in a plain
server that no failover touches); READONLY from a demoted primary; bounded blocking waits; durable enqueue
(WAIT); and the errors a wrong Sentinel URL gives. Tests marked ``slow`` run only with HEXQ_TEST_SLOW=1.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.sentinel import SentinelConnectionPool
from redis_server import RedisServer
from sentinel import SERVICE, Book, SentinelCluster
from workers import FORK_WARNING, ROOT, Proc, wait_for

from hexq import HexQ
from hexq.adapters.redis.broker import BLOCKING_READ_MARGIN, ORPHAN_CHECK_MS, RedisBroker
from hexq.adapters.redis.direct import DirectCommand
from hexq.adapters.redis.errors import NotReplicatedError, UnknownSentinelServiceError
from hexq.adapters.redis.settings import RedisSettings
from hexq.core.errors import BrokerUnavailableError, ConfigError, HexqError
from hexq.core.ports import OutgoingTask

pytestmark = pytest.mark.integration
APP = "tests.integration.sentinel:app"
slow = pytest.mark.skipif(not os.environ.get("HEXQ_TEST_SLOW"), reason="slow: set HEXQ_TEST_SLOW=1 to run")


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    """One deployment for the tests that leave it as they found it (no failover)."""
    cluster = SentinelCluster(tmp_path_factory.mktemp("sentinel")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def own_sentinels(tmp_path: Path) -> Iterator[SentinelCluster]:
    """A deployment of the test's own, to kill the primary of."""
    cluster = SentinelCluster(tmp_path / "sentinel").start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def book(redis_url: str, key_prefix: str) -> Iterator[Book]:
    """Where the tasks of real workers record their runs: the session's plain server, never failed over."""
    ledger = Book(redis_url, key_prefix)
    yield ledger
    ledger.client().delete(ledger.ran, ledger.log)


def producer_app(url: str, prefix: str, socket_timeout: float = 15.0) -> tuple[HexQ, Any]:
    """An app in this process that sends the worker app's ``record`` task."""
    app = HexQ(url=url, prefix=prefix, queues=["default"], socket_timeout=socket_timeout)

    @app.task(name="record")
    def record(number: str) -> None:
        raise AssertionError("runs on the workers")

    return app, record


class Procs:
    """`hexq worker` / `hexq scheduler` processes on the sentinel app; all killed at the end."""

    def __init__(self, tmp: Path, url: str, prefix: str, book: Book, **extra: str) -> None:
        self.tmp = tmp
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HEXQ_SENTINEL_URL=url, HEXQ_SENTINEL_PREFIX=prefix,
                        HEXQ_SENTINEL_BOOK_URL=book.url, HEXQ_SENTINEL_BOOK_PREFIX=book.prefix, **extra)
        self.procs: list[Proc] = []

    def start(self, command: str, *args: str) -> Proc:
        proc = Proc([command, f"--app={APP}", "--log-level=DEBUG", *args], self.env,
                    self.tmp / f"{command}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-5000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        forked = [p.log.name for p in self.procs if FORK_WARNING in p.output()]
        assert not forked, f"a worker process forked while running threads: {forked}\n{self.logs()}"


def hexq_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def task(task_id: str, queue: str = "default") -> OutgoingTask:
    return OutgoingTask(task_id, queue, json.dumps({"id": task_id}))


def ids(broker: RedisBroker, consumer: str, now_ms: int, wait: float = 0.0, limit: int = 10) -> list[str]:
    reservation = broker.reserve(consumer, ["default"], limit, now_ms, 30_000, (), wait)
    return [d.id for d in reservation.deliveries]


# -- (a) a real worker on a redis+sentinel URL --------------------------------------------------------------
def test_hexq_on_a_sentinel_url_enqueues_and_a_real_worker_runs_the_tasks(
        sentinels: SentinelCluster, book: Book, tmp_path: Path) -> None:
    prefix = f"a-{uuid.uuid4().hex[:8]}"
    url = sentinels.url(db=1)
    procs = Procs(tmp_path, url, prefix, book)
    try:
        procs.start("worker", "--concurrency=2")
        app, record = producer_app(url, prefix)
        assert app.connection.scheme == "redis+sentinel"
        sent = [record.delay(f"t{n}") for n in range(20)]
        sent += record.delay_many([record.bind(f"b{n}") for n in range(30)])
        assert len(set(sent)) == 50
        wait_for(lambda: len(book.runs()) >= 50, 30, f"50 runs, got {len(book.runs())}\n{procs.logs()}")
        assert set(book.runs()) == {f"t{n}" for n in range(20)} | {f"b{n}" for n in range(30)}
        # The data went to db 1 of the primary the sentinels name, not to db 0.
        primary = sentinels.current_primary()
        assert redis.Redis(port=primary.port, db=1).exists(f"{{{prefix}}}:workers")
        assert not redis.Redis(port=primary.port, db=0).exists(f"{{{prefix}}}:workers")
        info = hexq_cli("info", f"--app={APP}", "--json", env=procs.env)
        assert info.returncode == 0, info.stderr
        assert json.loads(info.stdout)["broker"] == url
        app.broker.close()  # type: ignore[attr-defined]
    finally:
        procs.close()


# -- failover, in this process: every kind of connection finds the new primary -------------------------
def test_after_a_failover_every_connection_resolves_the_new_primary(own_sentinels: SentinelCluster,
                                                                    key_prefix: str) -> None:
    """The pooled client, the producer's per-thread connection and the blocking connection of an idle
    consumer all open their next connection to the node the sentinels promoted; nothing is rebuilt."""
    settings_url = own_sentinels.url()
    app, record = producer_app(settings_url, key_prefix)
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    old = own_sentinels.current_primary().port
    assert ids(broker, "c1", int(time.time() * 1000)) == []  # idle (a wait follows an empty reservation)
    first = record.delay("before")
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.2) == [first]
    assert broker._direct._local.connection.port == old
    assert broker._blocking_direct._local.connection.port == old

    # An idle consumer is blocked in BLPOP on the primary when it dies: the wait fails at once, not forever.
    failed: list[BaseException] = []

    def idle_consumer() -> None:
        try:
            ids(broker, "c1", int(time.time() * 1000), wait=1.0)
        except BaseException as exc:
            failed.append(exc)

    waiter = threading.Thread(target=idle_consumer)
    waiter.start()
    time.sleep(0.3)
    killed_at = time.monotonic()
    own_sentinels.kill_primary()
    waiter.join(1.0 + BLOCKING_READ_MARGIN + 1)
    assert not waiter.is_alive()
    assert failed and isinstance(failed[0], BrokerUnavailableError)

    errors: list[str] = []
    while True:
        try:
            second = record.delay("after")
            break
        except BrokerUnavailableError as exc:
            errors.append(str(exc))
            assert time.monotonic() - killed_at < 30, errors[-1]
            time.sleep(0.05)
    resumed = time.monotonic() - killed_at
    new = own_sentinels.current_primary().port
    assert new != old
    assert broker._direct._local.connection.port == new
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.2) == [second]
    # That wait found the task in the reservation that comes before a consumer's first BLPOP (its last
    # reply was lost, so it may not be marked idle); the next one blocks.
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.2) == []
    assert broker._blocking_direct._local.connection.port == new
    assert broker._client.connection_pool.get_master_address() == ("127.0.0.1", new)  # type: ignore[attr-defined]
    assert int(broker._client.execute_command("LLEN", f"{{{key_prefix}}}:q:default")) == 0
    # Broadcasts are copied on the new primary too, for the workers whose heartbeats it holds.
    broker.heartbeat("w1", "{}", int(time.time() * 1000))
    assert broker.broadcast(OutgoingTask("everyone", "default", "hello"), int(time.time() * 1000)) == 1
    print(f"in-process failover: the producer enqueued again {resumed:.2f} s after the SIGKILL, after "
          f"{len(errors)} refused attempts (last: {errors[-1][:160] if errors else '-'})")
    broker.close()


# -- READONLY: a demoted primary ---------------------------------------------------------------------------
class StubSentinels:
    """Names the replica as the primary first (as a stale view would, just after a failover), then the
    real primary: what a connection to a demoted primary sees."""

    def __init__(self, answers: list[tuple[str, int]]) -> None:
        self.answers = answers
        self.asked = 0
        self.sentinels: list[Any] = []

    def discover_master(self, service_name: str) -> tuple[str, int]:
        self.asked += 1
        return self.answers[min(self.asked, len(self.answers)) - 1]


def test_readonly_reply_drops_the_connection_and_the_next_attempt_finds_the_primary(
        sentinels: SentinelCluster, key_prefix: str) -> None:
    replica, primary = sentinels.replica.port, sentinels.primary.port
    if sentinels.current_primary().port != primary:
        pytest.skip("the module's deployment failed over")
    stub = StubSentinels([("127.0.0.1", replica), ("127.0.0.1", primary)])
    pool = SentinelConnectionPool(SERVICE, stub, decode_responses=True, socket_timeout=5)
    direct = DirectCommand(pool)
    key = f"{{{key_prefix}}}:readonly"
    assert direct("SET", key, "1") == "OK"  # first on the replica: READONLY, dropped; then the primary
    assert stub.asked == 2
    assert direct._local.connection.port == primary
    assert redis.Redis(port=primary).get(key) == b"1"

    # The broker, on clients whose first connections land on the replica: enqueue and reserve still work.
    stub.asked = 0
    client = redis.Redis(connection_pool=SentinelConnectionPool(SERVICE, stub, decode_responses=True))
    blocking = redis.Redis(connection_pool=SentinelConnectionPool(SERVICE, stub, decode_responses=True))
    broker = RedisBroker(client, key_prefix, blocking_client=blocking)
    # Idle first (a wait follows an empty reservation); the pooled connection lands on the replica first.
    with pytest.raises(BrokerUnavailableError, match=r"previous master is now a slave|read only replica"):
        ids(broker, "c1", int(time.time() * 1000))
    assert ids(broker, "c1", int(time.time() * 1000)) == []
    stub.asked = 0
    broker.enqueue([task("ro1")])
    # The blocking wait is not sent twice by itself (a BLPOP may have consumed a wake-up): it fails as a lost
    # connection would, and the consumer's next reservation, on a new connection, reaches the primary.
    stub.asked = 0
    with pytest.raises(BrokerUnavailableError, match="previous master is now a slave"):
        ids(broker, "c1", int(time.time() * 1000), wait=0.1)
    assert broker._blocking_direct._local.connection is None
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.1) == ["ro1"]
    # ro1 came from the reservation made before a BLPOP when the consumer may not be marked idle (its last
    # reply was lost); the next wait blocks, on a new connection to the primary.
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.1) == []
    assert broker._blocking_direct._local.connection.port == primary
    broker.close()
    direct.close()
    redis.Redis(port=primary).delete(key)


def test_readonly_reply_on_a_plain_connection_drops_it(sentinels: SentinelCluster) -> None:
    """A plain URL whose name moved to a replica (a DNS failover): the connection is dropped, so the next
    one resolves the name again, and the refused write is sent once more."""
    pool = redis.ConnectionPool(port=sentinels.replica.port, decode_responses=True)
    direct = DirectCommand(pool)
    with pytest.raises(redis.ReadOnlyError):
        direct("SET", "readonly-plain", "1")
    assert direct._local.connection is None
    replies = direct.pipelined(("GET", "x"), ("SET", "readonly-plain", "1"))
    assert isinstance(replies[1], redis.ReadOnlyError)
    assert direct._local.connection is None


# -- bounded waits and lost replies --------------------------------------------------------------------------
def test_a_blocking_wait_on_a_server_that_does_not_answer_fails_within_its_bound(
        private_redis: Callable[..., RedisServer], key_prefix: str) -> None:
    server = private_redis()
    broker = RedisBroker.from_connection(RedisSettings(server.url), key_prefix)
    assert ids(broker, "c1", int(time.time() * 1000), wait=0.05) == []  # the blocking connection is open
    broker.enqueue([task("waiting")])
    admin = server.client()
    admin.execute_command("CLIENT", "PAUSE", 6000, "ALL")  # the server reads but answers nobody
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        ids(broker, "c1", int(time.time() * 1000), wait=0.5)
    took = time.monotonic() - started
    admin.execute_command("CLIENT", "UNPAUSE")
    assert 0.5 + BLOCKING_READ_MARGIN - 0.2 < took < 0.5 + BLOCKING_READ_MARGIN + 1.5
    # Nothing lost: whether the timed-out reservation ran or not, the next reservation delivers the task.
    assert ids(broker, "c1", int(time.time() * 1000)) == ["waiting"]
    broker.close()


def test_tasks_reserved_by_a_lost_reply_go_back_to_their_queue(redis_url: str, key_prefix: str) -> None:
    broker = RedisBroker.from_connection(RedisSettings(redis_url), key_prefix)
    now = int(time.time() * 1000)
    assert ids(broker, "c1", now, wait=0.05) == []  # scripts loaded, connection open
    broker.enqueue([task("x1"), task("x2"), task("x3")])
    real = broker._blocking_direct.pipelined

    def reply_lost(*commands: Any, **options: Any) -> list[Any]:
        real(*commands, **options)  # Redis ran the reservation...
        raise redis.ConnectionError("connection lost before the reply")  # ...whose reply never came

    broker._blocking_direct.pipelined = reply_lost  # type: ignore[method-assign]
    with pytest.raises(BrokerUnavailableError):
        ids(broker, "c1", now, wait=0.2)
    broker._blocking_direct.pipelined = real  # type: ignore[method-assign]
    owned = f"{{{key_prefix}}}:owned:c1"
    assert broker._client.llen(owned) == 3  # reserved by the lost call, unknown to its consumer
    got = ids(broker, "c1", now + 10)
    assert got == ["x1", "x2", "x3"]  # back at the head, in order, and delivered this time
    # A reservation this consumer never saw (another process, a client-side retry) is found by the
    # periodic check too, and tasks it did receive are never taken back.
    other = RedisBroker.from_connection(RedisSettings(redis_url), key_prefix)
    broker.enqueue([task("y1")])
    assert ids(other, "c1", now + 20) == ["y1"]
    assert ids(broker, "c1", now + 30) == []
    assert ids(broker, "c1", now + 30 + ORPHAN_CHECK_MS) == ["y1"]
    assert sorted(broker._client.lrange(owned, 0, -1)) == ["x1", "x2", "x3", "y1"]
    broker.ack("c1", ["x1", "x2", "x3", "y1"])
    other.close()
    broker.close()


# -- durable enqueue ---------------------------------------------------------------------------------------
def test_durable_enqueue_returns_once_a_replica_has_the_task(sentinels: SentinelCluster, key_prefix: str) -> None:
    app, record = producer_app(sentinels.url("wait_replicas=1&wait_timeout_ms=2000"), key_prefix)
    task_id = record.delay("durable")
    batch = record.delay_many([record.bind(f"d{n}") for n in range(600)])  # three chunks, one WAIT
    replica = redis.Redis(port=sentinels.replica.port, decode_responses=True)
    # Acknowledged by the replica: it holds the tasks the moment .delay() returns.
    assert replica.hexists(f"{{{key_prefix}}}:tasks", task_id)
    assert replica.hexists(f"{{{key_prefix}}}:tasks", batch[-1])
    app.broker.close()  # type: ignore[attr-defined]


def test_durable_enqueue_not_acknowledged_in_time_raises_and_says_the_task_is_stored(
        sentinels: SentinelCluster, key_prefix: str) -> None:
    app, record = producer_app(sentinels.url("wait_replicas=2&wait_timeout_ms=300"), key_prefix)
    started = time.monotonic()
    with pytest.raises(NotReplicatedError) as caught:
        record.delay("lonely")
    assert 0.25 < time.monotonic() - started < 3
    error = caught.value
    assert (error.wanted, error.acknowledged, error.timeout_ms) == (2, 1, 300)
    assert "stored by the primary" in str(error) and "may run it twice" in str(error)
    primary = redis.Redis(port=sentinels.current_primary().port, decode_responses=True)
    assert primary.hexists(f"{{{key_prefix}}}:tasks", error.task_ids[0])
    with pytest.raises(NotReplicatedError) as many:
        record.delay_many([record.bind(f"m{n}") for n in range(300)])
    assert len(many.value.task_ids) == 300
    app.broker.close()  # type: ignore[attr-defined]


# -- (c) bad input -----------------------------------------------------------------------------------------
def test_unknown_service_name_is_a_clear_error_naming_it(sentinels: SentinelCluster, book: Book,
                                                          tmp_path: Path) -> None:
    url = sentinels.url(service="no-such-service")
    _app, record = producer_app(url, "unknown")
    with pytest.raises(UnknownSentinelServiceError) as caught:
        record.delay("x")
    message = str(caught.value)
    assert "'no-such-service'" in message and f"'{SERVICE}'" in message and "service name" in message
    assert caught.value.service == "no-such-service" and caught.value.known == [SERVICE]
    env = dict(os.environ, HEXQ_SENTINEL_URL=url, HEXQ_SENTINEL_PREFIX="unknown", HEXQ_SENTINEL_BOOK_URL=book.url,
               HEXQ_SENTINEL_BOOK_PREFIX=book.prefix)
    cli = hexq_cli("enqueue", f"--app={APP}", "record", "1", env=env)
    assert cli.returncode == 1
    assert "no-such-service" in cli.stderr and "UnknownSentinelServiceError" in cli.stderr


@pytest.mark.parametrize("url", ["redis+sentinel://127.0.0.1:26379", "redis+sentinel://127.0.0.1:26379/",
                                 "rediss+sentinel://u:pw@127.0.0.1:26379,127.0.0.1:26380"])
def test_sentinel_url_without_a_service_name_is_a_config_error(url: str, book: Book) -> None:
    with pytest.raises(ConfigError, match="names no Sentinel service") as caught:
        HexQ(url=url)
    assert "pw" not in str(caught.value)
    env = dict(os.environ, HEXQ_SENTINEL_URL=url, HEXQ_SENTINEL_PREFIX="noservice", HEXQ_SENTINEL_BOOK_URL=book.url,
               HEXQ_SENTINEL_BOOK_PREFIX=book.prefix)
    cli = hexq_cli("info", f"--app={APP}", env=env)
    assert cli.returncode == 2 and "names no Sentinel service" in cli.stderr


def test_unreachable_sentinels_are_unavailable_not_unknown() -> None:
    _app, record = producer_app("redis+sentinel://127.0.0.1:1,127.0.0.1:2/svc", "nobody")
    with pytest.raises(BrokerUnavailableError, match=r"no Sentinel at .* names a primary"):
        record.delay("x")


# -- (b) SIGKILL of the primary under load -------------------------------------------------------------------
class Producer(threading.Thread):
    """Enqueues ``record(<tag><n>)`` continuously through its own app; keeps what was acknowledged."""

    def __init__(self, url: str, prefix: str, tag: str, pause: float) -> None:
        super().__init__(daemon=True)
        self.app, self.record = producer_app(url, prefix)
        self.tag = tag
        self.pause = pause
        self.stop = threading.Event()
        self.acked: list[tuple[str, float]] = []
        self.unconfirmed: list[str] = []  # stored, but WAIT was not satisfied in time
        self.failed: list[tuple[str, float]] = []  # refused (primary unreachable): may or may not be stored
        self.errors: Counter[str] = Counter()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            number = f"{self.tag}{n}"
            n += 1
            try:
                self.record.delay(number)
                self.acked.append((number, time.time()))
                time.sleep(self.pause)
            except NotReplicatedError:
                self.unconfirmed.append(number)
            except HexqError as exc:
                self.failed.append((number, time.time()))
                self.errors[f"{type(exc).__name__}: {str(exc).split(' (', 1)[-1][:110]}"] += 1
                time.sleep(0.05)


def chaos_run(cluster: SentinelCluster, book: Book, tmp_path: Path, *, kills: int = 1,
              after: float = 4.0) -> dict[str, Any]:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    url = cluster.url()
    procs = Procs(tmp_path, url, prefix, book, HEXQ_SENTINEL_CRON="1")
    producers = [Producer(url, prefix, "p", 0.01),
                 Producer(cluster.url("wait_replicas=1&wait_timeout_ms=500"), prefix, "d", 0.01)]
    report: dict[str, Any] = {"kills": []}
    try:
        worker = procs.start("worker", "--concurrency=2")
        scheduler = procs.start("scheduler")
        for producer in producers:
            producer.start()
        wait_for(lambda: len(book.runs()) >= 100, 30, f"steady processing\n{procs.logs()}")
        for _ in range(kills):
            time.sleep(1.0)
            cluster.kill_primary()
            killed_at = time.time()
            port = cluster.wait_for_failover()
            switched_at = time.time()
            cluster.restart_old_primary()  # the durable producer needs a replica again
            report["kills"].append({"at": killed_at, "sentinels_switched_s": round(switched_at - killed_at, 2),
                                    "new_primary": port, "replica_back_s": round(time.time() - killed_at, 2)})
            time.sleep(after)
        for producer in producers:
            producer.stop.set()
            producer.join(10)
        acked = {tag: {n for n, _ in p.acked} for tag, p in zip("pd", producers, strict=True)}
        # Every acknowledged durable task must run: recovery of an orphaned reservation takes up to
        # ORPHAN_CHECK_MS, an expired lease lease_timeout (5 s) + 3 s.
        wait_for(lambda: acked["d"] <= set(book.runs()), 30,
                 f"every acknowledged durable task to run; missing {sorted(acked['d'] - set(book.runs()))[:10]}"
                 f"\n{procs.logs()}\n{cluster.logs()}")
        stable, last, deadline = 0, -1, time.monotonic() + 20
        while stable < 3 and time.monotonic() < deadline:  # then let stragglers of the other producer finish
            time.sleep(1.0)
            count = sum(v for k, v in book.runs().items() if not k.startswith("cron"))
            stable, last = (stable + 1, last) if count == last else (0, count)
        runs = book.runs()
        entries = book.entries()
        assert worker.handle.poll() is None and scheduler.handle.poll() is None, "nothing may be restarted"
        task_runs = sorted(at for _, kind, at in entries if kind == "task")
        first_kill = report["kills"][0]["at"]
        for kill in report["kills"]:  # each kill's own outage: the `after` seconds that follow it
            at = kill["at"]
            for tag, producer in zip("pd", producers, strict=True):
                refused = [t for _, t in producer.failed if at <= t <= at + after]
                end = max(refused, default=at)
                resumed = [t for _, t in producer.acked if end < t <= at + after]
                kill[f"{tag}_enqueue_refused"] = len(refused)
                kill[f"{tag}_enqueue_resumed_s"] = round(min(resumed) - at, 2) if resumed else None
            window = [t for t in task_runs if at - 1 <= t <= at + after]
            longest, since = max(((b - a, a) for a, b in itertools.pairwise(window)), default=(0.0, at))
            kill["processing_paused_s"] = round(longest, 2)  # the longest time without a task run
            kill["processing_resumed_s"] = round(since + longest - at, 2)
            kill["at"] = round(at - first_kill, 2)
        for tag, producer in zip("pd", producers, strict=True):
            numbers = acked[tag]
            report[tag] = {
                "acknowledged": len(numbers),
                "lost": sorted(numbers - set(runs)),
                "duplicated": sorted(n for n in numbers if runs.get(n, 0) > 1),
                "refused": len(producer.failed), "unconfirmed": len(producer.unconfirmed),
                "errors": dict(producer.errors.most_common(3)),
            }
        report["processing_resumed_s"] = max(kill["processing_resumed_s"] for kill in report["kills"])
        cron = [number for number, kind, _ in entries if kind == "cron"]
        seconds = sorted(int(n.split("-")[1]) for n in set(cron))
        report["cron"] = {"runs": len(cron), "ticks": len(set(cron)), "fired_twice": len(cron) - len(set(cron)),
                          "seconds_without_a_tick": (seconds[-1] - seconds[0] + 1 - len(seconds)) if seconds else None}
        report["released_orphans"] = sum(p.output().count("never received") for p in procs.procs)
        print("sentinel chaos:", json.dumps(report, default=str))
        return report
    finally:
        for producer in producers:
            producer.stop.set()
            producer.join(10)
            producer.app.broker.close()  # type: ignore[attr-defined]
        procs.close()


def test_sigkill_of_the_primary_under_load_is_followed_without_restarts(own_sentinels: SentinelCluster,
                                                                        book: Book, tmp_path: Path) -> None:
    report = chaos_run(own_sentinels, book, tmp_path)
    assert report["d"]["lost"] == [], "an acknowledged durable enqueue was lost"
    assert report["processing_resumed_s"] < 20
    assert report["d"]["acknowledged"] > 100 and report["p"]["acknowledged"] > 100
    assert report["cron"]["ticks"] >= 5


@pytest.mark.slow
@slow
def test_three_failovers_in_a_row(own_sentinels: SentinelCluster, book: Book, tmp_path: Path) -> None:
    report = chaos_run(own_sentinels, book, tmp_path, kills=3, after=6.0)
    assert report["d"]["lost"] == []


@pytest.mark.slow
@slow
def test_durable_enqueue_cost(sentinels: SentinelCluster, key_prefix: str) -> None:
    """Enqueue rates on a primary with one replica, one .delay() at a time and in batches, with and
    without WAIT 1 (loopback: the replica's acknowledgement is what it costs, not the network). Rounds
    alternate between the two so that a busy machine slows both alike; the median round is reported."""
    apps = {label: producer_app(sentinels.url(query), f"{key_prefix}-{label}")
            for label, query in (("plain", ""), ("wait1", "wait_replicas=1&wait_timeout_ms=1000"))}
    rates: dict[str, list[float]] = {}
    for _ in range(5):
        for label, (_app, record) in apps.items():
            record.delay("warm-up")
            count = 2000
            started = time.perf_counter()
            for n in range(count):
                record.delay(str(n))
            rates.setdefault(f"{label} .delay()/s", []).append(count / (time.perf_counter() - started))
            started = time.perf_counter()
            for _ in range(4):
                record.delay_many([record.bind(str(n)) for n in range(1000)])
            rates.setdefault(f"{label} delay_many(1000) tasks/s", []).append(4000 / (time.perf_counter() - started))
    primary = redis.Redis(port=sentinels.current_primary().port)
    for label, (app, _record) in apps.items():
        app.broker.close()  # type: ignore[attr-defined]
        keys = list(primary.scan_iter(match=f"{{{key_prefix}-{label}}}*"))
        if keys:
            primary.delete(*keys)
    medians = {name: round(sorted(values)[len(values) // 2]) for name, values in rates.items()}
    latency = {label: round(1e6 / medians[f"{label} .delay()/s"]) for label in apps}
    print("durable enqueue cost (median of 5 rounds):", json.dumps(medians), "; µs per .delay():",
          json.dumps(latency))


def test_worker_parent_and_children_use_bounded_waits_after_sigstop_of_the_primary(
        own_sentinels: SentinelCluster, book: Book, tmp_path: Path) -> None:
    """A primary that stops answering without closing its sockets (SIGSTOP: a hung machine, a network cut):
    the sentinels fail over, and the worker follows within its bounded waits instead of waiting forever on
    the frozen node."""
    prefix = f"stop-{uuid.uuid4().hex[:8]}"
    url = own_sentinels.url()
    # A frozen primary holds any command already sent to it for socket_timeout: lowered, as the README
    # advises for Sentinel deployments.
    procs = Procs(tmp_path, url, prefix, book, HEXQ_SENTINEL_SOCKET_TIMEOUT="3")
    app, record = producer_app(url, prefix, socket_timeout=3)
    try:
        procs.start("worker", "--concurrency=2")
        record.delay("before")
        wait_for(lambda: "before" in book.runs(), 20, "the first task")
        time.sleep(1.5)  # the children are idle, blocked in BLPOP on the primary
        frozen = own_sentinels.current_primary()
        assert frozen._process is not None
        os.kill(frozen._process.pid, signal.SIGSTOP)
        stopped_at = time.time()
        try:
            own_sentinels.killed = frozen
            own_sentinels.wait_for_failover()
            switched = time.time() - stopped_at
            while True:
                try:
                    record.delay("after")
                    break
                except BrokerUnavailableError:
                    time.sleep(0.05)
            enqueued = time.time() - stopped_at
            wait_for(lambda: "after" in book.runs(), 30, "a task after the failover")
            ran = book.entries()[-1][2] - stopped_at
            print(f"SIGSTOP of the primary (socket_timeout 3 s): sentinels switched after {switched:.2f} s, "
                  f"enqueue resumed after {enqueued:.2f} s, the task ran {ran:.2f} s after the stop")
            assert ran < 25
        finally:
            os.kill(frozen._process.pid, signal.SIGCONT)
        app.broker.close()  # type: ignore[attr-defined]
    finally:
        procs.close()


def test_reconnecting_many_times_never_exhausts_the_pool(redis_url: str) -> None:
    """The per-thread connections are made outside the pool's count (redis-py >= 8 refuses a 101st
    connection made from a pool by default): a producer that reconnected through many outages or failovers
    keeps working."""
    pool = redis.ConnectionPool.from_url(redis_url, max_connections=2, decode_responses=True)
    direct = DirectCommand(pool)
    for _ in range(10):
        assert direct("PING") == "PONG"
        direct._drop(direct._local.connection)  # what a failed command does
    assert direct.pipelined(("PING",)) == ["PONG"]
    assert len(direct._opened) == 1
    direct.close()
