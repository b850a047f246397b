"""A worker started while Redis is down says so once per process, and once more when Redis is back.

Redis only (``redis_only``): the outage is a Redis server that is not running yet. An SQLite database is a
file of this host, with no server to be down; its failure modes (a lock held past the busy timeout, a full
disk, a missing folder) are unit-tested in tests/unit/test_sqlite_*.py."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_server import RedisServer
from workers import Cluster, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.redis_only]


def test_an_outage_is_logged_once_per_process_when_it_starts_and_when_it_ends(
        private_redis: Callable[..., RedisServer], hexq_prefix: str, tmp_path: Path) -> None:
    server = private_redis()
    server.stop()
    cluster = Cluster(server.url, hexq_prefix, tmp_path)
    try:
        worker = cluster.start("worker", "--concurrency=4")
        time.sleep(6.0)  # four children and a parent retrying against a refused connection
        during = worker.output()
        warnings = [line for line in during.splitlines() if " WARNING " in line]
        per_process = Counter(re.search(r"\[(\d+)\]", line).group(1) for line in warnings)  # type: ignore[union-attr]
        print(f"{len(warnings)} warnings in 6 s of outage from {len(per_process)} processes")
        # The parent may say it started without the broker, then that it cannot use it: two lines at most;
        # each child one.
        assert len(per_process) <= 5 and all(count <= 2 for count in per_process.values()), during
        assert len(warnings) <= 7, during
        server.start()
        cluster.book = server.client()
        wait_for(lambda: cluster.live_workers() != [], 20, f"the worker to reach Redis\n{worker.output()}")
        wait_for(lambda: "reachable again" in worker.output(), 20, f"the end of the outage\n{worker.output()}")
        assert worker.handle.poll() is None
    finally:
        cluster.close()
