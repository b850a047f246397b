"""Shared builders for service tests: an app on the in-memory broker with a fake clock."""

from __future__ import annotations

from typing import Any

from hexq import HexQ
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.ports import Delivery
from hexq.entrypoints.app import Call


def make_app(**options: Any) -> tuple[HexQ, MemoryBroker, FakeClock]:
    broker = MemoryBroker()
    clock = FakeClock()
    options.setdefault("queues", [(0, "high"), (1, "low")])
    # redis:// so that .delay() only enqueues: the services under test do the running.
    app = HexQ(url="redis://127.0.0.1:1/0", broker=broker, clock=clock, concurrency=2, **options)
    return app, broker, clock


def enqueue(app: HexQ, task: Any, *args: Any, queue: str | None = None, eta: Any = None) -> str:
    return app.enqueue_many([Call(task, args, {}, queue, eta)])[0]


def reserve_all(broker: MemoryBroker, queues: list[str], now_ms: int) -> tuple[Delivery, ...]:
    return broker.reserve("probe", queues, 1000, now_ms, 10_000).deliveries
