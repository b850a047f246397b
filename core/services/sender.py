"""Sending tasks: ``.delay()``, batches and broadcasts, from any process (an app, a task inside a worker)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from hexq.core.durations import eta_to_epoch
from hexq.core.outgoing import TaskFactory
from hexq.core.ports import Clock, Metrics, NoMetrics, OutgoingTask, Producer
from hexq.core.registry import Registry


@attrs.frozen
class Send:
    """One run of a task to send: its name, arguments, and the per-call options."""

    name: str
    args: tuple[Any, ...] | list[Any]
    kwargs: dict[str, Any]
    queue: str | None = None
    eta: Any = None  # a timedelta, a datetime (naive = UTC) or seconds from now


@attrs.define
class Sender:
    registry: Registry
    factory: TaskFactory
    broker: Producer
    clock: Clock
    metrics: Metrics = attrs.field(factory=NoMetrics)

    def send(self, calls: Sequence[Send]) -> list[str]:
        """Encode and store task runs, in order and pipelined; returns their ids."""
        now = self.clock.now()
        outgoing = [self._outgoing(call, now) for call in calls]
        if outgoing:
            self.broker.enqueue(outgoing)
            if not isinstance(self.metrics, NoMetrics):
                self._count(calls, outgoing)
        return [task.id for task in outgoing]

    def broadcast(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """Run once on every live worker; returns how many workers got a copy to run (see
        ``Producer.broadcast``)."""
        now = self.clock.now()
        return self.broker.broadcast(self._broadcast_task(name, args, kwargs, now), int(now * 1000))

    def _outgoing(self, call: Send, now: float) -> OutgoingTask:
        definition = self.registry.get(call.name)
        queue = self.registry.queue_for(definition, call.queue)
        eta = None if call.eta is None else eta_to_epoch(call.eta, now)
        return self.factory.new(definition.name, queue, call.args, call.kwargs, now, eta)

    def _broadcast_task(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], now: float) -> OutgoingTask:
        definition = self.registry.get(name)
        queue = self.registry.queues.default.name
        return self.factory.new(definition.name, queue, args, kwargs, now, broadcast=True)

    def _count(self, calls: Sequence[Send], outgoing: Sequence[OutgoingTask]) -> None:
        counts = Counter((call.name, task.queue) for call, task in zip(calls, outgoing, strict=True))
        for (name, queue), count in counts.items():
            self.metrics.enqueued(name, queue, count)


@attrs.define
class InlineSender(Sender):
    """The in-process mode: what is sent runs here and now (``run_pending``), no worker needed. A broadcast
    reaches the one "worker" there is: this process."""

    run_pending: Callable[[], int] = lambda: 0

    def send(self, calls: Sequence[Send]) -> list[str]:
        ids = super().send(calls)
        self.run_pending()
        return ids

    def broadcast(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        self.broker.enqueue([self._broadcast_task(name, args, kwargs, self.clock.now())])
        self.run_pending()
        return 1
