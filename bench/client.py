"""The client half of a run, in its own process: ``python -m bench.client SYSTEM OP --out FILE``.

Ops: ``enqueue`` (time N single calls), ``batch`` (time N batched), ``fill`` (queue N, untimed),
``latency`` (COUNT stamps INTERVAL s apart), ``eta`` (COUNT stamps due DELAY s from now), and for the
priority app ``priority`` (queue N low-priority tasks, then up to COUNT high-priority stamps INTERVAL s apart,
stopping early once fewer than MARGIN low ones are left undone; MARGIN 0: never stop early).
Writes ``{"seconds": ..., "sent": ...}`` or ``{"error": ...}`` as JSON to FILE.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

from bench.apps.common import LOW_KEY, counter
from bench.systems import SYSTEMS
from bench.systems.base import System


def run(args: argparse.Namespace) -> dict[str, float]:
    system = SYSTEMS[args.system]()
    if args.op == "priority":
        system.priority_app()
        start = time.perf_counter()
        sent = priority(system, args)
        return {"seconds": time.perf_counter() - start, "sent": sent}
    system.open()
    try:
        start = time.perf_counter()
        if args.op == "enqueue":
            system.enqueue(args.n)
        elif args.op == "batch":
            system.batch(args.n, args.chunk)
        elif args.op == "fill":
            system.fill(args.n)
        elif args.op == "latency":
            t0 = time.monotonic()
            for i in range(args.count):
                wait = t0 + i * args.interval - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                system.send_stamp(time.time())
        elif args.op == "eta":
            for _ in range(args.count):
                system.send_eta(time.time() + args.delay)
        else:
            raise ValueError(f"unknown op {args.op!r}")
        return {"seconds": time.perf_counter() - start}
    finally:
        system.close()


def priority(system: System, args: argparse.Namespace) -> int:
    """Saturate the low queue, then send high-priority stamps while low work remains; how many were sent."""
    if args.n:
        system.send_low(args.n)
    t0 = time.monotonic()
    for i in range(args.count):
        wait = t0 + i * args.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if args.margin and int(counter().get(LOW_KEY) or 0) > args.n - args.margin:
            return i  # the low queue is (nearly) drained: what follows would not be "under load"
        system.send_high(time.time())
    return int(args.count)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.client")
    parser.add_argument("system", choices=sorted(SYSTEMS))
    parser.add_argument("op")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--margin", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        result: dict[str, object] = dict(run(args))
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
