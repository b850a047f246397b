"""Reproduction: while Redis is unreachable, a worker parent whose child died retries putting the child's
tasks back on every supervisor tick (~16 times a second), logging a WARNING each time.

``Supervisor.chores()`` calls ``_retry_recoveries()`` on every step, not once per heartbeat as the other
broker chores, and ``_retry_recoveries`` logs every failure (unlike ``_safely``, which logs an outage once).
Nothing is lost (the dead consumer's lease expires anyway) and CPU stays low, but a one-minute outage
writes about a thousand warnings per dead child and opens as many connections.

Run: ``python -m tests.chaos.repro_recovery_retry``: prints how many times the parent tried (and logged)
in a 3 s network cut after one child was SIGKILLed.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

from tests.chaos.chaos import Chaos, Plan
from tests.chaos.proxy import ProxyProcess


def recovery_retries(workdir: Path, cut_seconds: float = 3.0) -> dict[str, int | bool]:
    chaos = Chaos(Plan(tasks=1, lease=2.0, concurrency=1), workdir, seed=13, log=lambda _: None)
    chaos.book_server.start()
    chaos.broker_server.start()
    try:
        chaos.proxy = ProxyProcess(chaos.broker_server.port, workdir / "proxy.log").start()
        worker = chaos.start_worker("worker", chaos.proxy.url, concurrency=1)
        time.sleep(0.5)
        chaos.proxy.cut()
        (child,) = worker.children()
        os.kill(child.pid, signal.SIGKILL)
        time.sleep(cut_seconds)
        chaos.proxy.resume()
        time.sleep(1.0)
        text = worker.output()
        return {"retries_logged": text.count("could not put back the tasks"), "worker_alive": worker.alive()}
    finally:
        chaos.close()


def main() -> None:
    result = recovery_retries(Path(tempfile.mkdtemp(prefix="hexq-repro-")))
    print(result)
    print(f"{result['retries_logged']} failed attempts logged in a 3 s cut (one per heartbeat would be ~6)")


if __name__ == "__main__":
    main()
