"""Runs one system through every workload once (one repetition), each step in a fresh Redis state (and, for
an embedded broker, a new SQLite database file)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import redis

from bench import cost as redis_cost
from bench.apps.common import DONE_KEY, LOW_KEY, STAMPS_KEY
from bench.procs import REPO, ClientFailed, ProcessTree, bench_env, run_client
from bench.systems.base import System
from bench.workloads import Timeout, percentile, stamp_delays_ms, steady_rate, wait_for_count

Cells = dict[str, Any]  # metric -> number, or a status string such as "timeout"
# The cost workload's cells: Redis CPU µs and commands per task, for enqueue, processing and both.
COST_CELLS = ("cpu_enq", "cpu_proc", "cpu_total", "cmd_enq", "cmd_proc", "cmd_total")
WORKLOADS = ("processing", "batch", "latency", "priority", "proxy", "cost")  # what --workloads can pick


# Seconds between the last completion and the final reading: a worker acknowledges after the task body.
COST_SETTLE = 0.25


class StepError(Exception):
    pass


@attrs.define
class Config:
    n: int
    proxy_n: int
    latency_count: int = 200
    latency_interval: float = 0.01
    eta_count: int = 100
    eta_delay: float = 2.0
    batch_chunk: int = 1000
    stall: float = 30.0  # a run whose counter has not moved for this long is a 'timeout'
    cap: float = 30.0  # a processing run still going after this long is measured on what it completed
    # priority under load: prio_low 2 ms tasks on the low queue, then prio_count high ones prio_interval
    # apart, only while at least prio_margin low tasks are still to do
    prio_low: int = 3000
    prio_count: int = 100
    prio_interval: float = 0.02
    prio_margin: int = 50
    workloads: tuple[str, ...] = WORKLOADS


@attrs.define
class Harness:
    url: str  # the bench redis-server
    proxy_url: str | None
    config: Config
    logdir: Path
    sqlite_dir: Path | None = None  # where the SQLite systems' database files are made (one folder each)
    # A second server for the completion counter of the cost workload, so that neither the harness's
    # polling nor the tasks' INCRs reach the server whose CPU is measured.
    counter_url: str | None = None
    redis: redis.Redis = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.url, socket_timeout=30)
        self.logdir.mkdir(parents=True, exist_ok=True)

    # -- processes ---------------------------------------------------------------------------------
    def client(self, system: System, op: str, timeout: float, label: str, **opts: Any) -> float:
        """Run one client op in its own process; returns its measured seconds."""
        return float(self.client_result(system, op, timeout, label, **opts)["seconds"])

    def client_result(self, system: System, op: str, timeout: float, label: str, **opts: Any) -> dict[str, Any]:
        """Run one client op in its own process; returns what it wrote (``seconds``, maybe ``sent``)."""
        try:
            return run_client("bench.client", system.name, op, env=self.env(system, self.url), logdir=self.logdir,
                              label=label, timeout=timeout, python=system.python, **opts)
        except ClientFailed as exc:
            raise StepError(f"{exc}: {self.tail(label)}") from None

    def env(self, system: System, url: str, **extra: str) -> dict[str, str]:
        """Child environment: the broker URL, and for an SQLite system its database file."""
        if system.broker == "sqlite":
            extra["BENCH_SQLITE_PATH"] = str(self.database(system))
        return bench_env(BENCH_REDIS_URL=url, **extra)

    def database(self, system: System) -> Path:
        if self.sqlite_dir is None:
            raise StepError("no folder for SQLite databases was given to the harness")
        return self.sqlite_dir / system.name / "bench.db"

    def workers(self, system: System, url: str, label: str, priority: bool = False,
                counter_url: str | None = None) -> ProcessTree:
        env = self.env(system, url, BENCH_COUNTER_URL=counter_url or self.url)
        argvs = system.priority_argvs(url) if priority else system.worker_argvs(url)
        return ProcessTree.spawn(argvs, env=env, cwd=str(REPO), log=self.logdir / f"{label}.log")

    def tail(self, label: str, lines: int = 3) -> str:
        path = self.logdir / f"{label}.log"
        text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(line.strip() for line in text[-lines:])[:400]

    def fresh(self, system: System) -> None:
        """An empty Redis; for an SQLite system, no database file (the next client or worker makes one)."""
        self.redis.flushall()
        if system.broker == "sqlite":
            folder = self.database(system).parent
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)

    def reset_counters(self) -> None:
        self.redis.delete(DONE_KEY, STAMPS_KEY, LOW_KEY)

    # -- one repetition ----------------------------------------------------------------------------
    def run(self, system: System, rep: int, errors: list[str]) -> Cells:
        cells: Cells = {}
        tag = f"{system.name}-r{rep}"
        # (workload, step, cells it fills, how)
        steps: list[tuple[str, str, tuple[str, ...], Callable[[System, Cells, str], None]]] = [
            ("processing", "processing", ("enqueue", "proc", "proc_steady", "rss", "pss"), self.processing),
            ("batch", "batch", ("batch",), self.batch),
            ("latency", "latency+eta", ("lat_p50", "lat_p99", "eta_p50", "eta_p99", "eta_min"), self.latency),
            ("priority", "priority", ("prio_p50", "prio_p99", "prio_sent"), self.priority),
            ("proxy", "proxy", ("proxy", "proxy_steady"), self.proxied),
            ("cost", "cost", COST_CELLS, self.cost),
        ]
        skip = {"batch": not system.has_batch, "priority": not system.has_priority,
                "proxy": self.proxy_url is None, "cost": self.counter_url is None}
        for workload, step, keys, fn in steps:
            if workload not in self.config.workloads or skip.get(workload) or workload in system.skips:
                continue
            label = f"{tag}-{step}"
            try:
                fn(system, cells, label)
            except Exception as exc:
                status = "timeout" if isinstance(exc, Timeout) else "error"
                for key in keys:
                    cells.setdefault(key, status)
                detail = self.tail(label + "-workers")
                errors.append(f"rep {rep} {step}: {status}: {exc}" + (f" [workers: {detail}]" if detail else ""))
            finally:
                self.fresh(system)
        return cells

    def processing(self, system: System, cells: Cells, label: str) -> None:
        n = self.config.n
        self.fresh(system)
        seconds = self.client(system, "enqueue", 30 + n / 100, label + "-enqueue", n=n)
        cells["enqueue"] = n / seconds
        start = time.monotonic()
        tree = self.workers(system, self.url, label + "-workers")
        try:
            self.rates(cells, "proc", n, start, tree)
            time.sleep(0.2)
            cells["rss"] = tree.rss_bytes() / 2**20
            pss = tree.pss_bytes()
            if pss is not None:
                cells["pss"] = pss / 2**20
        finally:
            tree.kill()

    def rates(self, cells: Cells, key: str, n: int, start: float, tree: ProcessTree) -> None:
        """Wait for ``n`` completions (or the cap); set the start-to-done and steady-state rates."""
        samples = wait_for_count(self.redis, n, stall=self.config.stall, cap=self.config.cap,
                                 alive=tree.alive, partial=True)
        end, done = samples[-1]
        cells[key] = done / (end - start)
        cells[key + "_steady"] = steady_rate(samples, done) or "n/a"
        if done < n:
            cells[key + "_done"] = done
        else:  # a task run twice would make the counter overshoot: report it, the rate would be flattered
            time.sleep(0.3)
            extra = int(self.redis.get(DONE_KEY) or 0) - n
            if extra > 0:
                cells[key + "_extra"] = extra

    def batch(self, system: System, cells: Cells, label: str) -> None:
        n = self.config.n
        self.fresh(system)
        seconds = self.client(system, "batch", 30 + n / 100, label, n=n, chunk=self.config.batch_chunk)
        cells["batch"] = n / seconds

    def latency(self, system: System, cells: Cells, label: str) -> None:
        cfg = self.config
        self.fresh(system)
        tree = self.workers(system, self.url, label + "-workers")
        try:
            self.client(system, "fill", 60, label + "-warmup", n=20)
            wait_for_count(self.redis, 20, stall=60, cap=90, alive=tree.alive)
            self.reset_counters()
            self.client(system, "latency", 60 + cfg.latency_count * cfg.latency_interval,
                        label + "-latency", count=cfg.latency_count, interval=cfg.latency_interval)
            wait_for_count(self.redis, cfg.latency_count, stall=cfg.stall, cap=120, alive=tree.alive)
            delays = stamp_delays_ms(self.redis)
            cells["lat_p50"], cells["lat_p99"] = percentile(delays, 50), percentile(delays, 99)
            self.reset_counters()
            self.client(system, "eta", 60, label + "-eta", count=cfg.eta_count, delay=cfg.eta_delay)
            wait_for_count(self.redis, cfg.eta_count, stall=cfg.stall + cfg.eta_delay, cap=120,
                           alive=tree.alive)
            delays = stamp_delays_ms(self.redis)
            cells["eta_p50"], cells["eta_p99"] = percentile(delays, 50), percentile(delays, 99)
            cells["eta_min"] = min(delays)
        finally:
            tree.kill()

    def priority(self, system: System, cells: Cells, label: str) -> None:
        """High-priority latency while the low queue is saturated: 2 worker processes (the priority app),
        prio_low 2 ms tasks on the low queue, then a high-priority stamp every prio_interval s."""
        cfg = self.config
        self.fresh(system)
        tree = self.workers(system, self.url, label + "-workers", priority=True)
        try:
            # warm-up: both tasks run at least once in the worker processes
            self.client_result(system, "priority", 60, label + "-warmup", n=20, count=10, interval=0.01,
                               margin=0)
            wait_for_count(self.redis, 10, stall=60, cap=90, alive=tree.alive)
            wait_for_count(self.redis, 20, stall=60, cap=90, alive=tree.alive, key=LOW_KEY)
            self.reset_counters()
            result = self.client_result(system, "priority", 120 + cfg.prio_count * cfg.prio_interval,
                                        label + "-client", n=cfg.prio_low, count=cfg.prio_count,
                                        interval=cfg.prio_interval, margin=cfg.prio_margin)
            sent = int(result["sent"])
            if sent == 0:
                raise StepError("the low queue drained before any high-priority task was sent")
            wait_for_count(self.redis, sent, stall=cfg.stall, cap=120, alive=tree.alive)
            delays = stamp_delays_ms(self.redis)
            cells["prio_p50"], cells["prio_p99"] = percentile(delays, 50), percentile(delays, 99)
            cells["prio_sent"] = sent
        finally:
            tree.kill()

    def proxied(self, system: System, cells: Cells, label: str) -> None:
        assert self.proxy_url is not None
        n = self.config.proxy_n
        self.fresh(system)
        self.client(system, "fill", 30 + n / 100, label + "-fill", n=n)
        start = time.monotonic()
        tree = self.workers(system, self.proxy_url, label + "-workers")
        try:
            self.rates(cells, "proxy", n, start, tree)
        finally:
            tree.kill()

    def cost(self, system: System, cells: Cells, label: str) -> None:
        """What N tasks cost the Redis server (``bench/cost.py``): N single enqueues with no worker running,
        then the worker command from its start until the last completion (its start-up included) and a
        short settle, so acknowledgements a worker sends after the task body are counted too."""
        assert self.counter_url is not None
        n = self.config.n
        counter = redis.Redis.from_url(self.counter_url, socket_timeout=30)
        self.fresh(system)
        counter.flushall()
        before = redis_cost.read(self.redis)
        self.client(system, "enqueue", 30 + n / 100, label + "-enqueue", n=n)
        queued = redis_cost.read(self.redis)
        tree = self.workers(system, self.url, label + "-workers", counter_url=self.counter_url)
        try:
            samples = wait_for_count(counter, n, stall=self.config.stall, cap=self.config.cap,
                                     alive=tree.alive, partial=True)
            time.sleep(COST_SETTLE)
            finished = redis_cost.read(self.redis)
        finally:
            tree.kill()
            counter.close()
        done = samples[-1][1]
        enq, proc = queued - before, finished - queued
        cells["cpu_enq"], cells["cmd_enq"] = enq.cpu_us_per(n), enq.commands_per(n)
        cells["cpu_proc"], cells["cmd_proc"] = proc.cpu_us_per(done), proc.commands_per(done)
        cells["cpu_total"] = cells["cpu_enq"] + cells["cpu_proc"]
        cells["cmd_total"] = cells["cmd_enq"] + cells["cmd_proc"]
        if done < n:
            cells["cost_done"] = done
        breakdown = {"enqueue": enq.breakdown(n), "processing": proc.breakdown(done)}
        (self.logdir / f"{label}-commands.json").write_text(json.dumps(breakdown, indent=1) + "\n")
