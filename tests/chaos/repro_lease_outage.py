"""Reproduction (found by the chaos run; fixed by the two-phase lease expiry, ff41a95): a long task still
running in a live worker runs a second time after no worker could reach
Redis for longer than ``lease_timeout`` (here a clean Redis restart: SIGTERM, nothing lost).

While Redis is unreachable nobody can renew leases, but their deadlines keep passing. When it is back, the
first ``reserve`` of any client runs the expired-lease recovery before the running task's worker parent has
renewed its lease (every ``min(1, lease/4)`` s, and only once it has reconnected): the task goes back to its
queue and an idle child starts it again while the first run goes on.

In the chaos run this happens by chance (a sibling child's reserve wins the race against its parent's
renewal). Here it is made certain: the worker reaches Redis through the chaos proxy, which stays cut until
this script, standing for the first client back, has made a reservation (of nothing: it serves no queue,
so only the recovery step runs).

Run: ``python -m tests.chaos.repro_lease_outage``: prints how many times the long task started (1 is right,
2 is the bug). ``tests/chaos/test_chaos_short.py::test_long_task_not_rerun_after_an_outage`` runs the same.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from tests.chaos.chaos import Chaos, Plan, wait_until
from tests.chaos.proxy import ProxyProcess


def lease_outage(workdir: Path, down: float = 2.5, long_ms: float = 5000.0) -> dict[str, int | bool]:
    from hexq.adapters.redis.broker import RedisBroker

    chaos = Chaos(Plan(tasks=1, lease=2.0, concurrency=2), workdir, seed=11, log=lambda _: None)
    chaos.book_server.start()
    chaos.broker_server.start()
    try:
        chaos.proxy = ProxyProcess(chaos.broker_server.port, workdir / "proxy.log").start()
        worker = chaos.start_worker("worker", chaos.proxy.url)
        chaos.send([chaos.outgoing(0, long_ms)], {0: long_ms})
        book = chaos.book()
        if not wait_until(lambda: book.hlen(chaos.bkey("running")) == 1, 10, 0.01):
            raise RuntimeError("the long task did not start")
        chaos.proxy.cut()
        chaos.broker_server.stop()  # SIGTERM: the AOF is complete, nothing is lost
        time.sleep(down)
        chaos.broker_server.start()
        client = chaos.broker_server.client()
        first_back = RedisBroker(client, chaos.prefix)
        before = len(first_back.in_flight())
        first_back.reserve("first-client-back", [], 0, int(time.time() * 1000), 0)
        recovered = before - len(first_back.in_flight())
        first_back.close()
        chaos.proxy.resume()
        wait_until(lambda: book.sismember(chaos.bkey("done"), "0"), long_ms / 1000 + 10, 0.05)
        time.sleep(1.0)
        runs = int(book.hget(chaos.bkey("runs"), "0") or 0)
        book.close()
        return {"recovered_by_first_client_back": recovered, "runs": runs, "worker_alive": worker.alive()}
    finally:
        chaos.close()


def main() -> None:
    result = lease_outage(Path(tempfile.mkdtemp(prefix="hexq-repro-")))
    print(result)
    print("BUG: the long task ran twice" if result["runs"] > 1 else "ok: the long task ran once")


if __name__ == "__main__":
    main()
