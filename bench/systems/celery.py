"""Celery with the Redis broker (results ignored)."""

from __future__ import annotations

from bench.systems.base import System, script, utc


class Celery(System):
    name = "celery"
    dist = "celery"
    app_module = "bench.apps.celery_app"
    setup = "2 procs (-c 2 -P prefork)"
    command = "celery -A bench.apps.celery_app worker -c 2 -P prefork -l WARNING"
    has_priority = True
    priority = ("one queue, message priority 0 vs 9 (priority_steps 0-9: one Redis list per step, popped "
                "in order), worker_prefetch_multiplier=1 and task_acks_late (Celery's Redis priority recipe)")
    priority_command = "celery -A bench.apps.celery_priority_app worker -c 2 -P prefork -l WARNING"

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("celery"), "-A", "bench.apps.celery_app", "worker", "-c", "2", "-P", "prefork",
                 "-l", "WARNING"]]

    def priority_argvs(self, url: str) -> list[list[str]]:
        return [[script("celery"), "-A", "bench.apps.celery_priority_app", "worker", "-c", "2", "-P",
                 "prefork", "-l", "WARNING"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.delay()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.delay(sent)

    def send_eta(self, due: float) -> None:
        self.app().stamp.apply_async((due,), eta=utc(due))

    def send_low(self, n: int) -> None:
        slow = self.priority_app().slow
        for _ in range(n):
            slow.delay()

    def send_high(self, sent: float) -> None:
        self.priority_app().urgent.delay(sent)
