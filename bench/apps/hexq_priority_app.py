"""hexq, priority workload: ``hexq worker --app=bench.apps.hexq_priority_app:app --concurrency=2``."""

import os

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body
from hexq import HexQ

# BENCH_PARTITIONS: spread over that many hash tags (bench/cluster.py, on a Redis Cluster); 1 by default.
app = HexQ(queues=[(0, "high"), (1, "low")], url=BROKER_URL, partitions=int(os.environ.get("BENCH_PARTITIONS", "1")),
           concurrency=2, worker_log_level="WARNING")


@app.task(queue="high")
def urgent(sent: float) -> None:
    record(sent)


@app.task(queue="low")
def slow() -> None:
    slow_body()
