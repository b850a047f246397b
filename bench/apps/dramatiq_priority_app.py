"""Dramatiq, priority workload: ``dramatiq bench.apps.dramatiq_priority_app -p 2 -t 1``.

The Redis broker has no priority queues; the closest equivalent is one queue per priority (each worker
process consumes both) plus the actor ``priority``, which orders the messages a process has prefetched
(lower number first)."""

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body

broker = RedisBroker(url=BROKER_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="high", priority=0)
def urgent(sent: float) -> None:
    record(sent)


@dramatiq.actor(queue_name="low", priority=100)
def slow() -> None:
    slow_body()
