"""The client half of a run, in its own process: ``python -m bench.client SYSTEM OP --out FILE``.

Ops: ``enqueue`` (time N single calls), ``batch`` (time N batched), ``fill`` (queue N, untimed),
``latency`` (COUNT stamps INTERVAL s apart), ``eta`` (COUNT stamps due DELAY s from now).
Writes ``{"seconds": ...}`` or ``{"error": ...}`` as JSON to FILE.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback

from bench.systems import SYSTEMS


def run(args: argparse.Namespace) -> float:
    system = SYSTEMS[args.system]()
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
        return time.perf_counter() - start
    finally:
        system.close()


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
    args = parser.parse_args(argv)
    try:
        result: dict[str, object] = {"seconds": run(args)}
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    with open(args.out, "w") as fh:
        json.dump(result, fh)


if __name__ == "__main__":
    main()
