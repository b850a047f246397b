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

    def missing(self) -> str | None:
        if importlib.util.find_spec("hexq") is None:
            return "not installed"
        for module in ("hexq.entrypoints.cli", "hexq.adapters.redis.broker"):
            if importlib.util.find_spec(module) is None:
                return f"not available yet ({module} missing)"
        return None

    def worker_argvs(self, url: str) -> list[list[str]]:
        exe = script("hexq")
        head = [exe] if Path(exe).exists() else [sys.executable, "-m", "hexq.entrypoints.cli"]
        return [[*head, "worker", "--app=bench.apps.hexq_app:app", "--concurrency=2"]]

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
