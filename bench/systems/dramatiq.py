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
    has_priority = True
    priority = ("no priority queues on Redis; closest: queues high and low (each process consumes both) and "
                "actor priority 0 vs 100, which orders only the messages a process has prefetched")
    priority_command = "dramatiq bench.apps.dramatiq_priority_app -p 2 -t 1"

    def missing(self) -> str | None:
        import importlib.util

        if importlib.util.find_spec("dramatiq") is None:
            return "not installed"
        if importlib.util.find_spec("redis") is None:
            return "not installed (dramatiq[redis])"
        return None

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("dramatiq"), "bench.apps.dramatiq_app", "-p", "2", "-t", "1"]]

    def priority_argvs(self, url: str) -> list[list[str]]:
        return [[script("dramatiq"), "bench.apps.dramatiq_priority_app", "-p", "2", "-t", "1"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.send()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.send(sent)

    def send_eta(self, due: float) -> None:
        # Dramatiq takes a relative delay in ms only.
        self.app().stamp.send_with_options(args=(due,), delay=max(0, int((due - time.time()) * 1000)))

    def send_low(self, n: int) -> None:
        slow = self.priority_app().slow
        for _ in range(n):
            slow.send()

    def send_high(self, sent: float) -> None:
        self.priority_app().urgent.send(sent)
