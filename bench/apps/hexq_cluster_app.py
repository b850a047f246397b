"""hexq on a Redis Cluster (``bench/cluster.py``): the app of ``hexq_app`` with ``partitions`` from
``BENCH_PARTITIONS`` (default 1); ``BENCH_REDIS_URL`` is then a ``redis+cluster://`` URL (or, for the
single-server reference, a ``redis://`` one)."""

import os

from bench.apps.common import BROKER_URL, done, record
from hexq import HexQ

PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "1"))

app = HexQ(queues=["default"], url=BROKER_URL, partitions=PARTITIONS, concurrency=2, worker_log_level="WARNING")


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
