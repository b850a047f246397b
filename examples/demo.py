"""The quick start's demo: the example app's worker and scheduler on the embedded SQLite broker.

    python -m examples.demo            # runs for 30 s, then stops both (DEMO_SECONDS=0: until Ctrl-C)

It starts ``hexq worker`` and ``hexq scheduler`` exactly as you would, on ``sqlite:.hexq-demo/hexq.db``,
enqueues the example tasks from this process, and shows what the worker prints: a line per finished task
(``mytask[<id>] succeeded in 0.000 s (queue …, attempt 1)``), a task that fails once and is retried, an eta
task running 10 s after it was sent, and the every-5-seconds cron task firing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATABASE = ROOT / ".hexq-demo" / "hexq.db"


def start(command: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "hexq.entrypoints.cli", command, "--app=examples.app:app"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def relay(name: str, process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        print(f"[{name}] {line}", end="", flush=True)


def enqueue() -> None:
    from examples.app import an_io_intensive_task, anothertask, flaky_call, mytask

    mytask.delay(1, 1)
    mytask.delay(2, 3, queue="a-high-priority-queue")
    anothertask.delay(eta=timedelta(seconds=10))
    an_io_intensive_task.delay()
    mytask.delay_many([mytask.bind(n, n) for n in range(5)])
    flaky_call.delay("https://example.invalid/api")  # fails on its first attempt, succeeds on its retry
    print(f"[demo] enqueued 10 tasks; {anothertask.broadcast()} worker(s) got a broadcast", flush=True)


def main() -> int:
    seconds = float(os.environ.get("DEMO_SECONDS", "30"))
    DATABASE.parent.mkdir(exist_ok=True)
    os.environ["HEXQ_URL"] = f"sqlite://{DATABASE}"  # the absolute form: sqlite:///path
    env = dict(os.environ, HEXQ_CONCURRENCY="2", PYTHONUNBUFFERED="1")
    print(f"[demo] broker: {os.environ['HEXQ_URL']} (nothing to install); Ctrl-C stops", flush=True)
    lines: list[str] = []
    processes = {"worker": start("worker", env), "scheduler": start("scheduler", env)}
    for name, process in processes.items():
        threading.Thread(target=relay, args=(name, process, lines), daemon=True).start()
    try:
        time.sleep(2.0)  # let the worker subscribe to broadcasts
        enqueue()
        deadline = time.monotonic() + seconds if seconds > 0 else float("inf")
        while time.monotonic() < deadline and all(p.poll() is None for p in processes.values()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(60) for name, process in processes.items()}
    fired = sum("fired anothertask" in line for line in lines)
    finished = sum(" hexq.task: " in line for line in lines)
    print(f"[demo] stopped: worker exit {codes['worker']}, scheduler exit {codes['scheduler']}; "
          f"the scheduler fired {fired} cron tick(s); the worker logged {finished} finished task run(s)", flush=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
