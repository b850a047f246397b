"""Huey's RedisHuey with a process-pool consumer."""

from __future__ import annotations

from bench.systems.base import System, script, utc


class Huey(System):
    name = "huey"
    dist = "huey"
    app_module = "bench.apps.huey_app"
    setup = "2 procs (-w 2 -k process)"
    command = "huey_consumer bench.apps.huey_app.huey -w 2 -k process -q"
    has_priority = True
    priority = "one queue, PriorityRedisHuey with task priority 10 vs 0 (a sorted set, highest first)"
    priority_command = "huey_consumer bench.apps.huey_priority_app.huey -w 2 -k process -q"

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("huey_consumer"), "bench.apps.huey_app.huey", "-w", "2", "-k", "process", "-q"]]

    def priority_argvs(self, url: str) -> list[list[str]]:
        return [[script("huey_consumer"), "bench.apps.huey_priority_app.huey", "-w", "2", "-k", "process",
                 "-q"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp(sent)

    def send_eta(self, due: float) -> None:
        self.app().stamp.schedule(args=(due,), eta=utc(due))

    def send_low(self, n: int) -> None:
        slow = self.priority_app().slow
        for _ in range(n):
            slow()

    def send_high(self, sent: float) -> None:
        self.priority_app().urgent(sent)
