"""arq: asyncio only, one worker process; the client drives one event loop for all its calls."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.systems.base import System, script, utc


class Arq(System):
    name = "arq"
    dist = "arq"
    app_module = "bench.apps.arq_app"
    setup = "1 proc, asyncio (max_jobs=10)"
    command = "arq bench.apps.arq_app.WorkerSettings --custom-log-dict bench.apps.arq_app.LOG_CONFIG"
    priority = "no priorities: a worker serves one queue, a sorted set ordered by enqueue (or defer) time"

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pool: Any = None

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("arq"), "bench.apps.arq_app.WorkerSettings", "--custom-log-dict",
                 "bench.apps.arq_app.LOG_CONFIG"]]

    def open(self) -> None:
        from arq import create_pool

        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(create_pool(self.app().WorkerSettings.redis_settings))

    def close(self) -> None:
        if self.loop is not None:
            self.loop.run_until_complete(self.pool.aclose())
            self.loop.close()

    def _run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def enqueue(self, n: int) -> None:
        async def go() -> None:
            for _ in range(n):
                await self.pool.enqueue_job("noop")

        self._run(go())

    def send_stamp(self, sent: float) -> None:
        self._run(self.pool.enqueue_job("stamp", sent))

    def send_eta(self, due: float) -> None:
        self._run(self.pool.enqueue_job("stamp", due, _defer_until=utc(due)))
