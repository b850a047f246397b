"""Soak: many no-op tasks through one worker (concurrency 2, no max_tasks_per_worker) against a throwaway
redis-server; RSS of the worker parent and children sampled every ~2 s; at the end, the Redis keys left are
compared with the documented layout (``hexq.adapters.redis.keys``). Not a test: it prints a table and a
verdict, and exits non-zero only if it could not run or a key outside the layout is left.

Run: ``python -m bench.soak`` (200,000 tasks) or ``python -m bench.soak --tasks 20000``.
The worker runs ``--app=bench.soak:app``; this module is that app too (``noop`` does nothing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from hexq import HexQ

PREFIX = "soak"
QUEUE = "default"

app = HexQ(url=os.environ.get("HEXQ_SOAK_URL", "redis://127.0.0.1:6379/0"), prefix=PREFIX, queues=[QUEUE],
           concurrency=2, max_tasks_per_worker=None, worker_log_level="WARNING")


@app.task
def noop() -> None:
    return None


def documented_keys() -> dict[str, str]:
    """``{name pattern: type}`` from the key table in keys.py's docstring, e.g. ``q:<queue>: list``."""
    from hexq.adapters.redis import keys

    table = {}
    for match in re.finditer(r"^\{p\}:(\S+)\s+(list|hash|zset|set|string|pubsub)\b", keys.__doc__ or "", re.M):
        table[match.group(1)] = match.group(2)
    return table


def classify(name: str, table: dict[str, str]) -> str | None:
    """The documented pattern a key name (without the ``{p}:`` part) belongs to, or None."""
    for pattern in table:
        regex = "^" + re.sub(r"<[^>]+>", ".+", re.escape(pattern).replace(r"\<", "<").replace(r"\>", ">")) + "$"
        if re.match(regex, name):
            return pattern
    return None


def key_report(client: Any) -> list[dict[str, Any]]:
    table = documented_keys()
    rows = []
    for key in sorted(client.scan_iter(match="*", count=1000)):
        key = key.decode() if isinstance(key, bytes) else key
        kind = client.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        size = {"list": client.llen, "hash": client.hlen, "zset": client.zcard, "set": client.scard}.get(kind)
        name = key.split("}:", 1)[1] if key.startswith("{" + PREFIX + "}:") else None
        pattern = classify(name, table) if name is not None else None
        rows.append({"key": key, "type": kind, "size": size(key) if size else None, "documented": pattern})
    return rows


def mb(n: int) -> str:
    return f"{n / 1e6:7.1f}"


def rss_of(pid: int) -> tuple[int, list[int]]:
    try:
        parent = psutil.Process(pid)
        children = parent.children(recursive=True)  # the fork server and the children it forked
        kids = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                kids.append(child.memory_info().rss)
        return parent.memory_info().rss, kids
    except psutil.Error:
        return 0, []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200_000)
    parser.add_argument("--interval", type=float, default=2.0,
                        help="seconds between RSS samples (and a sample every 10%% of the tasks)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    args = parser.parse_args(argv)

    from bench.procs import REPO, ProcessTree, bench_env
    from bench.redis_server import RedisServer

    with RedisServer() as server:
        client = server.client()
        producer = HexQ(url=server.url, prefix=PREFIX, queues=[QUEUE])
        produced = producer.task(noop.fn)
        chunk, backlog = 10_000, 100_000
        enqueued = 0

        def feed() -> None:
            """Keep at most ``backlog`` tasks waiting, so a long soak does not fill Redis first."""
            nonlocal enqueued
            while enqueued < args.tasks and client.llen(queue_key) < backlog - chunk:
                count = min(chunk, args.tasks - enqueued)
                producer.enqueue_many([produced.bind()] * count)
                enqueued += count

        queue_key, inflight_key = "{" + PREFIX + "}:q:" + QUEUE, "{" + PREFIX + "}:inflight"
        feed()
        print(f"{args.tasks} no-op tasks, fed to keep {backlog} queued; redis used_memory "
              f"{mb(int(client.info('memory')['used_memory']))} MB with {enqueued} queued", flush=True)
        log = Path(server.dir) / "worker.log"
        worker = ProcessTree.spawn(
            [[sys.executable, "-m", "hexq.entrypoints.cli", "worker", "--app=bench.soak:app", "--concurrency=2"]],
            env=bench_env(HEXQ_SOAK_URL=server.url), cwd=str(REPO), log=log)
        pid = worker.procs[0].pid
        samples: list[tuple[float, int, int, list[int]]] = []
        try:
            deadline = time.monotonic() + 30
            while len(rss_of(pid)[1]) < 2 and worker.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            begin = time.monotonic()
            print(f"{'time s':>7} {'done':>8} {'tasks/s':>8} {'parent MB':>10} {'children MB':>16}", flush=True)
            while True:
                feed()
                pipe = client.pipeline(transaction=False)
                pipe.llen(queue_key)
                pipe.hlen(inflight_key)
                queued, flying = pipe.execute()
                done = enqueued - int(queued) - int(flying)
                now = time.monotonic() - begin
                # A row every ``interval`` s, and at least every 10% of the tasks however fast they go.
                if not samples or done >= args.tasks or now - samples[-1][0] >= args.interval \
                        or done - samples[-1][1] >= args.tasks / 10:
                    parent, kids = rss_of(pid)
                    rate = (done - samples[-1][1]) / (now - samples[-1][0]) if samples else 0.0
                    samples.append((now, done, parent, kids))
                    print(f"{now:7.1f} {done:8d} {rate:8.0f} {mb(parent):>10} "
                          f"{' '.join(mb(k) for k in kids):>16}", flush=True)
                if done >= args.tasks:
                    break
                if now > args.timeout or not worker.alive():
                    print("the worker died or the soak timed out:\n" + log.read_text(errors="replace")[-3000:])
                    return 1
                time.sleep(0.05)
            time.sleep(1.5)  # the last acknowledgements ride on the next reserve or on the exit flush
            running = key_report(client)
            os.kill(pid, signal.SIGTERM)
            code = worker.procs[0].wait(60)
            stopped = key_report(client)
        finally:
            worker.kill(grace=5.0)
        # Steady state: from the first sample past 10% of the tasks to the last.
        steady = [s for s in samples if s[1] >= args.tasks * 0.1] or samples
        first, last = steady[0], samples[-1]
        per = max(1, last[1] - first[1]) / 100_000
        print(f"\n{args.tasks} tasks in {samples[-1][0]:.1f} s ({args.tasks / max(samples[-1][0], 0.1):.0f}/s); "
              f"worker exit code {code}")
        print(f"RSS growth from {first[1]} to {last[1]} tasks: parent {mb(last[2] - first[2])} MB, children "
              + ", ".join(f"{mb(b - a)} MB" for a, b in zip(first[3], last[3], strict=False))
              + f" ({per:.2f} x 100k tasks)")
        undocumented = []
        for title, rows in (("keys left with the worker still running", running),
                            ("keys left after the worker exited (SIGTERM)", stopped)):
            print(f"\n{title}:")
            for row in rows:
                mark = row["documented"] or "NOT DOCUMENTED"
                print(f"    {row['key']:<40} {row['type']:<6} {row['size']!s:>6}  {mark}")
                if row["documented"] is None:
                    undocumented.append(row["key"])
            if not rows:
                print("    (none)")
        leftovers = [r for r in stopped if r["documented"] in ("tasks", "inflight", "crashes", "owned:<consumer>",
                                                             "q:<queue>", "dead")]
        print(f"\nverdict: {'OK' if not undocumented and not leftovers else 'CHECK'}: "
              f"undocumented keys {undocumented or 'none'}, task state left after the run "
              f"{[r['key'] for r in leftovers] or 'none'}")
        return 1 if undocumented else 0


if __name__ == "__main__":
    sys.exit(main())
