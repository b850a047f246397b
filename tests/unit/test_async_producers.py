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
from broker_contract import LEASE, T0
from service_fixtures import make_app
from test_broker_contract import require_lupa

from hexq import HexQ, TaskArgumentsError
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.redis.async_producer import AsyncRedisProducer
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.sqlite import SqliteBroker, SqliteSettings
from hexq.adapters.system.offload import ThreadProducer
from hexq.core.ports import AsyncProducer, Broker, Cancelled
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


def test_acancel_removes_a_waiting_task_from_an_event_loop() -> None:
    app, broker, _ = make_app()

    @app.task
    def job() -> None: ...

    async def send_then_cancel() -> tuple[Cancelled, Cancelled]:
        task_id = await job.options(eta=60).adelay()
        return await app.acancel(task_id), await app.acancel(task_id)

    assert asyncio.run(send_then_cancel()) == (Cancelled.REMOVED, Cancelled.UNKNOWN)
    assert broker.queue_stats(["low"])[0].eta == 0
