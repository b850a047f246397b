"""Reproduction (fixed): while Redis was unreachable, a worker parent whose child died retried putting the
child's tasks back on every tick (~16 times a second), logging a WARNING each time: a one-minute outage wrote
about a thousand warnings per dead child.

Now the parent's state machine retries settling a dead child with a growing pause (up to 1 s), and each
process logs the outage once when it starts and once when it ends. This cuts the network to Redis for 3 s
after SIGKILLing a child and counts the warnings the worker wrote, and checks the dead child's tasks were
put back once Redis was reachable again.

Run: ``python -m tests.chaos.repro_recovery_retry``.
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
        deadline = time.monotonic() + 10
        while "reachable again" not in text and time.monotonic() < deadline:
            time.sleep(0.1)
            text = worker.output()
        return {"warnings_logged": text.count(" WARNING "), "settled_after_cut": "reachable again" in text,
                "worker_alive": worker.alive()}
    finally:
        chaos.close()


def main() -> None:
    result = recovery_retries(Path(tempfile.mkdtemp(prefix="hexq-repro-")))
    print(result)
    print(f"{result['warnings_logged']} warnings logged in a 3 s cut; settled after it: {result['settled_after_cut']}")


if __name__ == "__main__":
    main()
