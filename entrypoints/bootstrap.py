"""The composition root: the one place that chooses adapters and builds the services from an app's settings.

Everything that runs is built here: the sender behind ``.delay()`` (or the in-process runner, for
``memory://``), the scheduler, a worker parent with its driver, and a worker child. Tests pass fakes through
the very same functions (``HexQ(broker=..., clock=...)``, ``processes=``). Nothing here runs at import time,
and nothing changes the user's HexQ object after a fork: a child builds its own broker, sender and random
generator, and tasks that send tasks from inside it reach that child's sender through a context variable.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol, cast

from hexq.adapters.system.entropy import PROCESS
from hexq.core.outgoing import TaskFactory, TaskIds
from hexq.core.ports import AsyncProducer, Broker, Clock, Metrics, NoTracing, Tracing
from hexq.core.rules import LeaseRules
from hexq.core.services.async_sender import AsyncSender
from hexq.core.services.cancelling import TaskCancelling
from hexq.core.services.results import ResultReader
from hexq.core.services.runner import TaskRunner
from hexq.core.services.scheduler import Scheduler
from hexq.core.services.sender import InlineSender, Send, Sender

if TYPE_CHECKING:
    from hexq.entrypoints.app import HexQ
    from hexq.entrypoints.inline import InlineRunner

RULES = LeaseRules()

# Inside a worker child: (the app, the child's own sender). Tasks that call ``.delay()`` run in this
# context, so they send through the child's connections and metrics, not the parent's.
_child_sender: contextvars.ContextVar[tuple[HexQ, Sender] | None] = contextvars.ContextVar(
    "hexq_child_sender", default=None
)


def make_broker(app: HexQ, child: tuple[int, int] | None = None) -> Broker:
    """A new broker for the app's settings. Nothing connects until the first command is sent. The in-process
    mode (``memory://``) is chosen here and only here; ``sqlite:`` is the SQLite adapter; a Redis server
    (``redis://``, ``rediss://``, ``unix://``), a primary found through Sentinel (``redis+sentinel://``,
    ``rediss+sentinel://``) and a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``) are all the Redis
    adapter, spread over ``app.partitions`` hash tags when that is above 1."""
    connection = app.connection
    if connection.scheme == "memory":
        from hexq.adapters.memory.broker import MemoryBroker

        return MemoryBroker(rules=RULES)
    if connection.scheme == "sqlite":
        from hexq.adapters.sqlite.broker import SqliteBroker

        return SqliteBroker.from_settings(connection, rules=RULES)
    from hexq.adapters.redis.assemble import open_broker

    # A worker child (index, its worker's concurrency) blocks on a partition of its own when idle.
    index, concurrency = child or (0, app.partitions)
    return open_broker(connection, app.prefix, rules=RULES, partitions=app.partitions, home=index,
                       covers_all=concurrency >= app.partitions)


def task_factory(app: HexQ, clock: Clock) -> TaskFactory:
    return TaskFactory(app.codec, TaskIds(clock, PROCESS.node))


def process_random() -> Callable[[], float]:
    """This process's own random source (a forked child gets a new one)."""
    return PROCESS.random


def sender_for(app: HexQ) -> Sender:
    """The sender ``.delay()`` uses in this process: a worker child's own, or the app's."""
    active = _child_sender.get()
    if active is not None and active[0] is app:
        return active[1]
    return app._own_sender()


class AsyncSending(Protocol):
    """What ``adelay`` sends through: an ``AsyncSender``, or a whole ``.delay()`` moved to a thread."""

    async def send(self, calls: Sequence[Send]) -> list[str]: ...

    async def aclose(self) -> None: ...


def make_async_producer(app: HexQ) -> AsyncProducer:
    """The ``AsyncProducer`` for the app's settings: ``redis.asyncio`` on one Redis server or a Sentinel primary
    (one partition); else the broker's own enqueue in a thread (SQLite and memory are local; partitions and Redis
    Cluster pin their connections to a slot's node, which redis.asyncio has no hook for; a broker passed to
    ``HexQ(broker=...)`` is the one to use)."""
    from hexq.adapters.system.offload import ThreadProducer

    connection = app.connection
    if app._broker_given or connection.scheme in ("memory", "sqlite"):
        return ThreadProducer(app.broker)
    from hexq.adapters.redis.cluster_settings import ClusterSettings

    if isinstance(connection, ClusterSettings) or app.partitions > 1:
        return ThreadProducer(app.broker)
    from hexq.adapters.redis.async_producer import AsyncRedisProducer

    return AsyncRedisProducer(connection, app.prefix)  # type: ignore[arg-type]


def build_async_sender(app: HexQ, sender: Sender) -> AsyncSending:
    from hexq.adapters.system.offload import ThreadSender

    if app.is_inline:  # sending runs the task here: all of it in a thread
        return ThreadSender(sender)
    return AsyncSender(sender, make_async_producer(app))


_child_async: dict[int, tuple[Sender, AsyncSending]] = {}


def async_sender_for(app: HexQ) -> AsyncSending:
    """What ``adelay`` uses in this process: inside a worker child, its own sender's broker in a thread (the
    child's connections, never the app object's); else the app's."""
    active = _child_sender.get()
    if active is not None and active[0] is app:
        sender = active[1]
        known = _child_async.get(id(sender))
        if known is None or known[0] is not sender:
            from hexq.adapters.system.offload import ThreadProducer

            known = _child_async[id(sender)] = (sender, AsyncSender(sender, ThreadProducer(sender.broker)))
        return known[1]
    return app._own_async_sender()


def result_reader(app: HexQ) -> ResultReader:
    """What task handles read through, in this process: the broker ``.delay()`` uses here (a worker child's
    own, inside a child)."""
    return ResultReader(cast("Broker", sender_for(app).broker), app.clock)


def cancelling(app: HexQ) -> TaskCancelling:
    """What ``app.cancel()`` goes through, in this process: the broker ``.delay()`` uses here, as for results."""
    return TaskCancelling(app.registry, app.codec, cast("Broker", sender_for(app).broker), app.clock)


def make_tracing(app: HexQ) -> Tracing:
    """The app's tracing: ``NoTracing`` unless ``HexQ(tracing=...)`` turned it on (then OpenTelemetry)."""
    if app.tracing is False:
        return NoTracing()
    from hexq.adapters.otel import OtelTracing

    return OtelTracing(None if app.tracing is True else app.tracing)


def build_sender(app: HexQ, broker: Broker, metrics: Metrics, tracing: Tracing | None = None) -> Sender:
    factory = task_factory(app, app.clock)
    tracing = tracing or make_tracing(app)
    if app.is_inline:
        return InlineSender(app.registry, factory, broker, app.clock, metrics, tracing,
                            run_pending=lambda: inline_runner(app).run_pending())
    return Sender(app.registry, factory, broker, app.clock, metrics, tracing)


def inline_runner(app: HexQ) -> InlineRunner:
    """The in-process runner of a ``memory://`` app (one per app, built on first use)."""
    from hexq.entrypoints.inline import CONSUMER, InlineRunner

    existing: InlineRunner | None = app._inline
    if existing is None:
        runner = TaskRunner(app.registry, app.codec, app.broker, app.clock, CONSUMER, process_random(),
                            metrics=app.metrics, tracing=make_tracing(app), defer_acks=False,
                            log_tasks=app.log_tasks)
        existing = InlineRunner(app.queues.names, app.broker, app.clock, runner, lease_ms=int(app.lease_timeout * 1000),
                                rates=lambda: app.registry.rate_limits(app.queues.names,
                                                                       signed=app.codec.signing_key is not None))
        app._inline = existing
    return existing


def scheduler(app: HexQ) -> Scheduler:
    return Scheduler(app.registry, task_factory(app, app.clock), app.broker, app.clock, app.schedules,
                     tracing=make_tracing(app))


def enter_child(app: HexQ, sender: Sender) -> contextvars.Token[tuple[HexQ, Sender] | None]:
    """Make ``sender`` the one tasks of ``app`` use in this (child) process."""
    return _child_sender.set((app, sender))
