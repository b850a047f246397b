"""``await task.adelay()`` and the ``AsyncProducer`` adapters: the contract on memory, SQLite and fakeredis
(the real-Redis run is in tests/integration/test_broker_contract_redis.py), then the app's async API."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from async_producer_contract import AsyncProducerContract, MakePair
from broker_contract import LEASE, T0, task
from service_fixtures import make_app
from test_broker_contract import require_lupa

from hexq import HexQ, TaskArgumentsError
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.redis.async_producer import AsyncRedisProducer, Coalesced
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.errors import NotReplicatedError
from hexq.adapters.sqlite import SqliteBroker, SqliteSettings
from hexq.adapters.system.offload import ThreadProducer
from hexq.core.errors import BrokerUnavailableError
from hexq.core.ports import AsyncProducer, Broker, Cancelled, OutgoingTask
from hexq.entrypoints.settings import Connection


def closing(pairs: list[tuple[Broker, AsyncProducer]]) -> None:
    for broker, producer in pairs:
        asyncio.run(producer.aclose())  # its threads, if any, end with it
        broker.close()


class TestThreadProducerOnMemory(AsyncProducerContract):
    @pytest.fixture
    def make_pair(self) -> Iterator[MakePair]:
        made: list[tuple[Broker, AsyncProducer]] = []

        def make() -> tuple[Broker, AsyncProducer]:
            broker = MemoryBroker()
            made.append((broker, ThreadProducer(broker)))
            return made[-1]

        yield make
        closing(made)


class TestThreadProducerOnSqlite(AsyncProducerContract):
    @pytest.fixture
    def make_pair(self, tmp_path: Path) -> Iterator[MakePair]:
        made: list[tuple[Broker, AsyncProducer]] = []

        def make() -> tuple[Broker, AsyncProducer]:
            path = str(tmp_path / "hexq.db")
            # The producer on a broker of its own, as another process would be.
            made.append((SqliteBroker.from_settings(SqliteSettings(path)),
                         ThreadProducer(SqliteBroker.from_settings(SqliteSettings(path)))))
            return made[-1]

        yield make
        closing(made)


class TestAsyncRedisProducerOnFakeredis(AsyncProducerContract):
    @pytest.fixture
    def make_pair(self) -> Iterator[MakePair]:
        require_lupa()
        made: list[tuple[Broker, AsyncProducer]] = []

        def make() -> tuple[Broker, AsyncProducer]:
            server = fakeredis.FakeServer()
            broker = RedisBroker(fakeredis.FakeRedis(server=server, decode_responses=True), "app")
            producer = AsyncRedisProducer(Connection("redis://127.0.0.1:1/0"), "app",  # type: ignore[arg-type]
                                          new_client=lambda: fakeredis.FakeAsyncRedis(server=server,
                                                                                      decode_responses=True))
            made.append((broker, producer))
            return made[-1]

        yield make
        closing(made)


# -- the app's async API ------------------------------------------------------------------------------------
def test_adelay_aapply_and_options_adelay_store_what_delay_would(tmp_path: Path) -> None:
    app = HexQ(url=f"sqlite:///{tmp_path / 'hexq.db'}", queues=["high", "default"], clock=FakeClock())

    @app.task
    def add(x: int, y: int = 0) -> int:
        return x + y

    async def send() -> list[str]:
        return [await add.adelay(1, y=2), await add.aapply([3], {"y": 4}, queue="high"),
                await add.options(queue="high", eta=60).adelay(5), await add.adelay(6, queue="high")]

    sent = asyncio.run(send())
    asyncio.run(app.aclose())
    got = app.broker.reserve("c1", ["high", "default"], 10, T0, LEASE).deliveries
    assert [d.id for d in got] == [sent[1], sent[3]]
    assert [app.codec.decode(d.payload).args for d in got if d.payload] == [(3,), (6,)]
    (stats_high, stats_default) = app.broker.queue_stats(["high", "default"])
    assert (stats_high.eta, stats_default.pending) == (1, 1)


def test_adelay_checks_the_call_before_anything_is_sent() -> None:
    app, broker, _ = make_app()

    @app.task
    def job(x: int) -> None: ...

    with pytest.raises(TaskArgumentsError, match=r"job\(\) takes 1 positional argument but 2 were given"):
        asyncio.run(job.adelay(1, 2))  # type: ignore[call-arg]
    asyncio.run(app.aclose())
    assert broker.queue_stats(["low"])[0].pending == 0


def test_unique_tasks_by_adelay_get_the_waiting_tasks_id() -> None:
    app, _, _ = make_app()

    @app.task(unique=60)
    def job(x: int) -> None: ...

    async def send() -> list[str]:
        return list(await asyncio.gather(*(job.adelay(1) for _ in range(10)), job.adelay(2)))

    sent = asyncio.run(send())
    assert len(set(sent[:10])) == 1 and sent[10] != sent[0]
    assert asyncio.run(job.adelay(1)) == sent[0] == job.delay(1)
    asyncio.run(app.aclose())


def test_in_process_mode_runs_the_task_from_adelay_without_blocking_the_loop() -> None:
    app = HexQ(url="memory://", clock=FakeClock())
    ran: list[Any] = []

    @app.task
    def job(x: int) -> None:
        ran.append(x)

    @app.task
    async def ajob(x: int) -> None:
        await asyncio.sleep(0)
        ran.append(("async", x))

    async def send() -> None:
        await job.adelay(1)
        await ajob.adelay(2)  # an async task, run by the in-process runner in its thread, not on this loop
        await app.aclose()

    asyncio.run(send())
    assert ran == [1, ("async", 2)]


def test_handle_acancel_and_app_acancel_remove_a_waiting_task_from_an_event_loop() -> None:
    app, broker, _ = make_app()

    @app.task
    def job(x: int) -> None: ...

    async def send_then_cancel() -> tuple[Cancelled, Cancelled, Cancelled]:
        handle = await job.options(eta=60).adelay(1)
        other = await job.options(eta=60).adelay(2)
        return await handle.acancel(), await app.acancel(handle), await app.handle(other).acancel()

    # the second finds its outcome kept (cancelled tasks keep one even without keep_result)
    assert asyncio.run(send_then_cancel()) == (Cancelled.REMOVED, Cancelled.FINISHED, Cancelled.REMOVED)
    assert broker.queue_stats(["low"])[0].eta == 0


# -- enqueues of one loop combined (redis.asyncio's producer) -----------------------------------------------
class FakeRoundTrips:
    """A ``send`` for ``Coalesced`` that records each round trip and holds it until released."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.trips: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail = fail

    async def __call__(self, tasks: list[OutgoingTask]) -> list[str]:
        self.trips.append([t.id for t in tasks])
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        return [f"stored-{t.id}" for t in tasks]


def test_calls_made_during_a_round_trip_go_together_in_the_next_in_order() -> None:
    async def scenario() -> tuple[list[list[str]], list[list[str]]]:
        trips = FakeRoundTrips()
        coalesced = Coalesced(trips, flights=1)
        first = asyncio.ensure_future(coalesced.enqueue([task("a")]))
        await asyncio.sleep(0)  # its round trip is under way
        rest = [asyncio.ensure_future(coalesced.enqueue([task(f"b{n}"), task(f"c{n}")])) for n in range(3)]
        await asyncio.sleep(0)
        trips.release.set()
        return trips.trips, [await call for call in [first, *rest]]

    trips, got = asyncio.run(scenario())
    assert trips == [["a"], ["b0", "c0", "b1", "c1", "b2", "c2"]]
    assert got == [["stored-a"]] + [[f"stored-b{n}", f"stored-c{n}"] for n in range(3)]


def test_a_failed_round_trip_fails_each_of_its_calls_and_not_the_next() -> None:
    async def scenario() -> list[Any]:
        trips = FakeRoundTrips(fail=BrokerUnavailableError("down"))
        coalesced = Coalesced(trips, flights=1)
        calls = [asyncio.ensure_future(coalesced.enqueue([task(f"t{n}")])) for n in range(3)]
        await asyncio.sleep(0)
        trips.release.set()
        outcomes = list(await asyncio.gather(*calls, return_exceptions=True))
        trips.fail = None
        outcomes.append(await coalesced.enqueue([task("after")]))
        return outcomes

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, BrokerUnavailableError) for o in outcomes[:3]) and outcomes[3] == ["stored-after"]


def test_not_replicated_is_reported_to_each_call_with_its_own_ids() -> None:
    async def scenario() -> list[Any]:
        trips = FakeRoundTrips(fail=NotReplicatedError(["a", "b1", "b2"], 1, 0, 100, "redis://x"))
        coalesced = Coalesced(trips, flights=1)
        calls = [asyncio.ensure_future(coalesced.enqueue([task("a")])),
                 asyncio.ensure_future(coalesced.enqueue([task("b1"), task("b2")]))]
        await asyncio.sleep(0)
        trips.release.set()
        return list(await asyncio.gather(*calls, return_exceptions=True))

    first, second = asyncio.run(scenario())
    assert isinstance(first, NotReplicatedError) and first.task_ids == ["a"]
    assert isinstance(second, NotReplicatedError) and second.task_ids == ["b1", "b2"]


def test_a_cancelled_caller_does_not_fail_the_others_of_its_round_trip() -> None:
    async def scenario() -> list[list[str]]:
        trips = FakeRoundTrips()
        coalesced = Coalesced(trips, flights=1)
        calls = [asyncio.ensure_future(coalesced.enqueue([task(f"t{n}")])) for n in range(3)]
        await asyncio.sleep(0)
        calls[0].cancel()
        await asyncio.sleep(0)
        trips.release.set()
        return [await call for call in calls[1:]]

    assert asyncio.run(scenario()) == [["stored-t1"], ["stored-t2"]]
