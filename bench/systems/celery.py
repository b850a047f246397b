"""Celery with the Redis broker (results ignored)."""

from __future__ import annotations

from bench.systems.base import System, script, utc


class Celery(System):
    name = "celery"
    dist = "celery"
    app_module = "bench.apps.celery_app"
    setup = "2 procs (-c 2 -P prefork)"
    command = "celery -A bench.apps.celery_app worker -c 2 -P prefork -l WARNING"

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("celery"), "-A", "bench.apps.celery_app", "worker", "-c", "2", "-P", "prefork",
                 "-l", "WARNING"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.delay()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.delay(sent)

    def send_eta(self, due: float) -> None:
        self.app().stamp.apply_async((due,), eta=utc(due))
