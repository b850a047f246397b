"""RQ: one job per fork, so two ``rq worker`` processes stand for concurrency 2."""

from __future__ import annotations

from bench.systems.base import System, script, utc


class Rq(System):
    name = "rq"
    dist = "rq"
    app_module = "bench.apps.rq_app"
    setup = "2x rq worker (fork per job)"
    command = "rq worker --url URL --with-scheduler --logging_level WARNING default  (x2)"
    has_batch = True
    has_priority = True
    priority = "queues high and low: strict, a worker takes from the queues in the order given"
    priority_command = "rq worker --url URL --logging_level WARNING high low  (x2)"

    def worker_argvs(self, url: str) -> list[list[str]]:
        argv = [script("rq"), "worker", "--url", url, "--with-scheduler", "--logging_level",
                "WARNING", "default"]
        return [[*argv, "--name", f"bench-{i}"] for i in (1, 2)]

    def priority_argvs(self, url: str) -> list[list[str]]:
        argv = [script("rq"), "worker", "--url", url, "--logging_level", "WARNING", "high", "low"]
        return [[*argv, "--name", f"bench-priority-{i}"] for i in (1, 2)]

    def enqueue(self, n: int) -> None:
        app = self.app()
        for _ in range(n):
            app.queue.enqueue(app.noop)

    def batch(self, n: int, chunk: int) -> None:
        app = self.app()
        for start in range(0, n, chunk):
            app.queue.enqueue_many([app.queue.prepare_data(app.noop) for _ in range(min(chunk, n - start))])

    def send_stamp(self, sent: float) -> None:
        app = self.app()
        app.queue.enqueue(app.stamp, sent)

    def send_eta(self, due: float) -> None:
        app = self.app()
        app.queue.enqueue_at(utc(due), app.stamp, due)

    def send_low(self, n: int) -> None:
        app = self.priority_app()
        for start in range(0, n, 1000):
            app.low.enqueue_many([app.low.prepare_data(app.slow) for _ in range(min(1000, n - start))])

    def send_high(self, sent: float) -> None:
        app = self.priority_app()
        app.high.enqueue(app.urgent, sent)
