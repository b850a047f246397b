"""hexq: ``hexq worker --app=bench.apps.hexq_app:app --concurrency=2``."""

import os

from bench.apps.common import BROKER_URL, done, record
from hexq import HexQ

# BENCH_PARTITIONS: spread over that many hash tags (bench/cluster.py, on a Redis Cluster); 1 by default.
# BENCH_HEXQ_LOG_LEVEL=INFO (and BENCH_HEXQ_LOG_TASKS=0) measure the cost of the line per finished task.
app = HexQ(queues=["default"], url=BROKER_URL, partitions=int(os.environ.get("BENCH_PARTITIONS", "1")), concurrency=2,
           worker_log_level=os.environ.get("BENCH_HEXQ_LOG_LEVEL", "WARNING"),
           log_tasks=os.environ.get("BENCH_HEXQ_LOG_TASKS", "1") != "0")


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
