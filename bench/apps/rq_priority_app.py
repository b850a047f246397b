"""RQ, priority workload: two ``rq worker --url URL high low`` (a worker takes from its queues in order)."""

from redis import Redis
from rq import Queue

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body

_connection = Redis.from_url(BROKER_URL)
high = Queue("high", connection=_connection)
low = Queue("low", connection=_connection)


def urgent(sent: float) -> None:
    record(sent)


def slow() -> None:
    slow_body()
