"""Composition of a production worker: Supervisor + PosixProcessControl + the app's broker + children."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import FrameType
from typing import TYPE_CHECKING

from hexq.adapters.posix.alarm import SignalAlarm
from hexq.adapters.posix.board import ChildReporter, SharedBoard
from hexq.adapters.posix.processes import PosixProcessControl
from hexq.core.errors import BrokerAuthError, BrokerError, ConfigError
from hexq.core.ports import ChildExit
from hexq.core.services.child import ChildConfig, ChildLoop
from hexq.core.services.runner import TaskRunner
from hexq.core.services.supervisor import Supervisor, SupervisorConfig, served_queues
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.bootstrap import make_broker

if TYPE_CHECKING:
    from hexq.adapters.prometheus.exporter import MultiprocessExporter

log = logging.getLogger("hexq.worker")

# With async_concurrency=0 ("no limit", as in WakaQ) a child still needs a bound for its board.
UNLIMITED_ASYNC_SLOTS = 256
# How often the parent checks hard deadlines and child exits: hard timeouts fire within about this much.
WATCH_INTERVAL = 0.02


def run_worker(app: HexQ, queues: Sequence[str] | None = None, exclude: Sequence[str] = (),
               concurrency: int | None = None, metrics_port: int | None = None,
               metrics_host: str = "0.0.0.0") -> int:
    served = app.queues.select(queues, [*app.exclude_queues, *exclude])
    _probe(app, served)
    port = metrics_port if metrics_port is not None else app.metrics_port
    exporter = _start_exporter(port, metrics_host) if port is not None else None
    if exporter is not None:
        # Tasks that enqueue tasks count too: the children inherit the app.
        app.metrics = exporter.metrics
        log.info("serving metrics on http://%s:%d/metrics (files in %s)", metrics_host, exporter.port,
                 exporter.directory)
    try:
        return _supervise(app, served, concurrency, exporter)
    finally:
        if exporter is not None:
            exporter.close()


def _supervise(app: HexQ, served: list[str], concurrency: int | None,
               exporter: MultiprocessExporter | None) -> int:
    worker_id = f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
    slots = 1 + (app.async_concurrency or UNLIMITED_ASYNC_SLOTS) if _has_async(app) else 1
    count = concurrency or app.concurrency
    config = SupervisorConfig(
        worker_id=worker_id,
        concurrency=count,
        slots=slots,
        lease_ms=int(app.lease_timeout * 1000),
        max_mem_percent=app.max_mem_percent,
        shutdown_timeout=app.shutdown_timeout,
        heartbeat_interval=min(1.0, app.lease_timeout / 4),
        info={"host": socket.gethostname(), "pid": os.getpid(), "queues": served, "concurrency": count,
              "broker": app.connection.redacted},
    )
    processes = PosixProcessControl() if exporter is None else _ReportingProcessControl(exporter.process_dead)

    def child_main(index: int, consumer: str) -> int:
        if exporter is not None:
            exporter.in_child()
        board = supervisor.board
        assert isinstance(board, SharedBoard)
        return _run_child(app, board, index, consumer, served_queues(worker_id, served), slots)

    supervisor = Supervisor(app.registry, app.codec, app.broker, app.clock, processes, config, child_main,
                            app.random, metrics=app.metrics, served=tuple(served), lock=threading.Lock())

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing in-flight tasks, then exiting", signal.Signals(signum).name)
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker %s serving %s with %d children", worker_id, served, count)
    return _run_supervisor(supervisor)


def _run_supervisor(supervisor: Supervisor) -> int:
    """Processes on the main thread (signals, forks, hard deadlines), broker chores on a second thread,
    so that a slow or unreachable Redis never delays a hard timeout or the replacement of a child."""
    supervisor.start()
    children_gone = threading.Event()

    def chores() -> None:
        while not children_gone.is_set():
            try:
                supervisor.chores()
            except Exception:  # this thread must outlive any single failure
                log.exception("worker chores failed; retrying")
                time.sleep(1.0)

    thread = threading.Thread(target=chores, name="hexq-chores", daemon=True)
    thread.start()
    while not supervisor.stopping:
        supervisor.watch()
        time.sleep(WATCH_INTERVAL)
    supervisor.stop_children()  # the chores thread keeps leases alive meanwhile
    children_gone.set()
    thread.join(timeout=30)
    supervisor.finish()
    return 0


def _probe(app: HexQ, served: list[str]) -> None:
    """Refuse to start with credentials Redis rejects (restarting would not fix them); start anyway when
    Redis is merely unreachable, since it may come back."""
    try:
        app.broker.queue_stats(served)
    except BrokerAuthError:
        raise
    except BrokerError as exc:
        log.warning("broker not usable at start-up (%s); starting anyway and retrying", exc)


def _start_exporter(port: int, host: str) -> MultiprocessExporter:
    try:
        from hexq.adapters.prometheus.exporter import MultiprocessExporter
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("prometheus_client"):
            raise
        raise ConfigError("--metrics-port needs prometheus_client, which is not installed: "
                          "pip install 'hexq[prometheus]'") from None
    return MultiprocessExporter.start(port, host)


class _ReportingProcessControl(PosixProcessControl):
    """Tells the metrics exporter about each child that exited, so it can tidy that child's files."""

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        super().__init__()
        self._on_exit = on_exit

    def reap(self) -> list[ChildExit]:
        exits = super().reap()
        for exit_ in exits:
            self._on_exit(exit_.pid)
        return exits


def _has_async(app: HexQ) -> bool:
    return any(task.is_async for task in app.registry.tasks.values())


def _run_child(app: HexQ, board: SharedBoard, index: int, consumer: str, queues: tuple[str, ...],
               slots: int) -> int:
    # Our own connections: sockets inherited from the parent must never be shared across processes.
    app._broker = None
    broker = make_broker(app)
    app._broker = broker
    runner = TaskRunner(app.registry, app.codec, broker, app.clock, consumer, app.random,
                        alarm=SignalAlarm(), reporter=ChildReporter(board, index),
                        monotonic=PosixProcessControl().monotonic, metrics=app.metrics)
    config = ChildConfig(consumer=consumer, queues=queues, slots=slots, lease_ms=int(app.lease_timeout * 1000),
                         max_tasks=app.max_tasks_per_worker)
    loop = ChildLoop(runner, broker, app.clock, config, on_started=list(app.registry.hooks.after_worker_started))

    def stop(signum: int, frame: FrameType | None) -> None:
        loop.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    try:
        return asyncio.run(loop.run())
    finally:
        broker.close()
