"""Huey, priority workload: ``huey_consumer bench.apps.huey_priority_app.huey -w 2 -k process``.

Huey has one queue per app; ``PriorityRedisHuey`` keeps it in a sorted set so a task with a higher
``priority`` is dequeued first."""

from huey import PriorityRedisHuey

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body

huey = PriorityRedisHuey("bench_priority", url=BROKER_URL)


@huey.task(priority=10)
def urgent(sent: float) -> None:
    record(sent)


@huey.task(priority=0)
def slow() -> None:
    slow_body()
