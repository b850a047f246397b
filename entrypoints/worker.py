"""Composing a production worker: the parent (state machine + driver + fork server) and each child.

Order matters in the parent: the running board and the metrics directory are made first, then the fork
server is forked while this process still has a single thread; only after that do threads start (the
metrics HTTP server, the driver's broker thread) and connections open.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING, Any

import attrs

from hexq.adapters.posix.alarm import SignalAlarm
from hexq.adapters.posix.board import ChildReporter, SharedBoard
from hexq.adapters.posix.interrupts import SignalledCancellation
from hexq.adapters.posix.processes import PosixProcessControl
from hexq.adapters.posix.tally import CountingMetrics, SharedTally
from hexq.adapters.redis.errors import NotAClusterError
from hexq.core.errors import BrokerAuthError, BrokerError, ConfigError
from hexq.core.ports import Broker, Delivery, Metrics, NoMetrics, Tracing
from hexq.core.queues import broadcast_queue
from hexq.core.services.parent import ParentConfig, WorkerParent
from hexq.core.services.runner import TaskRunner
from hexq.entrypoints import bootstrap
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.child_driver import ChildConfig, ChildLoop
from hexq.entrypoints.logs import batch_logs, flush_logs
from hexq.entrypoints.parent_driver import ParentDriver

if TYPE_CHECKING:
    from hexq.adapters.prometheus.exporter import MultiprocessExporter

log = logging.getLogger("hexq.worker")

# With async_concurrency=0 ("no limit", as in WakaQ) a child still needs a bound for its board.
UNLIMITED_ASYNC_SLOTS = 256


@attrs.frozen
class WorkerPlan:
    """What every process of one worker agrees on, fixed before the first fork."""

    worker_id: str
    served: tuple[str, ...]  # the app's queues this worker serves, highest priority first
    concurrency: int
    slots: int  # tasks one child runs at once: 1, or 1 + async concurrency
    log_tasks: bool = True  # a line per task that succeeds (the app's log_tasks, or hexq worker --no-log-tasks)

    @property
    def child_queues(self) -> tuple[str, ...]:
        """What a child reserves from: its worker's broadcasts first, then the served queues."""
        return (broadcast_queue(self.worker_id), *self.served)


def run_worker(app: HexQ, queues: Sequence[str] | None = None, exclude: Sequence[str] = (),
               concurrency: int | None = None, metrics_port: int | None = None,
               metrics_host: str = "0.0.0.0", log_tasks: bool | None = None) -> int:
    plan = _plan(app, queues, exclude, concurrency, app.log_tasks if log_tasks is None else log_tasks)
    port = metrics_port if metrics_port is not None else app.metrics_port
    exporter = _prepare_exporter() if port is not None else None
    metrics = exporter.metrics if exporter is not None else app.metrics
    board = SharedBoard(plan.concurrency, plan.slots)
    # Row i: child i's counts of finished tasks; the last row: the parent's (hard timeouts it records).
    tally = SharedTally(plan.concurrency + 1, app.queues.names)

    def child_main(index: int, consumer: str) -> int:
        return run_child(app, plan, board, CountingMetrics(metrics, tally, index), index, consumer)

    processes = PosixProcessControl.start(child_main, exporter.process_dead if exporter is not None else None)
    broker = bootstrap.make_broker(app)
    tracing = bootstrap.make_tracing(app)  # the spans of hard-killed runs, which the parent records
    try:
        if exporter is not None and port is not None:
            exporter.serve(port, metrics_host)
            log.info("serving metrics on http://%s:%d/metrics (files in %s)", metrics_host, exporter.port,
                     exporter.directory)
        _probe(broker, plan.served)
        driver = _driver(app, plan, board, processes, broker, metrics, tally, tracing)
        _on_stop_signals(driver.request_stop)
        log.info("worker %s serving %s with %d children", plan.worker_id, list(plan.served), plan.concurrency)
        return driver.run()
    finally:
        processes.close()
        tracing.flush()
        broker.close()
        if exporter is not None:
            exporter.close()


def _plan(app: HexQ, queues: Sequence[str] | None, exclude: Sequence[str], concurrency: int | None,
          log_tasks: bool = True) -> WorkerPlan:
    served = app.queues.select(queues, [*app.exclude_queues, *exclude])
    worker_id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    has_async = any(task.is_async for task in app.registry.tasks.values())
    slots = 1 + (app.async_concurrency or UNLIMITED_ASYNC_SLOTS) if has_async else 1
    return WorkerPlan(worker_id, tuple(served), concurrency or app.concurrency, slots, log_tasks)


def _driver(app: HexQ, plan: WorkerPlan, board: SharedBoard, processes: PosixProcessControl, broker: Broker,
            metrics: Metrics, tally: SharedTally, tracing: Tracing) -> ParentDriver:
    info: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "queues": list(plan.served),
                            "concurrency": plan.concurrency, "broker": app.connection.redacted}
    config = ParentConfig(
        worker_id=plan.worker_id, concurrency=plan.concurrency, lease_ms=int(app.lease_timeout * 1000),
        max_mem_percent=app.max_mem_percent, shutdown_timeout=app.shutdown_timeout,
        heartbeat_interval=min(1.0, app.lease_timeout / 4), info=info,
        report_depths=not isinstance(metrics, NoMetrics), cancel_grace=app.cancel_grace,
    )
    machine = WorkerParent(config)
    # One runner records every hard timeout, each on behalf of the dead child's consumer.
    recorder = TaskRunner(app.registry, app.codec, broker, app.clock, plan.worker_id, bootstrap.process_random(),
                          metrics=CountingMetrics(metrics, tally, plan.concurrency), tracing=tracing)

    def record_hard_timeout(delivery: Delivery, consumer: str) -> None:
        recorder.fail_outside(delivery, "hard_timeout", consumer=consumer)

    return ParentDriver(machine, processes, board, broker, app.clock, record_hard_timeout, metrics, plan.served,
                        tally=tally)


def _on_stop_signals(request_stop: Callable[[], None]) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing in-flight tasks, then exiting", signal.Signals(signum).name)
        request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)


def _probe(broker: Broker, served: Sequence[str]) -> None:
    """Refuse to start with credentials Redis rejects (restarting would not fix them); start anyway when
    Redis is merely unreachable, since it may come back."""
    try:
        broker.queue_stats(list(served))
    except (BrokerAuthError, NotAClusterError):
        raise
    except BrokerError as exc:
        log.warning("broker not usable at start-up (%s); starting anyway and retrying", exc)


def _prepare_exporter() -> MultiprocessExporter:
    try:
        from hexq.adapters.prometheus.exporter import MultiprocessExporter
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise ConfigError("--metrics-port needs prometheus_client, which is not installed: "
                          "pip install 'hexq[prometheus]'") from None
    return MultiprocessExporter.prepare()


def _no_logs_kept() -> None:
    pass


def run_child(app: HexQ, plan: WorkerPlan, board: SharedBoard, metrics: Metrics, index: int, consumer: str) -> int:
    """The body of one worker child, in its own process: its own connections, sender and randomness."""
    # Sockets inherited from the parent must never be shared; the index picks the partition it idles on.
    broker = bootstrap.make_broker(app, child=(index, plan.concurrency))
    tracing = bootstrap.make_tracing(app)
    bootstrap.enter_child(app, bootstrap.build_sender(app, broker, metrics, tracing))
    runner = TaskRunner(app.registry, app.codec, broker, app.clock, consumer, bootstrap.process_random(),
                        alarm=SignalAlarm(), reporter=ChildReporter(board, index), metrics=metrics,
                        tracing=tracing, log_tasks=plan.log_tasks, cancels=SignalledCancellation(board, index))
    config = ChildConfig(consumer=consumer, queues=plan.child_queues, slots=plan.slots,
                         lease_ms=int(app.lease_timeout * 1000), max_tasks=app.max_tasks_per_worker,
                         rates=app.registry.rate_limits(plan.served, signed=app.codec.signing_key is not None))
    # Its log lines below WARNING are written a batch at a time (the line per task is on every task's path).
    batched = batch_logs()
    loop = ChildLoop(runner, broker, app.clock, config, on_started=list(app.registry.hooks.after_worker_started),
                     flush_logs=flush_logs if batched else _no_logs_kept)

    def stop(signum: int, frame: FrameType | None) -> None:
        loop.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    try:
        return asyncio.run(loop.run())
    finally:
        flush_logs()  # the fork server ends a child with os._exit, which runs no exit handler
        tracing.flush()
        broker.close()
