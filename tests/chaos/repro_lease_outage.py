"""Reproduction: a long task still running in a live worker runs a second time after Redis was unreachable
for longer than ``lease_timeout`` (here a clean restart: SIGTERM, nothing lost).

While Redis is down nobody can renew leases, but their deadlines keep passing. When it is back, the first
``reserve`` of any worker child (they retry with backoff) runs ``recover_expired`` before the running
task's parent renews its lease (every ``min(1, lease/4)`` s): the task goes back to the queue and an idle
child starts it again while the first run goes on.

Run: ``python -m tests.chaos.repro_lease_outage [--tries 5]``; prints, per try, how many times the long task
started (1 is right, 2 is the bug).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from tests.chaos.chaos import Chaos, Plan, wait_until


def once(workdir: Path, down: float = 3.0, long_s: float = 6.0) -> int:
    chaos = Chaos(Plan(tasks=1, lease=2.0, concurrency=4), workdir, seed=7, log=lambda _: None)
    chaos.book_server.start()
    chaos.broker_server.start()
    try:
        worker = chaos.start_worker("worker", chaos.broker_server.url)
        chaos.send([chaos.outgoing(0, long_s * 1000)], {0: long_s * 1000})
        book = chaos.book()
        wait_until(lambda: book.hlen(chaos.bkey("running")) == 1, 10, 0.01)
        time.sleep(0.3)
        chaos.broker_server.stop()  # SIGTERM: Redis writes its AOF out, nothing is lost
        time.sleep(down)
        chaos.broker_server.start()
        wait_until(lambda: book.sismember(chaos.bkey("done"), "0"), long_s + 10, 0.05)
        time.sleep(1.0)
        starts = int(book.hget(chaos.bkey("runs"), "0") or 0)
        book.close()
        chaos.stop_workers([worker])
        return starts
    finally:
        chaos.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.repro_lease_outage", description=__doc__)
    parser.add_argument("--tries", type=int, default=5)
    args = parser.parse_args()
    results = []
    for attempt in range(args.tries):
        starts = once(Path(tempfile.mkdtemp(prefix="hexq-repro-")))
        results.append(starts)
        print(f"try {attempt + 1}: the long task started {starts} time(s)", flush=True)
    print(f"run twice in {sum(1 for s in results if s > 1)} of {len(results)} tries")


if __name__ == "__main__":
    main()
