"""WakaQ: the API hexq copies."""

from __future__ import annotations

from bench.systems.base import System, script, utc


class Wakaq(System):
    name = "wakaq"
    dist = "wakaq"
    app_module = "bench.apps.wakaq_app"
    setup = "2 procs (concurrency=2)"
    command = "wakaq-worker --app=bench.apps.wakaq_app.wakaq"
    has_priority = True
    priority = "queues=[(0, 'high'), (1, 'low')]: strict, each process BLPOPs the queues in order"
    priority_command = "wakaq-worker --app=bench.apps.wakaq_priority_app.wakaq"

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("wakaq-worker"), "--app=bench.apps.wakaq_app.wakaq"]]

    def priority_argvs(self, url: str) -> list[list[str]]:
        return [[script("wakaq-worker"), "--app=bench.apps.wakaq_priority_app.wakaq"]]

    def enqueue(self, n: int) -> None:
        noop = self.app().noop
        for _ in range(n):
            noop.delay()

    def send_stamp(self, sent: float) -> None:
        self.app().stamp.delay(sent)

    def send_eta(self, due: float) -> None:
        self.app().stamp.delay(due, eta=utc(due))

    def send_low(self, n: int) -> None:
        slow = self.priority_app().slow
        for _ in range(n):
            slow.delay()

    def send_high(self, sent: float) -> None:
        self.priority_app().urgent.delay(sent)
