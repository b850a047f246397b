"""hexq itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from bench.systems.base import System, script, utc


class Hexq(System):
    name = "hexq"
    dist = "hexq"
    app_module = "bench.apps.hexq_app"
    setup = "2 procs (--concurrency=2)"
    command = "hexq worker --app=bench.apps.hexq_app:app --concurrency=2"
    has_batch = True
    has_priority = True
    priority = "queues=[(0, 'high'), (1, 'low')]: strict, the first non-empty queue is served"
    priority_command = "hexq worker --app=bench.apps.hexq_priority_app:app --concurrency=2"

    def missing(self) -> str | None:
        if importlib.util.find_spec("hexq") is None:
            return "not installed"
        for module in ("hexq.entrypoints.cli", "hexq.adapters.redis.broker"):
            if importlib.util.find_spec(module) is None:
                return f"not available yet ({module} missing)"
        return None

    def worker_argvs(self, url: str, app: str = "bench.apps.hexq_app:app") -> list[list[str]]:
        exe = script("hexq")
        head = [exe] if Path(exe).exists() else [sys.executable, "-m", "hexq.entrypoints.cli"]
        return [[*head, "worker", f"--app={app}", "--concurrency=2"]]

    def priority_argvs(self, url: str) -> list[list[str]]:
        return self.worker_argvs(url, "bench.apps.hexq_priority_app:app")

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.delay()

    def batch(self, n: int, chunk: int) -> None:
        noop = self.app().noop
        for start in range(0, n, chunk):
            noop.delay_many([() for _ in range(min(chunk, n - start))])

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.delay(sent)

    def send_eta(self, due: float) -> None:
        self.app().stamp.delay(due, eta=utc(due))

    def send_low(self, n: int) -> None:
        slow = self.priority_app().slow
        for start in range(0, n, 1000):
            slow.delay_many([() for _ in range(min(1000, n - start))])

    def send_high(self, sent: float) -> None:
        self.priority_app().urgent.delay(sent)
