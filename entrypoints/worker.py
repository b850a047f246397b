"""Composition of a production worker: Supervisor + PosixProcessControl + the app's broker + children."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import uuid
from collections.abc import Sequence
from types import FrameType

from hexq.adapters.posix.alarm import SignalAlarm
from hexq.adapters.posix.board import ChildReporter, SharedBoard
from hexq.adapters.posix.processes import PosixProcessControl
from hexq.core.services.child import ChildConfig, ChildLoop
from hexq.core.services.runner import TaskRunner
from hexq.core.services.supervisor import Supervisor, SupervisorConfig, served_queues
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.bootstrap import make_broker

log = logging.getLogger("hexq.worker")

# With async_concurrency=0 ("no limit", as in WakaQ) a child still needs a bound for its board.
UNLIMITED_ASYNC_SLOTS = 256


def run_worker(app: HexQ, queues: Sequence[str] | None = None, exclude: Sequence[str] = (),
               concurrency: int | None = None) -> int:
    served = app.queues.select(queues, [*app.exclude_queues, *exclude])
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
    processes = PosixProcessControl()

    def child_main(index: int, consumer: str) -> int:
        board = supervisor.board
        assert isinstance(board, SharedBoard)
        return _run_child(app, board, index, consumer, served_queues(worker_id, served), slots)

    supervisor = Supervisor(app.registry, app.codec, app.broker, app.clock, processes, config, child_main,
                            app.random)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: finishing in-flight tasks, then exiting", signal.Signals(signum).name)
        supervisor.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("worker %s serving %s with %d children", worker_id, served, count)
    return supervisor.run()


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
                        monotonic=PosixProcessControl().monotonic)
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
