"""Dramatiq with its Redis broker."""

from __future__ import annotations

import time

from bench.systems.base import System, script


class Dramatiq(System):
    name = "dramatiq"
    dist = "dramatiq"
    app_module = "bench.apps.dramatiq_app"
    setup = "2 procs x 1 thread (-p 2 -t 1)"
    command = "dramatiq bench.apps.dramatiq_app -p 2 -t 1"

    def missing(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("dramatiq") is None:
            return "not installed"
        if importlib.util.find_spec("redis") is None:
            return "not installed (dramatiq[redis])"
        return None

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("dramatiq"), "bench.apps.dramatiq_app", "-p", "2", "-t", "1"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.send()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.send(sent)

    def send_eta(self, due: float) -> None:
        # Dramatiq takes a relative delay in ms only.
        self.app().stamp.send_with_options(args=(due,), delay=max(0, int((due - time.time()) * 1000)))
