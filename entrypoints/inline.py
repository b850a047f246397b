"""Synchronous in-process runs for dev and tests (``url="memory://"``): no Redis, no worker processes.

Tasks go through the same broker contract and the same TaskRunner as on a real worker, so retries,
dead letters and hooks behave the same; only a sync task's soft timeout cannot interrupt it here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

from hexq.core.ports import Clock, Consumer
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits
from hexq.core.services.runner import TaskRunner

CONSUMER = "inline"


class InlineRunner:
    def __init__(self, queues: Sequence[str], broker: Consumer, clock: Clock, runner: TaskRunner,
                 lease_ms: int, rates: Callable[[], RateLimits] = lambda: NO_RATE_LIMITS) -> None:
        self._queues = list(queues)
        self._rates = rates  # asked at each run: tasks may be declared after the first
        self._broker = broker
        self._clock = clock
        self._runner = runner
        self._lease_ms = lease_ms
        self._running = False

    def run_pending(self) -> int:
        """Run every task that is due now (including eta tasks whose time has come); returns how many."""
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
        rates = self._rates()
        while True:
            now_ms = int(self._clock.now() * 1000)
            reservation = self._broker.reserve(CONSUMER, self._queues, 1, now_ms, self._lease_ms, rates=rates)
            if not reservation.deliveries:
                return ran
            for delivery in reservation.deliveries:
                await self._runner.run(delivery)
                ran += 1
