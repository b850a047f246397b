"""hexq on a Redis Cluster, priority workload (``bench/cluster.py``): the app of ``hexq_priority_app`` with
``partitions`` from ``BENCH_PARTITIONS`` (default 1)."""

import os

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body
from hexq import HexQ

PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "1"))

app = HexQ(queues=[(0, "high"), (1, "low")], url=BROKER_URL, partitions=PARTITIONS, concurrency=2,
           worker_log_level="WARNING")


@app.task(queue="high")
def urgent(sent: float) -> None:
    record(sent)


@app.task(queue="low")
def slow() -> None:
    slow_body()
