"""``python -m bench``: hexq against its installed Redis-backed peers, and hexq on SQLite against SqliteHuey;
see bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from bench import async_enqueue, cluster, report
from bench.harness import WORKLOADS, Config, Harness
from bench.procs import REPO, kill_all
from bench.proxy import Proxy
from bench.redis_server import RedisServer
from bench.systems import SYSTEMS, baseline
from bench.workloads import ceiling, median, sqlite_ceiling

HERE = REPO / "bench"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=int, default=20_000, help="tasks per throughput run (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions; the median is reported")
    parser.add_argument("--proxy-n", type=int, default=None,
                        help="tasks per run through the +1 ms proxy (default N/10, at least 200)")
    parser.add_argument("--only", default="",
                        help=f"comma-separated systems, e.g. hexq,wakaq or hexq-sqlite,huey-sqlite "
                             f"(default all: {','.join(SYSTEMS)})")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: N=200, one repetition")
    parser.add_argument("--cap", type=float, default=30.0,
                        help="seconds a processing run may take; a slower system is measured on what it "
                             "completed by then (default 30)")
    parser.add_argument("--no-proxy", action="store_true", help="skip the +1 ms proxy runs")
    parser.add_argument("--workloads", default="",
                        help=f"comma-separated workloads to run (default all): {','.join(WORKLOADS)}; "
                             "e.g. --workloads priority; opt-in, never run by default: "
                             f"{','.join(cluster.NAMES)} (hexq on a local Redis Cluster, bench/cluster.py), "
                             f"{','.join(async_enqueue.NAMES)} (await .adelay() from 100 coroutines against "
                             ".delay() from 100 threads, bench/async_enqueue.py)")
    parser.add_argument("--cluster-replicas", type=int, default=1,
                        help="replicas per primary of the cluster workloads' 3-primary cluster (default 1)")
    parser.add_argument("--baseline", metavar="REV", default="",
                        help="also measure hexq as of this git commit (system hexq-base, installed in a venv "
                             "under bench/baselines/), to compare before and after a change in one run")
    parser.add_argument("--json", type=Path, default=HERE / "results.json")
    parser.add_argument("--markdown", type=Path, default=None,
                        help="default bench/RESULTS.md; with --quick, bench/logs/RESULTS-quick.md; with "
                             "--workloads or --only, bench/logs/RESULTS-partial.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeat = 200, 1
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.cluster_workloads = [w for w in chosen if w in cluster.NAMES]
    args.async_workloads = [w for w in chosen if w in async_enqueue.NAMES]
    known = WORKLOADS + cluster.NAMES + async_enqueue.NAMES
    if any(w not in known for w in chosen):
        parser.error(f"unknown workload(s) {', '.join(w for w in chosen if w not in known)}; "
                     f"choose from {', '.join(known)}")
    args.workload_names = tuple(w for w in WORKLOADS if w in chosen) if chosen else WORKLOADS
    if args.markdown is None:  # only a full run replaces RESULTS.md
        if args.quick:
            args.markdown = HERE / "logs" / "RESULTS-quick.md"
        elif chosen or args.only.strip():
            args.markdown = HERE / "logs" / "RESULTS-partial.md"
        else:
            args.markdown = HERE / "RESULTS.md"
    if args.proxy_n is None:
        args.proxy_n = max(200, args.n // 10)
    # hexq-base is measured only when --baseline names the commit to install
    wanted = [s.strip() for s in args.only.split(",") if s.strip()] or [n for n in SYSTEMS if n != "hexq-base"]
    if args.baseline:
        log(f"installing hexq as of {args.baseline} for hexq-base ...")
        os.environ[baseline.PYTHON_ENV] = str(baseline.prepare(HERE.parent, args.baseline, HERE / "baselines"))
        os.environ[baseline.REV_ENV] = args.baseline
        wanted.append("hexq-base")
    unknown = [n for n in wanted if n not in SYSTEMS]
    args.names = [n for n in SYSTEMS if n in wanted]
    if unknown:
        parser.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Per metric: the median of the numeric repetitions, else the first status ('timeout', 'error')."""
    keys = {k for c in cells for k in c}
    out: dict[str, Any] = {}
    for key in keys:
        numbers = [c[key] for c in cells if isinstance(c.get(key), (int, float))]
        statuses = [c[key] for c in cells if isinstance(c.get(key), str)]
        out[key] = median(numbers) if numbers else (statuses[0] if statuses else None)
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    config = Config(n=args.n, proxy_n=args.proxy_n, cap=args.cap, workloads=args.workload_names)
    if args.quick:  # a smoke run of the priority workload: ~0.5 s of low work, 20 high tasks
        config.prio_low, config.prio_count = 500, 20
    systems = {name: SYSTEMS[name]() for name in args.names}
    brokers = {system.broker for system in systems.values()}
    results: dict[str, Any] = {"command": " ".join(["python -m bench", *sys.argv[1:]]), "systems": {}}
    for name, system in systems.items():
        reason = system.missing()
        results["systems"][name] = {
            "version": system.version() if reason != "not installed" else "", "setup": system.setup,
            "command": system.command, "has_batch": system.has_batch, "reason": reason,
            "has_priority": system.has_priority, "priority": system.priority,
            "priority_command": system.priority_command,
            "status": reason.split(" (")[0] if reason else None, "reps": [], "errors": [], "median": {},
            "broker": system.broker, "skips": sorted(system.skips),
        }
        if reason:
            log(f"{name}: skipped, {reason}")
    logdir = HERE / "logs"
    shutil.rmtree(logdir, ignore_errors=True)
    # The SQLite systems' database files: a folder per system, a new file per step (see Harness.fresh).
    sqlite_dir = Path(tempfile.mkdtemp(prefix="hexq-bench-sqlite-")) if "sqlite" in brokers else None
    try:
        with RedisServer() as server:
            results["machine"] = report.machine(server.version(), sqlite_dir)
            proxy = None if args.no_proxy or "proxy" not in config.workloads or "redis" not in brokers \
                else Proxy(server.port).__enter__()
            # the cost workload's completion counter lives on a server of its own (see bench/cost.py)
            counter_server = RedisServer() if "cost" in config.workloads and "redis" in brokers else None
            try:
                if proxy is not None:
                    results["proxy_rtt_ms"] = proxy.added_rtt_ms(server.url)
                    log(f"proxy adds {results['proxy_rtt_ms']:.2f} ms per round trip")
                if counter_server is not None:
                    counter_server.start()
                harness = Harness(server.url, proxy.url if proxy else None, config, logdir, sqlite_dir,
                                  counter_server.url if counter_server else None)
                ceilings: list[float] = []
                proxied: list[float] = []
                sqlite_ceilings: list[float] = []
                for rep in range(1, args.repeat + 1):
                    if "processing" in config.workloads and "redis" in brokers:
                        ceilings.append(ceiling(server.url, args.n))
                    if "processing" in config.workloads and sqlite_dir is not None:
                        folder = sqlite_dir / "ceiling"
                        shutil.rmtree(folder, ignore_errors=True)
                        folder.mkdir()
                        sqlite_ceilings.append(sqlite_ceiling(str(folder / "ceiling.db"), args.n))
                    if proxy is not None:
                        proxied.append(ceiling(proxy.url, args.proxy_n))
                    for name, system in systems.items():
                        entry = results["systems"][name]
                        if entry["status"]:
                            continue
                        t0 = time.monotonic()
                        cells = harness.run(system, rep, entry["errors"])
                        entry["reps"].append(cells)
                        shown = ", ".join(f"{k}={report.fmt(v, report.kind_of(k))}" for k, v in cells.items())
                        log(f"[{rep}/{args.repeat}] {name} ({time.monotonic() - t0:.0f} s): "
                            f"{shown or 'none of the workloads applies'}")
                results["ceiling"] = median(ceilings) if ceilings else None
                results["ceiling_proxy"] = median(proxied) if proxied else None
                results["ceiling_sqlite"] = median(sqlite_ceilings) if sqlite_ceilings else None
            finally:
                if proxy is not None:
                    proxy.__exit__()
                if counter_server is not None:
                    counter_server.stop()
    finally:
        if sqlite_dir is not None:
            kill_all()  # no worker or client may still hold a database file when its folder goes
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    for entry in results["systems"].values():
        entry["median"] = summarize(entry["reps"])
    results["config"] = {"n": args.n, "proxy_n": args.proxy_n, "repeat": args.repeat,
                         "latency_count": config.latency_count, "latency_interval": config.latency_interval,
                         "eta_count": config.eta_count, "eta_delay": config.eta_delay, "cap": config.cap,
                         "prio_low": config.prio_low, "prio_count": config.prio_count,
                         "prio_interval": config.prio_interval, "prio_margin": config.prio_margin,
                         "workloads": list(config.workloads)}
    results["seconds"] = time.monotonic() - started
    results["machine"]["load_end"] = round(os.getloadavg()[0], 2)
    return results


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored
    try:
        results = run(args) if args.workload_names else None
        clustered = cluster.run(args, args.cluster_workloads) \
            if args.cluster_workloads and "hexq" in args.names else None
        asynchronous = async_enqueue.run(args) if args.async_workloads and "hexq" in args.names else None
    except KeyboardInterrupt:
        log("interrupted: every worker, client, proxy and redis-server process was stopped")
        return 130
    except RuntimeError as exc:  # no redis-server, or it or the proxy would not start
        log(f"bench: {exc}")
        return 2
    finally:
        kill_all()
    if results is not None:
        for title, (header, rows) in report.tables(results):
            if title:
                print(f"\n{title}\n")
            print(report.render_text(header, rows))
        print("\n" + "\n".join(report.notes(results)[2:]))
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        args.markdown.write_text(report.markdown_document(results))
        log(f"wrote {args.json} and {args.markdown} in {results['seconds']:.0f} s")
    if asynchronous is not None:
        async_enqueue.report(asynchronous, args.quick)
    if clustered is not None:
        cluster.report(clustered, args.quick)
    elif args.cluster_workloads:
        log("cluster workloads: skipped (they measure hexq, which --only leaves out)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
