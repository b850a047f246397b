"""``python -m bench --workloads async-enqueue``: how fast an event loop enqueues with ``await task.adelay()``.

100 coroutines in one event loop each await ``noop.adelay()`` in turn until N tasks are stored, against the
sync API from 100 threads (each calling ``noop.delay()``), on one redis-server the bench starts, with no worker
running: tasks per second for each, and the ratio. Each measurement runs in a process of its own (``python -m
bench.async_enqueue sync|async``), the server flushed before each; repetitions alternate which goes first, and
each cell is the median of ``--repeat`` runs with the spread after it. Never part of a default run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

NAMES = ("async-enqueue",)
MODES = ("sync", "async")
CONCURRENCY = 100
WARM_UP = 200  # tasks each process sends first (connections opened, scripts loaded), not counted
HERE = Path(__file__).resolve().parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the measuring process ----------------------------------------------------------------------------------
def _app(url: str) -> Any:
    from hexq import HexQ

    app = HexQ(url=url, prefix="bench-async", queues=["default"])

    @app.task
    def noop() -> None: ...

    return app, noop


def measure_sync(url: str, n: int, concurrency: int) -> float:
    """Tasks per second of ``concurrency`` threads calling ``.delay()`` until ``n`` are stored."""
    _, noop = _app(url)
    for _ in range(WARM_UP):
        noop.delay()
    tickets = itertools.count()
    start = threading.Barrier(concurrency + 1)

    def sender() -> None:
        start.wait()
        while next(tickets) < n:
            noop.delay()

    threads = [threading.Thread(target=sender) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    return n / (time.perf_counter() - began)


def measure_async(url: str, n: int, concurrency: int) -> float:
    """Tasks per second of ``concurrency`` coroutines awaiting ``.adelay()`` until ``n`` are stored."""
    app, noop = _app(url)

    async def run() -> float:
        await asyncio.gather(*(noop.adelay() for _ in range(WARM_UP)))
        tickets = itertools.count()

        async def sender() -> None:
            while next(tickets) < n:
                await noop.adelay()

        began = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        rate = n / (time.perf_counter() - began)
        await app.aclose()
        return rate

    return asyncio.run(run())


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.async_enqueue")
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    measure = measure_sync if args.mode == "sync" else measure_async
    args.out.write_text(json.dumps({"rate": measure(args.url, args.n, args.concurrency)}))
    return 0


# -- the workload -------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    from bench.procs import REPO, ProcessTree, bench_env
    from bench.redis_server import RedisServer

    n = 2000 if args.quick else args.n
    logdir = HERE / "logs" / "async-enqueue"
    logdir.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    with RedisServer() as server:
        client = server.client()
        for rep in range(args.repeat):
            for mode in (MODES if rep % 2 == 0 else MODES[::-1]):
                client.flushall()
                out = logdir / f"{mode}-{rep}.json"
                out.unlink(missing_ok=True)
                argv = [sys.executable, "-m", "bench.async_enqueue", mode, "--url", server.url, "--n", str(n),
                        "--concurrency", str(CONCURRENCY), "--out", str(out)]
                tree = ProcessTree.spawn([argv], env=bench_env(), cwd=str(REPO), log=logdir / f"{mode}-{rep}.log")
                try:
                    tree.procs[0].wait(timeout=max(120.0, args.cap * 4))
                finally:
                    tree.kill(grace=0.5)
                if not out.exists():
                    raise RuntimeError(f"the {mode} client wrote nothing: see {logdir / f'{mode}-{rep}.log'}")
                rates[mode].append(json.loads(out.read_text())["rate"])
                log(f"[{rep + 1}/{args.repeat}] {mode}: {rates[mode][-1]:,.0f} tasks/s")
    return {"command": " ".join(["python -m bench", *sys.argv[1:]]), "n": n, "concurrency": CONCURRENCY,
            "repeat": args.repeat, "rates": rates}


def report(results: dict[str, Any], quick: bool) -> None:
    """Print both rates and their ratio; write them to bench/logs/ASYNC-ENQUEUE(.json|.md)."""
    rates = results["rates"]

    def cell(values: list[float]) -> str:
        return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"

    ratios = [a / s for s, a in zip(rates["sync"], rates["async"], strict=True)]
    rows = [
        (f"sync: .delay() from {results['concurrency']} threads", cell(rates["sync"])),
        (f"async: await .adelay() from {results['concurrency']} coroutines", cell(rates["async"])),
        ("ratio async / sync (per repetition)", f"{statistics.median(ratios):.2f} "
                                                f"({min(ratios):.2f}-{max(ratios):.2f})"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'enqueue, no worker':<{width}} | tasks/s, median (min-max) |", f"|{'-' * (width + 2)}|{'-' * 27}|"]
    table = "\n".join(lines + [f"| {name:<{width}} | {value:<25} |" for name, value in rows])
    title = f"Enqueue rate, {results['n']:,} no-op tasks per run, median of {results['repeat']}"
    print(f"\n{title}\n\n{table}\n")
    logs = HERE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = "ASYNC-ENQUEUE-quick" if quick else "ASYNC-ENQUEUE"
    (logs / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (logs / f"{name}.md").write_text(f"`{results['command']}`\n\n### {title}\n\n{table}\n")
    log(f"wrote {logs / (name + '.json')} and {logs / (name + '.md')}")


if __name__ == "__main__":
    sys.exit(client_main(sys.argv[1:]))
