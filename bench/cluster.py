"""``python -m bench --workloads cluster``: hexq spread over N partitions on a real Redis Cluster.

Two measurements, each on a local 3-primary cluster (``bench/cluster_server.py``, 1 replica per primary
unless ``--cluster-replicas 0``), never part of a default run (see bench/README.md, "Redis Cluster"):

- ``cluster-cost``: the cost workload (``bench/cost.py``) for ``partitions`` = 1, 2 and 3: N single enqueues
  with no worker running, then ``hexq worker --concurrency=2`` until the last completion (its start-up
  included, plus a 0.25 s settle), with ``INFO cpu commandstats`` read on **every primary** before and after,
  so each node's Redis CPU µs per task is known; then the workers sit idle for ``IDLE_SECONDS`` and the
  primaries' CPU per second while idle is read too, minus what the same nodes spend with no worker at all
  (the cluster's own cron and bus), measured just before. The completion counter is on a separate
  redis-server, so the tasks' INCRs and the harness's polling reach no cluster node.
- ``cluster-priority``: the priority workload (``Harness.priority``: 2 workers, PRIO_LOW 2 ms low tasks,
  a high-priority stamp every 20 ms) for partitions = 1 and 3 on the cluster, and partitions = 1 on a single
  redis-server for reference; p50/p99 of the high tasks' start - enqueue.

``cluster`` runs both. Every run starts from flushed nodes and fresh worker processes; repetitions are
interleaved (rep 1 of every configuration, then rep 2, ...), and each table cell is the median of the
repetitions with the spread (min-max) after it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import redis

from bench import cost as redis_cost
from bench.apps.common import DONE_KEY, LOW_KEY, STAMPS_KEY
from bench.cluster_server import LocalCluster
from bench.procs import REPO, ProcessTree, bench_env, run_client
from bench.redis_server import RedisServer
from bench.systems.hexq import Hexq
from bench.workloads import percentile, stamp_delays_ms, steady_rate, wait_for_count

NAMES = ("cluster", "cluster-cost", "cluster-priority")  # what --workloads can pick (never run by default)
COST_PARTITIONS = (1, 2, 3)
PRIO_RUNS = (("single", 1), ("cluster", 1), ("cluster", 3))  # (broker, partitions)
COST_SETTLE = 0.25
IDLE_SECONDS = 3.0
HERE = REPO / "bench"


class HexqCluster(Hexq):
    """hexq's usual bench apps, given ``partitions`` by ``BENCH_PARTITIONS`` (bench/apps/hexq_app.py)."""

    name = "hexq-cluster"


@attrs.define
class Broker:
    """Where hexq's keys go: a cluster (its primaries measured) or one server."""

    kind: str  # "cluster" or "single"
    url: str  # what the apps get as BENCH_REDIS_URL
    primaries: list[redis.Redis]
    labels: list[str]  # one per primary, e.g. "A (0-5460)"
    replicas: list[redis.Redis] = attrs.Factory(list)

    def flush(self) -> None:
        for client in self.primaries:
            client.flushall()


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@attrs.define
class ClusterBench:
    counter_url: str
    logdir: Path
    n: int = 20_000
    prio_low: int = 3000
    prio_count: int = 100
    prio_interval: float = 0.02
    prio_margin: int = 50
    stall: float = 30.0
    cap: float = 180.0
    system: HexqCluster = attrs.Factory(HexqCluster)
    counter: redis.Redis = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.counter = redis.Redis.from_url(self.counter_url, socket_timeout=30)
        self.logdir.mkdir(parents=True, exist_ok=True)

    # -- processes ---------------------------------------------------------------------------------
    def env(self, broker: Broker, partitions: int) -> dict[str, str]:
        return bench_env(BENCH_REDIS_URL=broker.url, BENCH_COUNTER_URL=self.counter_url,
                         BENCH_PARTITIONS=str(partitions))

    def client(self, broker: Broker, partitions: int, op: str, timeout: float, label: str,
               **opts: Any) -> dict[str, Any]:
        return run_client("bench.cluster_client", self.system.name, op, env=self.env(broker, partitions),
                          logdir=self.logdir, label=label, timeout=timeout, **opts)

    def workers(self, broker: Broker, partitions: int, label: str, priority: bool = False) -> ProcessTree:
        argvs = self.system.priority_argvs(broker.url) if priority else self.system.worker_argvs(broker.url)
        return ProcessTree.spawn(argvs, env=self.env(broker, partitions), cwd=str(REPO),
                                 log=self.logdir / f"{label}-workers.log")

    def fresh(self, broker: Broker) -> None:
        broker.flush()
        self.counter.flushall()

    # -- the cost of tasks, per node ---------------------------------------------------------------
    def cost(self, broker: Broker, partitions: int, label: str) -> dict[str, Any]:
        n = self.n
        self.fresh(broker)
        nodes = broker.primaries + broker.replicas
        quiet0 = [redis_cost.read(c) for c in nodes]
        time.sleep(IDLE_SECONDS)  # no worker, no client: the nodes' own housekeeping
        before = [redis_cost.read(c) for c in nodes]
        self.client(broker, partitions, "enqueue", 60 + n / 50, label + "-enqueue", n=n)
        queued = [redis_cost.read(c) for c in nodes]
        start = time.monotonic()
        tree = self.workers(broker, partitions, label)
        try:
            samples = wait_for_count(self.counter, n, stall=self.stall, cap=self.cap, alive=tree.alive,
                                     partial=True)
            time.sleep(COST_SETTLE)
            finished = [redis_cost.read(c) for c in nodes]
            time.sleep(IDLE_SECONDS)  # every task done: the workers idle (sweeping, blocking)
            idle = [redis_cost.read(c) for c in nodes]
        finally:
            tree.kill()
        end, done = samples[-1]
        p = len(broker.primaries)
        enq = [q - b for q, b in zip(queued, before, strict=True)]
        proc = [f - q for f, q in zip(finished, queued, strict=True)]
        idle_use = [i - f for i, f in zip(idle, finished, strict=True)]
        quiet = [b - q for b, q in zip(before, quiet0, strict=True)]
        node_us = [e.cpu_us_per(n) + u.cpu_us_per(done) for e, u in zip(enq[:p], proc[:p], strict=True)]
        total = sum(node_us)
        cells: dict[str, Any] = {
            "node_us": node_us,
            "node_enq_us": [e.cpu_us_per(n) for e in enq[:p]],
            "node_proc_us": [u.cpu_us_per(done) for u in proc[:p]],
            "node_cmds": [e.commands_per(n) + u.commands_per(done) for e, u in zip(enq[:p], proc[:p], strict=True)],
            "total_us": total,
            "busiest_share": max(node_us) / total if total else None,
            "busiest_us": max(node_us),
            "replicas_us": sum(e.cpu_us_per(n) + u.cpu_us_per(done)
                               for e, u in zip(enq[p:], proc[p:], strict=True)),
            "cmds": sum(e.commands_per(n) + u.commands_per(done) for e, u in zip(enq[:p], proc[:p], strict=True)),
            # idle: the primaries' CPU ms per second with the idle workers running, minus without any
            "idle_ms_per_s": [(i.cpu_s / IDLE_SECONDS - q.cpu_s / IDLE_SECONDS) * 1000
                              for i, q in zip(idle_use[:p], quiet[:p], strict=True)],
            "idle_cmds_per_s": [sum(i.calls.values()) / IDLE_SECONDS for i in idle_use[:p]],
            "rate": done / (end - start),
            "steady": steady_rate(samples, done),
            "done": done,
        }
        breakdown = {broker.labels[i]: {"enqueue": enq[i].breakdown(n), "processing": proc[i].breakdown(done),
                                        "idle_calls": dict(idle_use[i].calls)} for i in range(p)}
        (self.logdir / f"{label}-commands.json").write_text(json.dumps(breakdown, indent=1) + "\n")
        return cells

    # -- priority under load -----------------------------------------------------------------------
    def priority(self, broker: Broker, partitions: int, label: str) -> dict[str, Any]:
        self.fresh(broker)
        tree = self.workers(broker, partitions, label, priority=True)
        try:
            self.client(broker, partitions, "priority", 60, label + "-warmup", n=20, count=10, interval=0.01,
                        margin=0)
            wait_for_count(self.counter, 10, stall=60, cap=90, alive=tree.alive)
            wait_for_count(self.counter, 20, stall=60, cap=90, alive=tree.alive, key=LOW_KEY)
            self.counter.delete(DONE_KEY, STAMPS_KEY, LOW_KEY)
            t0 = time.monotonic()
            result = self.client(broker, partitions, "priority", 120 + self.prio_count * self.prio_interval,
                                 label + "-client", n=self.prio_low, count=self.prio_count,
                                 interval=self.prio_interval, margin=self.prio_margin)
            sent = int(result["sent"])
            if sent == 0:
                raise RuntimeError("the low queue drained before any high-priority task was sent")
            wait_for_count(self.counter, sent, stall=self.stall, cap=120, alive=tree.alive)
            delays = stamp_delays_ms(self.counter)
            low_done = wait_for_count(self.counter, self.prio_low, stall=self.stall, cap=120, alive=tree.alive,
                                      key=LOW_KEY)
            return {"p50": percentile(delays, 50), "p99": percentile(delays, 99), "max": max(delays),
                    "sent": sent, "low_rate": self.prio_low / (low_done[-1][0] - t0)}
        finally:
            tree.kill()


# -- running -----------------------------------------------------------------------------------------
def cluster_broker(cluster: LocalCluster) -> Broker:
    labels = [f"{chr(65 + i)} ({node.first_slot}-{node.last_slot})" for i, node in enumerate(cluster.primaries)]
    return Broker("cluster", cluster.url, [node.client() for node in cluster.primaries], labels,
                  [node.client() for node in cluster.nodes[cluster.primary_count:]])


def placement(cluster: LocalCluster, partitions: int, prefix: str = "hexq") -> list[str]:
    """Which primary each partition's tag lands on: ["hexq -> A", "hexq#1.0 -> C", ...]."""
    from hexq.adapters.redis.partitions import partition_tags, slot_of_tag

    return [f"{tag} (slot {slot_of_tag(tag)}) -> {chr(65 + cluster.primary_of_slot(slot_of_tag(tag)))}"
            for tag in partition_tags(prefix, partitions)]


def run(args: argparse.Namespace, names: Sequence[str]) -> dict[str, Any]:
    """The chosen cluster workloads (``names``, from NAMES), ``args.repeat`` times each."""
    started = time.monotonic()
    do_cost = bool({"cluster", "cluster-cost"} & set(names))
    do_prio = bool({"cluster", "cluster-priority"} & set(names))
    replicas = getattr(args, "cluster_replicas", 1)
    results: dict[str, Any] = {"command": " ".join(["python -m bench", *sys.argv[1:]]), "n": args.n,
                               "repeat": args.repeat, "replicas": replicas, "cost": {}, "priority": {},
                               "errors": []}
    logdir = HERE / "logs" / "cluster"
    counter = RedisServer()
    single = RedisServer() if do_prio else None
    cluster = LocalCluster(primaries=3, replicas=replicas)
    try:
        counter.start()
        if single is not None:
            single.start()
        cluster.start()
        log(f"cluster: 3 primaries, {replicas} replica(s) each: {cluster.url}")
        bench = ClusterBench(counter.url, logdir, n=args.n)
        if args.quick:
            bench.prio_low, bench.prio_count = 500, 20
        results["version"] = cluster.version()
        on_cluster = cluster_broker(cluster)
        results["nodes"] = on_cluster.labels
        results["placement"] = {str(k): placement(cluster, k) for k in sorted({*COST_PARTITIONS, 3})}
        brokers = {"cluster": on_cluster}
        if single is not None:
            brokers["single"] = Broker("single", single.url, [single.client()], ["single"])
        steps: list[tuple[str, str, int, Callable[[Broker, int, str], dict[str, Any]]]] = []
        if do_cost:
            steps += [("cost", "cluster", k, bench.cost) for k in COST_PARTITIONS]
        if do_prio:
            steps += [("priority", kind, k, bench.priority) for kind, k in PRIO_RUNS]
        for rep in range(1, args.repeat + 1):
            for workload, kind, k, fn in steps:
                label = f"{workload}-{kind}-p{k}-r{rep}"
                t0 = time.monotonic()
                try:
                    cells = fn(brokers[kind], k, label)
                except Exception as exc:
                    results["errors"].append(f"{label}: {type(exc).__name__}: {exc}")
                    log(f"[{rep}/{args.repeat}] {label}: {type(exc).__name__}: {exc}")
                    continue
                results[workload].setdefault(f"{kind}/{k}", []).append(cells)
                log(f"[{rep}/{args.repeat}] {label} ({time.monotonic() - t0:.0f} s): " + ", ".join(
                    f"{key}={_short(v)}" for key, v in cells.items()))
    finally:
        cluster.stop()
        counter.stop()
        if single is not None:
            single.stop()
    results["seconds"] = time.monotonic() - started
    return results


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + " ".join(_short(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


# -- reporting ---------------------------------------------------------------------------------------
def _spread(values: Sequence[float | None], fmt: str = "{:.0f}", unit: str = "") -> str:
    """``median (min-max)`` of the repetitions; just the value for one."""
    numbers = [v for v in values if isinstance(v, (int, float))]
    if not numbers:
        return "—"
    mid = fmt.format(statistics.median(numbers)) + unit
    if len(numbers) == 1:
        return mid
    return f"{mid} ({fmt.format(min(numbers))}-{fmt.format(max(numbers))})"


def tables(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(title, markdown table) of each workload that ran."""
    out: list[tuple[str, str]] = []
    reps = results["repeat"]
    cost = results.get("cost") or {}
    if cost:
        labels = results["nodes"]
        single = [r["total_us"] for r in cost.get("cluster/1", [])]
        base = statistics.median(single) if single else None
        head = ["partitions", "steady tasks/s", *[f"node {label} µs/task" for label in labels], "total µs/task",
                "busiest node's share", "busiest ÷ p=1 total", "commands/task", "replicas µs/task",
                "idle: ms CPU/s, busiest node", "idle: commands/s, busiest node"]
        rows = []
        for key, runs in cost.items():
            k = key.split("/")[1]
            node_cells = [_spread([r["node_us"][i] for r in runs], "{:.1f}") for i in range(len(labels))]
            ratio = _spread([r["busiest_us"] / base * 100 for r in runs], unit="%") if base else "—"
            total = _spread([r["total_us"] for r in runs], "{:.1f}")
            rows.append([k, _spread([r["steady"] for r in runs]), *node_cells, total,
                         _spread([r["busiest_share"] * 100 for r in runs], unit="%"), ratio,
                         _spread([r["cmds"] for r in runs], "{:.1f}"), _spread([r["replicas_us"] for r in runs]),
                         _spread([max(r["idle_ms_per_s"]) for r in runs], "{:.1f}"),
                         _spread([max(r["idle_cmds_per_s"]) for r in runs])])
        title = (f"Redis Cluster: Redis CPU per task by primary (µs, enqueue + processing; {results['n']} tasks, "
                 f"median of {reps} (min-max))")
        out.append((title, _markdown(head, rows)))
    prio = results.get("priority") or {}
    if prio:
        head = ["broker", "partitions", "high p50 ms", "high p99 ms", "high max ms", "high tasks sent",
                "low tasks/s"]
        rows = []
        for key, runs in prio.items():
            kind, k = key.split("/")
            broker = "single redis-server" if kind == "single" else "3-primary cluster"
            rows.append([broker, k, _spread([r["p50"] for r in runs], "{:.1f}"),
                         _spread([r["p99"] for r in runs], "{:.1f}"), _spread([r["max"] for r in runs], "{:.1f}"),
                         _spread([r["sent"] for r in runs]), _spread([r["low_rate"] for r in runs])])
        out.append((f"Redis Cluster: priority under load (high-priority start - enqueue; median of {reps} "
                    "(min-max))", _markdown(head, rows)))
    return out


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def notes(results: dict[str, Any]) -> list[str]:
    lines = [f"Server: {results.get('version', '?')}; 3 primaries with {results['replicas']} replica(s) each, "
             f"slots split evenly; {results['n']} tasks per cost run; {results['seconds']:.0f} s."]
    cost = results.get("cost") or {}
    if cost.get("cluster/1") and cost.get("cluster/3"):
        base = statistics.median(r["total_us"] for r in cost["cluster/1"])
        busiest = statistics.median(r["busiest_us"] for r in cost["cluster/3"])
        lines.append(f"Goal, 3 partitions: the busiest primary carries {busiest:.1f} µs/task, "
                     f"{busiest / base:.0%} of the single-node figure ({base:.1f} µs/task, partitions=1; "
                     f"medians): {'met' if busiest <= 0.4 * base else 'NOT met'} (at most 40%).")
    for k, where in (results.get("placement") or {}).items():
        lines.append(f"partitions={k}: " + ", ".join(where))
    lines += [f"problem: {e}" for e in results.get("errors", [])]
    return lines


def report(results: dict[str, Any], quick: bool) -> None:
    """Print the tables; write the JSON and Markdown to bench/logs/ (never over a hand-written file)."""
    parts = []
    for title, table in tables(results):
        print(f"\n{title}\n\n{table}")
        parts.append(f"### {title}\n\n{table}\n")
    print("\n" + "\n".join(notes(results)))
    logs = HERE / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = "CLUSTER-quick" if quick else "CLUSTER"
    (logs / f"{name}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    body = f"`{results['command']}`\n\n" + "\n".join(parts) + "\n" + "\n\n".join(notes(results)) + "\n"
    (logs / f"{name}.md").write_text(body)
    log(f"wrote {logs / (name + '.json')} and {logs / (name + '.md')}")
