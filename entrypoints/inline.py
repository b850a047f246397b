"""Synchronous in-process runs for dev and tests (``url="memory://"``): no Redis, no worker processes.

Tasks go through the same broker contract and the same TaskRunner as on a real worker, so retries,
dead letters and hooks behave the same; only a sync task's soft timeout cannot interrupt it here.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from hexq.core.services.runner import TaskRunner

if TYPE_CHECKING:
    from hexq.entrypoints.app import HexQ

CONSUMER = "inline"
BROADCAST_QUEUE = "@broadcast.inline"


class InlineRunner:
    def __init__(self, app: HexQ) -> None:
        self.app = app
        self.runner = TaskRunner(app.registry, app.codec, app.broker, app.clock, CONSUMER, app.random,
                                 metrics=app.metrics, defer_acks=False)
        self._running = False

    def run_pending(self) -> int:
        # A task that enqueues another task re-enters here: the outer loop will pick the new one up.
        if self._running:
            return 0
        self._running = True
        try:
            return self._in_fresh_loop()
        finally:
            self._running = False

    def _in_fresh_loop(self) -> int:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._drain())
        # Called from async code: run our loop in a helper thread so the caller's loop is not re-entered.
        result: list[int] = []
        errors: list[BaseException] = []

        def target() -> None:
            try:
                result.append(asyncio.run(self._drain()))
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="hexq-inline")
        thread.start()
        thread.join()
        if errors:
            raise errors[0]
        return result[0]

    async def _drain(self) -> int:
        ran = 0
        queues = [*self.app.queues.names, BROADCAST_QUEUE]
        lease_ms = int(self.app.lease_timeout * 1000)
        while True:
            now_ms = int(self.app.clock.now() * 1000)
            reservation = self.app.broker.reserve(CONSUMER, queues, 1, now_ms, lease_ms)
            if not reservation.deliveries:
                return ran
            for delivery in reservation.deliveries:
                await self.runner.run(delivery)
                ran += 1
