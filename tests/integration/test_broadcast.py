"""Broadcasts on real workers through a Redis restart: what ``broadcast()`` returns is a promise.

The broker writes one copy into each live worker's private queue in one script and returns how many it wrote
(``Producer.broadcast``). The pub/sub relay it replaced could not promise this: a broadcast PUBLISHed while a
worker parent's subscription was reconnecting (after a restart, a failover) was lost for that worker, and
the count was of subscribed connections at that instant. Run on that code (f621a50^), the test below failed
three times in three: of about 100 broadcasts that returned, 46-49 returned 0 (the parents had not
subscribed again yet after the restart) and ran nowhere.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from redis_server import RedisServer
from workers import Cluster, wait_for

from hexq.core.errors import BrokerUnavailableError

pytestmark = pytest.mark.integration


@pytest.mark.redis_only
def test_every_broadcast_acknowledged_around_a_redis_restart_runs_once_on_every_worker(
        private_redis: Callable[..., RedisServer], redis_url: str, hexq_prefix: str, tmp_path: Path) -> None:
    """Redis only (SQLite is a file: nothing to restart). Broadcasts are sent every 20 ms while the server
    stops for 2 s and starts again. Each call either returns 2 (both workers) and then runs once on each
    worker, or raises BrokerUnavailableError and runs on both or on neither (one script: never on one only;
    a lost reply cannot say which). The workers' heartbeats survive the restart (AOF), so they still count
    as live when it is back. The tasks report to the session's Redis, not to the one that restarts."""
    server = private_redis(args=["--appendonly", "yes", "--appendfsync", "always"])
    cluster = Cluster(server.url, hexq_prefix, tmp_path, book_url=redis_url)
    acknowledged: dict[str, int] = {}
    refused: list[str] = []
    other: list[str] = []
    try:
        cluster.worker("--concurrency=2")
        cluster.worker("--concurrency=2")
        with cluster.app_env() as tasks:
            stop = threading.Event()

            def send() -> None:
                n = 0
                while not stop.is_set():
                    tag = f"b{n}"
                    n += 1
                    try:
                        acknowledged[tag] = tasks.who_am_i.broadcast(tag)
                    except BrokerUnavailableError:
                        refused.append(tag)
                    except Exception as exc:  # anything else is a failure of the test
                        other.append(f"{tag}: {exc!r}")
                    time.sleep(0.02)

            sender = threading.Thread(target=send)
            sender.start()
            time.sleep(0.5)
            server.stop()
            time.sleep(2.0)
            server.start()
            time.sleep(1.5)
            stop.set()
            sender.join(30)
        assert not other, other
        assert refused, "no broadcast was sent during the outage: the test proved nothing"
        assert set(acknowledged.values()) == {2}, Counter(acknowledged.values())
        wait_for(lambda: set(acknowledged) <= set(cluster.tags()), 30, "every acknowledged broadcast to run")
        time.sleep(0.5)  # a copy run twice would show by now
        workers_of: dict[str, list[int]] = defaultdict(list)
        for result in cluster.results():
            workers_of[result["tag"]].append(result["ppid"])  # the fork server of the worker that ran it
        for tag in acknowledged:
            assert len(workers_of[tag]) == 2 and len(set(workers_of[tag])) == 2, (tag, workers_of[tag])
        for tag in refused:  # all or nothing
            assert len(workers_of[tag]) in (0, 2) and len(set(workers_of[tag])) == len(workers_of[tag]), tag
        print(f"broadcasts around a restart: {len(acknowledged)} acknowledged (each ran on both workers), "
              f"{len(refused)} refused ({sum(1 for t in refused if workers_of[t])} of them ran on both anyway)")
        assert cluster.dead_count() == 0
    finally:
        cluster.close()
