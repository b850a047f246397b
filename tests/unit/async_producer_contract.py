"""The ``AsyncProducer`` contract (``hexq.core.ports.broker``): ``Producer.enqueue`` awaited, the same store.

A test module subclasses ``AsyncProducerContract`` and provides ``make_pair``: a function returning a sync broker
on an empty store and an ``AsyncProducer`` on the same store (closing what it made at teardown). Each test
sends through the async producer and reads back through the broker's ports."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from hexq.core.ports import AsyncProducer, Broker
from tests.unit.broker_contract import LEASE, T0, ids, stats, take, task, unique_task

MakePair = Callable[[], tuple[Broker, AsyncProducer]]


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


class AsyncProducerContract:
    @pytest.fixture
    def pair(self, make_pair: MakePair) -> tuple[Broker, AsyncProducer]:
        return make_pair()

    def test_one_runnable_task_and_a_batch_keep_their_order(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair

        async def send() -> tuple[list[str], list[str]]:
            first = await producer.enqueue([task("a")])
            rest = await producer.enqueue([task("b"), task("c", "other"), task("d")])
            await producer.aclose()
            return first, rest

        assert run(send()) == (["a"], ["b", "c", "d"])
        assert [(d.id, d.payload) for d in take(broker)] == [("a", "p-a"), ("b", "p-b"), ("d", "p-d")]
        assert ids(take(broker, "other")) == ["c"]

    def test_eta_tasks_wait_and_dedup_as_with_enqueue(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair
        run(producer.enqueue([task("e", eta_ms=T0 + 100, dedup_key="k")]))
        run(producer.enqueue([task("f", payload="new", eta_ms=T0 + 200, dedup_key="k")]))
        assert stats(broker) == (0, 1, 0)
        assert [(d.id, d.payload) for d in take(broker, now_ms=T0 + 200)] == [("e", "new")]

    def test_a_big_batch_keeps_its_order(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair
        sent = [task(f"t{i:04d}") for i in range(600)]
        assert run(producer.enqueue(sent)) == [t.id for t in sent]
        got: list[str] = []
        while batch := take(broker, limit=1000):
            got += ids(batch)
        assert got == [t.id for t in sent]

    def test_unique_tasks_take_their_lock_as_with_enqueue(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair
        one = unique_task("a")

        async def race() -> list[list[str]]:
            return list(await asyncio.gather(*(producer.enqueue([unique_task(f"r{n}")]) for n in range(20))))

        assert run(producer.enqueue([one])) == [one.id]
        assert run(race()) == [[one.id]] * 20
        assert run(producer.enqueue([unique_task("b", "other"), unique_task("c")])) == [
            unique_task("b", "other").id, one.id]
        assert stats(broker) == (2, 0, 0)
        take(broker, limit=1)
        broker.ack("c1", [one.id])
        again = unique_task("d")
        assert run(producer.enqueue([again])) == [again.id]

    def test_many_coroutines_at_once_store_every_task_once(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair

        async def burst() -> list[list[str]]:
            return list(await asyncio.gather(*(producer.enqueue([task(f"t{n:03d}")]) for n in range(200))))

        assert run(burst()) == [[f"t{n:03d}"] for n in range(200)]
        assert sorted(ids(take(broker, limit=1000))) == [f"t{n:03d}" for n in range(200)]

    def test_it_wakes_an_idle_consumer(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair
        assert take(broker) == []  # idle
        got: list[str] = []
        waiter = threading.Thread(target=lambda: got.extend(
            ids(list(broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries))))
        waiter.start()
        time.sleep(0.2)
        run(producer.enqueue([task("late")]))
        waiter.join(3.0)
        assert not waiter.is_alive() and got == ["late"]

    def test_it_works_again_in_another_event_loop(self, pair: tuple[Broker, AsyncProducer]) -> None:
        broker, producer = pair
        run(producer.enqueue([task("a")]))  # asyncio.run: that loop is closed now
        run(producer.enqueue([task("b")]))
        assert ids(take(broker)) == ["a", "b"]
