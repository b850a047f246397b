"""The chaos suite: thousands of tasks through real ``hexq worker`` processes while their children are
SIGKILLed, a whole worker dies, Redis crashes and restarts, and the network to Redis is cut.

Run: ``python -m tests.chaos.chaos`` (10,000 tasks, a few minutes), ``--quick`` (1,000 tasks, under two
minutes; what ``tests/chaos/test_chaos_short.py`` runs in CI), ``--tasks N``, ``--json PATH``, ``--seed S``,
``--broker sqlite`` (default ``redis``).

With ``--broker sqlite`` the broker is an SQLite file in the work directory (one per scenario), which the
workers and the producer open directly: children are SIGKILLed and a whole worker dies as with Redis, and
the poison and SIGTERM scenarios run the same, but there is no server to crash and no network to cut, so
those two steps (and their verdicts) are left out. The bookkeeping is a Redis server in both cases.

Set-up, all on 127.0.0.1: a broker redis-server (``--appendonly yes --appendfsync everysec``) behind a TCP
proxy the suite controls (``tests/chaos/proxy.py``); two workers (concurrency 2 each, lease_timeout 2 s)
connect through the proxy. A second redis-server, never disturbed, holds the bookkeeping: each run of a
task records its start and end there (see ``tests/chaos/app.py``). The producer (this process) talks to
the broker directly, and re-checks what it sent after the Redis crash (AOF ``everysec`` may lose the last
second of writes, which would silently drop enqueued tasks: those are counted apart and sent again).

Then two scenarios without chaos: a poison task that SIGKILLs its own child every time must be
dead-lettered after ``max_deliveries``; on SIGTERM a worker must hand back the tasks it reserved but had not
started, at once (not when a lease expires).

The summary counts lost tasks (must be 0), duplicate runs by cause, the time from each SIGKILL to the next
start of the task the killed process was running, CPU used by the workers while Redis was unreachable,
and long tasks run twice although no process running them was killed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import psutil
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from hexq.adapters.system.clock import SystemClock  # noqa: E402
from hexq.adapters.system.entropy import PROCESS  # noqa: E402
from hexq.core.errors import HexqError  # noqa: E402
from hexq.core.outgoing import TaskIds  # noqa: E402
from tests.chaos.proxy import ProxyProcess  # noqa: E402
from tests.integration.broker_state import BROKER_KINDS, BrokerState, broker_state, sqlite_url  # noqa: E402
from tests.integration.redis_server import free_port, server_binary  # noqa: E402

new_task_id = TaskIds(SystemClock(), PROCESS.node).new  # ids for the tasks this run writes by hand

HOST = "127.0.0.1"
APP = "tests.chaos.app:app"
QUEUE = "default"


# -- processes ---------------------------------------------------------------------------------------
class RedisServer:
    """A redis-server in its own process group; ``crash()`` SIGKILLs it, ``start()`` again restarts it on
    the same port and directory (so its AOF is loaded)."""

    def __init__(self, directory: Path, args: list[str]) -> None:
        self.directory = directory
        self.port = free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=timeout,
                                    socket_connect_timeout=timeout)

    def start(self, timeout: float = 30.0) -> None:
        binary = server_binary().path  # as the integration tests choose it; NoServerError says how to get one
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--dir", str(self.directory),
             "--logfile", "redis.log", "--daemonize", "no", *self.args],
            cwd=self.directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        probe = self.client(1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    if probe.ping():
                        return
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.directory}")
                time.sleep(0.02)
        finally:
            probe.close()

    def crash(self) -> None:
        """SIGKILL: no shutdown, no final AOF flush: what survives is what was already written."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, signum: int) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


class Worker:
    """One ``hexq worker`` process (and its forked children), in its own process group."""

    def __init__(self, name: str, env: dict[str, str], log: Path, concurrency: int = 2) -> None:
        self.name = name
        self.log = log
        self.handle = subprocess.Popen(
            [sys.executable, "-m", "hexq.entrypoints.cli", "worker", f"--app={APP}",
             f"--concurrency={concurrency}"],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.handle.pid

    def alive(self) -> bool:
        return self.handle.poll() is None

    def children(self) -> list[psutil.Process]:
        """The worker's children: the processes its fork server (its one direct child) forked."""
        try:
            return [c for server in psutil.Process(self.pid).children() for c in server.children()
                    if c.status() != psutil.STATUS_ZOMBIE]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float:
        """CPU used so far by the parent, its reaped children and its live children."""
        total = 0.0
        try:
            parent = psutil.Process(self.pid)
            times = parent.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
            for child in parent.children(recursive=True):  # the fork server and the children it forked
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    total += ct.user + ct.system
        except psutil.Error:
            pass
        return total

    def kill_group(self) -> list[int]:
        """SIGKILL the parent and every child at once; returns the pids killed."""
        try:
            pids = [self.pid, *(c.pid for c in psutil.Process(self.pid).children(recursive=True))]
        except psutil.Error:
            pids = [self.pid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.handle.wait(10)
        self.killed_at = time.time()
        return pids

    def terminate(self) -> None:
        if self.alive():
            os.kill(self.pid, signal.SIGTERM)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_lines(self) -> int:
        return self.output().count("\n")


@contextlib.contextmanager
def cleanup_on_signals() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks stop every process we started."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, HexqError):
            if condition():
                return True
        time.sleep(step)
    return False


def percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"count": len(ordered), "p50": at(0.5), "p99": at(0.99), "max": round(ordered[-1], 3)}


# -- the plan ----------------------------------------------------------------------------------------
@attrs.frozen
class Plan:
    tasks: int = 10_000
    produce_seconds: float = 30.0  # enqueueing is spread over this long
    long_every: int = 200  # one task in this many is long
    long_ms: tuple[float, float] = (3000.0, 6000.0)
    short_ms: tuple[float, float] = (1.0, 5.0)
    kill_interval: float = 0.5  # a random worker child is SIGKILLed this often...
    long_kill_every: int = 8  # ...sparing children running a long task, except on every 8th kill
    chaos_until: float = 40.0  # no more child kills after this
    worker_kill_at: float = 8.0
    worker_down: float = 1.0
    redis_crash_at: float = 16.0
    redis_down: float = 2.0
    outage_at: float = 26.0
    outage_seconds: float = 4.0
    lease: float = 2.0
    completion_timeout: float = 240.0  # after chaos_until
    workers: int = 2
    concurrency: int = 2

    @classmethod
    def quick(cls, tasks: int = 1000) -> Plan:
        return cls(tasks=tasks, produce_seconds=8.0, long_every=100, chaos_until=16.0, worker_kill_at=3.0,
                   redis_crash_at=6.0, redis_down=1.5, outage_at=10.0, outage_seconds=3.0,
                   completion_timeout=60.0)


@attrs.define
class Run:
    n: int
    pid: int
    start: float
    end: float | None = None


class Chaos:
    def __init__(self, plan: Plan, workdir: Path, seed: int = 1, log: Callable[[str], None] = print,
                 broker: str = "redis") -> None:
        if broker not in BROKER_KINDS:
            raise ValueError(f"broker must be one of {BROKER_KINDS}, got {broker!r}")
        self.plan = plan
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.say = log
        self.prefix = f"chaos{seed}"
        self.broker = broker
        # Redis: a server the run crashes, behind a proxy it cuts. SQLite: files of this host, opened directly.
        self.broker_server = (RedisServer(workdir / "broker", ["--appendonly", "yes", "--appendfsync", "everysec"])
                              if broker == "redis" else None)
        self.book_server = RedisServer(workdir / "book", ["--appendonly", "no"])
        if broker == "sqlite":
            for prefix in (self.prefix, f"{self.prefix}-poison", f"{self.prefix}-sigterm"):
                (workdir / "sqlite" / prefix).mkdir(parents=True, exist_ok=True)
        self._inspectors: dict[str, Any] = {}
        self.proxy: ProxyProcess | None = None
        self.workers: list[Worker] = []
        self.all_workers: list[Worker] = []
        self.t0 = 0.0
        self.events: list[dict[str, Any]] = []
        self.kills: list[dict[str, Any]] = []  # {t, pid, kind, running}
        self.sent: dict[int, dict[str, Any]] = {}  # n -> {id, ms, t}
        self.reenqueued: dict[int, str] = {}  # n -> why
        self.enqueue_errors = 0
        self.kill_skips = 0
        self.send_lock = threading.Lock()
        self.stop_chaos = threading.Event()
        self.stop_all = threading.Event()
        self.outage: dict[str, Any] = {}
        self.redis_restart: dict[str, Any] = {}
        self.canary_ms = 0.0
        self.errors: list[str] = []
        self._producer_app: Any = None

    # -- environment ---------------------------------------------------------------------------------
    def env(self, url: str, prefix: str | None = None, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(CHAOS_URL=url, CHAOS_BOOK_URL=self.book_server.url, CHAOS_PREFIX=prefix or self.prefix,
                   CHAOS_LEASE=str(self.plan.lease), CHAOS_CONCURRENCY=str(self.plan.concurrency),
                   PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        env.update(extra)
        return env

    def now(self) -> float:
        return time.time() - self.t0

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": round(self.now(), 3), "kind": kind, **fields}
        self.events.append(record)
        self.say(f"[{record['t']:7.2f}s] {kind} {json.dumps(fields) if fields else ''}")

    def book(self) -> redis.Redis:
        return self.book_server.client(10)

    def bkey(self, name: str, prefix: str | None = None) -> str:
        return f"{prefix or self.prefix}:{name}"

    def hkey(self, name: str, prefix: str | None = None) -> str:
        return "{" + (prefix or self.prefix) + "}:" + name

    # -- the broker ------------------------------------------------------------------------------------
    def direct_url(self, prefix: str | None = None) -> str:
        """The broker as the producer sees it: Redis itself (never the proxy), or the prefix's SQLite file
        (the poison and SIGTERM scenarios each get a database of their own, as they get a prefix on Redis)."""
        if self.broker_server is not None:
            return self.broker_server.url
        return sqlite_url(self.workdir / "sqlite" / (prefix or self.prefix))

    def worker_url(self) -> str:
        """The broker as the chaos run's workers see it: through the proxy (Redis), or the file (SQLite)."""
        return self.proxy_url() if self.broker == "redis" else self.direct_url()

    def inspect(self, prefix: str | None = None) -> Any:
        """A hexq broker of this process on ``prefix`` (hexq's own reads: workers, dead letters, counts)."""
        prefix = prefix or self.prefix
        if prefix not in self._inspectors:
            from hexq import HexQ

            self._inspectors[prefix] = HexQ(url=self.direct_url(prefix), prefix=prefix, queues=[QUEUE],
                                            socket_timeout=5, socket_connect_timeout=2).broker
        return self._inspectors[prefix]

    def state(self, prefix: str | None = None) -> BrokerState:
        """Raw reads of what the broker stores, for what hexq's Inspection port does not show (whether a
        payload is stored, the order of a queue and of a reserved batch). Close it after use."""
        return broker_state(self.direct_url(prefix), prefix or self.prefix)

    def start_worker(self, name: str, url: str, prefix: str | None = None, concurrency: int | None = None,
                     **extra: str) -> Worker:
        worker = Worker(name, self.env(url, prefix, **extra), self.workdir / f"{name}.log",
                        concurrency or self.plan.concurrency)
        self.all_workers.append(worker)
        broker = self.inspect(prefix)

        def registered() -> bool:
            return any(json.loads(beat.info or "{}").get("pid") == worker.pid for beat in broker.workers())

        if not wait_until(registered, 30):
            raise RuntimeError(f"worker {name} did not start:\n{worker.output()[-3000:]}")
        return worker

    # -- producing -----------------------------------------------------------------------------------
    def producer_app(self) -> Any:
        if self._producer_app is None:
            from hexq import HexQ

            self._producer_app = HexQ(url=self.direct_url(), prefix=self.prefix, queues=[QUEUE],
                                      socket_timeout=5, socket_connect_timeout=2)
        return self._producer_app

    def outgoing(self, n: int, ms: float, task_id: str | None = None) -> Any:
        from hexq.core.ports import OutgoingTask

        app = self.producer_app()
        task_id = task_id or new_task_id()
        payload = app.codec.encode_fields(task_id, "work", QUEUE, (n, ms), {}, 0, time.time())
        return OutgoingTask(task_id, QUEUE, payload)

    def task_ms(self, n: int) -> float:
        if n % self.plan.long_every == self.plan.long_every // 2:
            return round(self.rng.uniform(*self.plan.long_ms), 1)
        return round(self.rng.uniform(*self.plan.short_ms), 2)

    def send(self, tasks: list[Any], ms: dict[int, float], reason: str | None = None) -> None:
        """Enqueue until stored. After an error the batch may or may not be stored: check each task (is its
        payload stored, or has it already run?) before sending it again, so nothing runs twice for this."""
        app = self.producer_app()
        pending = list(tasks)
        deadline = time.monotonic() + 60
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError("could not enqueue for 60 s")
            try:
                with self.send_lock:
                    app.broker.enqueue(pending)
                    for task in pending:
                        n = self.n_of(task)
                        self.sent[n] = {"id": task.id, "ms": ms[n], "t": time.time()}
                        if reason:
                            self.reenqueued[n] = reason
                return
            except HexqError:
                self.enqueue_errors += 1
                time.sleep(0.1)
                with contextlib.suppress(redis.RedisError, sqlite3.Error):
                    pending = self.not_stored(pending, ms)

    def not_stored(self, tasks: list[Any], ms: dict[int, float]) -> list[Any]:
        state = self.state()
        try:
            stored = state.stored_many([task.id for task in tasks])
        finally:
            state.close()
        book = self.book()
        done = book.smismember(self.bkey("done"), [str(self.n_of(t)) for t in tasks])
        book.close()
        left = []
        for task, is_stored, is_done in zip(tasks, stored, done, strict=True):
            if is_stored or is_done:
                n = self.n_of(task)
                self.sent[n] = {"id": task.id, "ms": ms[n], "t": time.time()}
            else:
                left.append(task)
        return left

    @staticmethod
    def n_of(task: Any) -> int:
        return int(json.loads(task.payload)["args"][0])

    def produce(self) -> None:
        plan = self.plan
        batch = max(1, plan.tasks // max(1, int(plan.produce_seconds / 0.05)))
        n = 0
        started = time.monotonic()
        while n < plan.tasks and not self.stop_all.is_set():
            numbers = range(n, min(plan.tasks, n + batch))
            ms = {i: self.task_ms(i) for i in numbers}
            self.send([self.outgoing(i, ms[i]) for i in numbers], ms)
            n = numbers.stop
            due = started + plan.produce_seconds * n / plan.tasks
            time.sleep(max(0.0, due - time.monotonic()))
        self.event("produced", tasks=len(self.sent), enqueue_errors=self.enqueue_errors)

    def recheck_after_crash(self, crashed_at: float) -> list[int]:
        """The producer's check after a Redis crash: every task sent before it that has neither run nor a
        stored payload was lost with the writes the AOF had not persisted. Send those again."""
        with self.send_lock:
            candidates = [(n, s) for n, s in self.sent.items() if s["t"] <= crashed_at]
        state = self.state()
        # First: a task acknowledged before this read has its run recorded already.
        stored = state.stored_many([s["id"] for _, s in candidates])
        state.close()
        book = self.book()
        done = book.smismember(self.bkey("done"), [str(n) for n, _ in candidates]) if candidates else []
        book.close()
        lost = [n for (n, _), st, dn in zip(candidates, stored, done, strict=True) if not st and not dn]
        if lost:
            ms = {n: self.sent[n]["ms"] for n in lost}
            self.send([self.outgoing(n, ms[n], self.sent[n]["id"]) for n in lost], ms, "lost in the Redis crash")
        return lost

    # -- chaos ---------------------------------------------------------------------------------------
    def running_now(self) -> dict[int, tuple[int, str]]:
        with contextlib.suppress(redis.RedisError):
            book = self.book()
            raw = book.hgetall(self.bkey("running"))
            book.close()
            out = {}
            for pid, value in raw.items():
                n, kind, _ = value.split("|")
                out[int(pid)] = (int(n), kind)
            return out
        return {}

    def kill_children(self) -> None:
        plan = self.plan
        tick = 0
        next_at = time.monotonic() + plan.kill_interval
        while not self.stop_chaos.is_set():
            time.sleep(max(0.0, next_at - time.monotonic()))
            next_at += plan.kill_interval
            if self.stop_chaos.is_set():
                return
            tick += 1
            children = [c.pid for w in list(self.workers) if w.alive() for c in w.children()]
            if not children:
                continue
            running = self.running_now()
            longs = [pid for pid in children if running.get(pid, (0, ""))[1] == "long"]
            if tick % plan.long_kill_every == 0 and longs:
                victim = self.rng.choice(longs)
            else:
                spared = [pid for pid in children if pid not in longs]
                if not spared:
                    self.kill_skips += 1  # every child runs a long task: spare them this time
                    continue
                victim = self.rng.choice(spared)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
                self.kills.append({"t": time.time(), "pid": victim, "kind": "child",
                                   "running": running.get(victim)})

    def canary(self) -> None:
        """Writes the time to the broker Redis every 10 ms: after the crash, the value that survived says
        how much of the last writes the AOF lost."""
        assert self.broker_server is not None
        client = self.broker_server.client(0.5)
        while not self.stop_all.is_set():
            with contextlib.suppress(redis.RedisError):
                client.set(self.hkey("chaos-canary"), f"{time.time():.3f}")
            time.sleep(0.01)
        client.close()

    def schedule(self) -> None:
        plan = self.plan
        steps: list[tuple[float, Callable[[], None]]] = [(plan.worker_kill_at, self.kill_a_worker)]
        if self.broker == "redis":  # SQLite has no server to crash and no network to cut
            steps += [(plan.redis_crash_at, self.crash_redis), (plan.outage_at, self.cut_network)]
        steps.sort(key=lambda s: s[0])
        for at, step in steps:
            wait = at - self.now()
            if wait > 0 and self.stop_all.wait(wait):
                return
            try:
                step()
            except Exception as exc:  # reported, and the run goes on to count what happened
                self.errors.append(f"{step.__name__}: {type(exc).__name__}: {exc}")
                self.event("chaos step failed", step=step.__name__, error=str(exc))

    def kill_a_worker(self) -> None:
        victim = self.workers[0]
        running = self.running_now()
        pids = victim.kill_group()
        now = time.time()
        for pid in pids:
            self.kills.append({"t": now, "pid": pid, "kind": "worker", "running": running.get(pid)})
        self.event("worker killed (killpg SIGKILL)", worker=victim.name, pids=pids)
        time.sleep(self.plan.worker_down)
        replacement = self.start_worker(f"{victim.name}-restarted", self.worker_url())
        self.workers[0] = replacement
        self.event("worker restarted", worker=replacement.name, pid=replacement.pid)

    def crash_redis(self) -> None:
        assert self.broker_server is not None
        crashed = time.time()
        self.broker_server.crash()
        self.event("redis-server SIGKILLed")
        time.sleep(self.plan.redis_down)
        self.broker_server.start()
        up = time.time()
        client = self.broker_server.client()
        canary = float(client.get(self.hkey("chaos-canary")) or 0)
        client.close()
        self.canary_ms = canary
        lost = self.recheck_after_crash(crashed)
        self.redis_restart = {"crashed": crashed, "up": up, "last_persisted": canary,
                              "writes_lost_seconds": round(max(0.0, crashed - canary), 3),
                              "enqueued_tasks_lost": len(lost)}
        self.event("redis-server restarted from its AOF", down_s=round(up - crashed, 2),
                   lost_write_window_s=self.redis_restart["writes_lost_seconds"], enqueued_tasks_lost=len(lost))

    def cut_network(self) -> None:
        assert self.proxy is not None
        workers = [w for w in self.workers if w.alive()]
        lines0 = {w.name: w.log_lines() for w in workers}
        cpu0 = {w.name: w.cpu_seconds() for w in workers}
        kills0 = len(self.kills)
        cut = time.time()
        stats = self.proxy.cut()
        self.event("proxy cut: connections reset, new ones refused", reset=stats.get("reset"))
        parents_alive = dict.fromkeys(lines0, True)
        while time.time() < cut + self.plan.outage_seconds:
            time.sleep(min(0.25, max(0.0, cut + self.plan.outage_seconds - time.time())))
            for w in workers:
                parents_alive[w.name] = parents_alive[w.name] and w.alive()
        cpu1 = {w.name: w.cpu_seconds() for w in workers}
        lines1 = {w.name: w.log_lines() for w in workers}
        resumed_at = time.time()
        self.proxy.resume()
        # Parents must stay up; children come and go (killed, and replaced after a crash-loop backoff).
        alive = parents_alive
        window = resumed_at - cut
        cpu = {name: round(cpu1[name] - cpu0[name], 3) for name in cpu0}
        self.outage = {"cut": cut, "resumed": resumed_at, "seconds": round(window, 2), "cpu_seconds": cpu,
                       "cpu_share": round(sum(cpu.values()) / window, 3),
                       "log_lines": {name: lines1[name] - lines0[name] for name in lines0},
                       "workers_alive": alive, "children_killed_during": len(self.kills) - kills0}
        self.event("proxy resumed", cpu_seconds=cpu, workers_alive=alive)

    def proxy_url(self) -> str:
        assert self.proxy is not None
        return self.proxy.url

    # -- the run -------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        plan = self.plan
        self.book_server.start()
        if self.broker_server is not None:
            self.broker_server.start()
            self.proxy = ProxyProcess(self.broker_server.port, self.workdir / "proxy.log").start()
        threads: list[threading.Thread] = []
        try:
            self.t0 = time.time()
            for i in range(plan.workers):
                self.workers.append(self.start_worker(f"worker{i}", self.worker_url()))
            self.event("workers started", broker=self.direct_url(), pids=[w.pid for w in self.workers])
            targets = [self.produce, self.kill_children, self.schedule]
            if self.broker == "redis":
                targets.append(self.canary)
            for target in targets:
                thread = threading.Thread(target=target, name=target.__name__, daemon=True)
                thread.start()
                threads.append(thread)
            book = self.book()
            done_key = self.bkey("done")
            self.stop_chaos.wait(max(0.0, plan.chaos_until - self.now()))
            self.stop_chaos.set()
            self.event("child kills stopped", kills=len([k for k in self.kills if k["kind"] == "child"]))
            threads[0].join(plan.completion_timeout)  # produce
            threads[2].join(plan.completion_timeout)  # schedule
            completed = wait_until(lambda: book.scard(done_key) >= plan.tasks, plan.completion_timeout, 0.2)
            self.event("all tasks done" if completed else "gave up waiting", done=book.scard(done_key))
            time.sleep(0.5)  # let the last acknowledgements land
            # A child killed repeatedly soon after its start is replaced after a backoff (up to 30 s).
            alive_at_end = {w.name: w.alive() and wait_until(lambda w=w: len(w.children()) == plan.concurrency, 40)
                            for w in self.workers}
            report_backoffs = sum(w.output().count("starting it again in") for w in self.all_workers)
            report = self.analyse(alive_at_end)
            report["broker"] = self.broker
            report["respawns_delayed_by_crash_loop_backoff"] = report_backoffs
            report["shutdown"] = self.stop_workers(self.workers)
            report["leftover_keys"] = self.leftover_keys(self.prefix)
            report["poison"] = self.poison_scenario()
            report["sigterm"] = self.sigterm_scenario()
            report["errors"] = self.errors
            report["logs"] = str(self.workdir)
            return report
        finally:
            self.stop_chaos.set()
            self.stop_all.set()
            for thread in threads:
                thread.join(5)
            self.close()

    def close(self) -> None:
        for worker in self.all_workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.handle.wait(10)
        for broker in self._inspectors.values():
            with contextlib.suppress(Exception):
                broker.close()
        if self.proxy is not None:
            self.proxy.stop()
        if self.broker_server is not None:
            self.broker_server.stop()
        self.book_server.stop()

    def stop_workers(self, workers: list[Worker]) -> dict[str, Any]:
        for worker in workers:
            worker.terminate()
        codes = {}
        for worker in workers:
            try:
                codes[worker.name] = worker.handle.wait(30)
            except subprocess.TimeoutExpired:
                codes[worker.name] = None
        return {"exit_codes": codes}

    def leftover_keys(self, prefix: str) -> dict[str, Any]:
        """What the run left in the broker: Redis keys (or SQLite tables) -> size."""
        state = self.state(prefix)
        try:
            found = state.leftovers()
        finally:
            state.close()
        found.pop("chaos-canary", None)
        return found

    # -- analysis ------------------------------------------------------------------------------------
    def runs(self, prefix: str | None = None) -> dict[int, list[Run]]:
        book = self.book()
        starts = book.lrange(self.bkey("starts", prefix), 0, -1)
        ends = book.lrange(self.bkey("ends", prefix), 0, -1)
        book.close()
        end_times: dict[tuple[int, int], list[float]] = defaultdict(list)
        for raw in ends:
            n, pid, t = raw.split("|")
            end_times[(int(n), int(pid))].append(float(t))
        by_task: dict[int, list[Run]] = defaultdict(list)
        for raw in starts:
            n, pid, t = raw.split("|")
            by_task[int(n)].append(Run(int(n), int(pid), float(t)))
        for n, runs in by_task.items():
            runs.sort(key=lambda r: r.start)
            for run in runs:
                candidates = end_times.get((n, run.pid), [])
                after = [t for t in candidates if t >= run.start]
                if after:
                    run.end = min(after)
                    candidates.remove(run.end)
        return by_task

    def cause(self, run: Run, rerun: Run, killed: dict[int, dict[str, Any]]) -> str:
        kill = killed.get(run.pid)
        if kill is not None and kill["t"] >= run.start and kill["t"] <= rerun.start:
            if run.end is None or run.end > kill["t"]:
                return f"{kill['kind']} killed while running it"
            return f"{kill['kind']} killed after it finished, before the ack was sent"
        if run.n in self.reenqueued:
            return "re-enqueued after the Redis crash lost it"
        window_end = run.end if run.end is not None else rerun.start
        r = self.redis_restart
        if r and run.start <= r["up"] and window_end >= r["last_persisted"]:
            if r["last_persisted"] <= window_end <= r["crashed"] or r["last_persisted"] <= run.start <= r["crashed"]:
                return "its reservation or ack was in the writes the Redis crash lost"
            return "lease expired while Redis was down (process alive)"
        o = self.outage
        if o and run.start <= o["resumed"] and window_end >= o["cut"]:
            return "lease expired during the network cut (process alive)"
        return "other (unexplained)"

    def analyse(self, alive_at_end: dict[str, bool]) -> dict[str, Any]:
        plan = self.plan
        book = self.book()
        done = {int(n) for n in book.smembers(self.bkey("done"))}
        book.close()
        dead = [attrs.asdict(d) for d in self.inspect().dead_letters(limit=1_000_000)]
        by_task = self.runs()
        killed = {k["pid"]: k for k in self.kills}
        lost = sorted(set(self.sent) - done)
        never_sent = plan.tasks - len(self.sent)
        causes: dict[str, int] = defaultdict(int)
        long_causes: dict[str, int] = defaultdict(int)
        long_twice: list[dict[str, Any]] = []
        long_reruns: list[dict[str, Any]] = []
        for n, runs in by_task.items():
            is_long = self.sent.get(n, {}).get("ms", 0) >= 1000
            for run, rerun in itertools.pairwise(runs):
                why = self.cause(run, rerun, killed)
                causes[why] += 1
                if is_long:
                    long_causes[why] += 1
                    kill = killed.get(run.pid)
                    long_reruns.append({"n": n, "cause": why, "pid": run.pid, **{
                        name: None if t is None else round(t - self.t0, 3) for name, t in (
                            ("start", run.start), ("end", run.end), ("killed", kill["t"] if kill else None),
                            ("rerun", rerun.start))}})
                    if "killed" not in why:
                        long_twice.append({"n": n, "cause": why, "runs": [
                            {"pid": r.pid, "start": round(r.start - self.t0, 3),
                             "end": None if r.end is None else round(r.end - self.t0, 3)} for r in runs]})
        recovery: dict[str, list[float]] = defaultdict(list)
        unrecovered: list[int] = []
        completed_elsewhere: list[int] = []
        for kill in self.kills:
            for runs in by_task.values():
                for run, rerun in zip(runs, [*runs[1:], None], strict=True):
                    ran_at_kill = run.start <= kill["t"] and (run.end is None or run.end > kill["t"])
                    if run.pid != kill["pid"] or not ran_at_kill:
                        continue
                    if rerun is None:
                        # Fine if another run of the task (a duplicate) completed it: nothing to restart.
                        if any(r.end is not None and r.end >= run.start for r in runs):
                            completed_elsewhere.append(run.n)
                        else:
                            unrecovered.append(run.n)
                    else:
                        recovery[kill["kind"]].append(rerun.start - kill["t"])
        total_runs = sum(len(r) for r in by_task.values())
        duplicates = total_runs - len(by_task)
        by_kill = sum(v for k, v in causes.items() if "killed" in k)
        longs = [n for n, s in self.sent.items() if s["ms"] >= 1000]
        report: dict[str, Any] = {
            "plan": attrs.asdict(plan),
            "tasks": plan.tasks,
            "sent": len(self.sent),
            "never_sent": never_sent,
            "completed": len(done & set(self.sent)),
            "lost": len(lost),
            "lost_ids": lost[:50],
            "dead_letters": len(dead),
            "dead_letter_reasons": sorted({d["reason"] for d in dead}),
            "runs": total_runs,
            "duplicate_runs": duplicates,
            "duplicates_by_kill": by_kill,
            "duplicates_other": duplicates - by_kill,
            "duplicate_causes": dict(causes),
            "long_tasks": len(longs),
            "long_tasks_completed": len(set(longs) & done),
            "long_duplicate_causes": dict(long_causes),
            "long_tasks_run_twice_without_kill": long_twice,
            "long_reruns": long_reruns,
            "kills": {"child": sum(1 for k in self.kills if k["kind"] == "child"),
                      "worker_processes": sum(1 for k in self.kills if k["kind"] == "worker")},
            "recovery_seconds": {kind: percentiles(values) for kind, values in recovery.items()},
            "killed_runs_never_restarted": unrecovered,
            "killed_runs_completed_by_a_concurrent_run": completed_elsewhere,
            "kill_ticks_skipped": self.kill_skips,
            "redis_restart": {k: v for k, v in self.redis_restart.items() if k in
                              ("writes_lost_seconds", "enqueued_tasks_lost")} | {
                "down_seconds": round(self.redis_restart.get("up", 0) - self.redis_restart.get("crashed", 0), 2)},
            "enqueue_errors_retried": self.enqueue_errors,
            "outage": {k: v for k, v in self.outage.items() if k not in ("cut", "resumed")},
            "first_start_after": self.first_starts(by_task),
            "workers_alive_at_end": alive_at_end,
            "wall_seconds": round(self.now(), 1),
            "events": self.events,
        }
        return report

    def first_starts(self, by_task: dict[int, list[Run]]) -> dict[str, float | None]:
        starts = sorted(r.start for runs in by_task.values() for r in runs)

        def after(t: float | None) -> float | None:
            if t is None:
                return None
            later = [s for s in starts if s > t]
            return round(later[0] - t, 3) if later else None

        return {"redis_restart_s": after(self.redis_restart.get("up")),
                "network_resume_s": after(self.outage.get("resumed"))}

    # -- scenarios without chaos -----------------------------------------------------------------------
    def poison_scenario(self, max_deliveries: int = 3) -> dict[str, Any]:
        """A task that SIGKILLs its own child every time is dead-lettered after max_deliveries runs."""
        from hexq.core.ports import OutgoingTask

        prefix = f"{self.prefix}-poison"
        app = self.producer_app()
        poison_id = new_task_id()
        tasks = [OutgoingTask(poison_id, QUEUE, app.codec.encode_fields(poison_id, "poison", QUEUE, (0,), {}))]
        for n in range(1, 6):
            tid = new_task_id()
            tasks.append(OutgoingTask(tid, QUEUE, app.codec.encode_fields(tid, "work", QUEUE, (n, 1.0), {})))
        broker = self.inspect(prefix)
        broker.enqueue(tasks)
        started = time.monotonic()
        worker = self.start_worker("poison-worker", self.direct_url(prefix), prefix, concurrency=1,
                                   CHAOS_MAX_DELIVERIES=str(max_deliveries), CHAOS_LEASE="10")
        try:
            book = self.book()
            finished = wait_until(lambda: broker.dead_count() >= 1 and book.scard(self.bkey("done", prefix)) >= 5,
                                  30)
            seconds = time.monotonic() - started
            time.sleep(1.0)  # a looping poison task would start again meanwhile
            runs = int(book.hget(self.bkey("runs", prefix), "0") or 0)
            dead = broker.dead_letters(limit=1000)
            (stats,) = broker.queue_stats([QUEUE])
            result = {
                "max_deliveries": max_deliveries,
                "dead_lettered": finished and [d.id for d in dead] == [poison_id],
                "runs": runs,
                "reason": dead[0].reason if dead else None,
                "other_tasks_done": book.scard(self.bkey("done", prefix)),
                "queue_left": stats.pending,
                "worker_alive": worker.alive() and len(worker.children()) == 1,
                "seconds": round(seconds, 2),
            }
            book.close()
        finally:
            self.stop_workers([worker])
        self.event("poison scenario", **result)
        return result

    def sigterm_scenario(self) -> dict[str, Any]:
        """SIGTERM while a child has reserved a batch and runs its first task: the rest of the batch is in
        the queue (at its head, in order) as soon as the worker has exited; the lease (30 s) never expires."""
        from hexq.core.ports import OutgoingTask

        prefix = f"{self.prefix}-sigterm"
        app = self.producer_app()
        broker = self.inspect(prefix)
        state = self.state(prefix)

        def settled() -> bool:
            (stats,) = broker.queue_stats([QUEUE])
            return bool(stats.pending == 0 and stats.in_flight == 0)

        def quick(count: int) -> list[Any]:
            out = []
            for _ in range(count):
                tid = new_task_id()
                out.append(OutgoingTask(tid, QUEUE, app.codec.encode_fields(tid, "quick", QUEUE, (), {})))
            return out

        worker = self.start_worker("sigterm-worker", self.direct_url(prefix), prefix, concurrency=1,
                                   CHAOS_LEASE="30")
        result: dict[str, Any] = {}
        try:
            broker.enqueue(quick(300))  # warm up: the child learns that tasks take microseconds
            wait_until(settled, 20)
            time.sleep(0.3)
            blocker_id = new_task_id()
            blocker = OutgoingTask(blocker_id, QUEUE,
                                   app.codec.encode_fields(blocker_id, "work", QUEUE, (0, 1500.0), {}))
            rest = quick(200)
            broker.enqueue([blocker, *rest])
            book = self.book()
            wait_until(lambda: book.hexists(self.bkey("running", prefix), str(worker.children()[0].pid)), 10, 0.01)
            reserved = next(iter(state.owned().values()), [])  # the one child's batch, in reservation order
            signalled = time.monotonic()
            worker.terminate()
            code = worker.handle.wait(30)
            exited = time.monotonic()
            queued = state.queued_ids(QUEUE)
            held = reserved[1:]
            result = {
                "reserved_when_signalled": len(reserved),
                "blocker_first": reserved[:1] == [blocker_id],
                "exit_code": code,
                "exit_seconds_after_sigterm": round(exited - signalled, 2),
                "blocker_completed": book.sismember(self.bkey("done", prefix), "0"),
                "queue_len_at_exit": len(queued),
                "expected_queue_len": len(rest),
                "released_at_head_in_order": queued[:len(held)] == held,
                "in_flight_at_exit": len(broker.in_flight()),
                "owned_lists_at_exit": len(state.owned()),
            }
            book.close()
        finally:
            self.stop_workers([worker])
            state.close()
        self.event("sigterm scenario", **result)
        return result


# -- the summary -------------------------------------------------------------------------------------
def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    outage = report.get("outage") or {}
    poison = report["poison"]
    sigterm = report["sigterm"]
    network: dict[str, bool] = {}
    if report.get("broker", "redis") == "redis":  # SQLite: no network to cut
        network = {
            "workers survived the network cut": bool(outage.get("workers_alive"))
            and all(outage["workers_alive"].values()),
            "no busy spin during the cut (CPU < 25% of one core)": outage.get("cpu_share", 1.0) < 0.25,
        }
    return {
        "no task lost": report["lost"] == 0 and report["never_sent"] == 0 and report["dead_letters"] == 0,
        "workers alive at the end": bool(report["workers_alive_at_end"])
        and all(report["workers_alive_at_end"].values()),
        **network,
        "no long task ran twice without a kill": not report["long_tasks_run_twice_without_kill"],
        "every killed run started again": not report["killed_runs_never_restarted"],
        "clean shutdown (exit 0)": all(c == 0 for c in report["shutdown"]["exit_codes"].values()),
        "poison task dead-lettered after max_deliveries": bool(poison["dead_lettered"])
        and poison["runs"] == poison["max_deliveries"] and poison["worker_alive"],
        "SIGTERM hands back reserved tasks at once": sigterm.get("exit_code") == 0
        and sigterm.get("reserved_when_signalled", 0) > 1
        and sigterm.get("queue_len_at_exit") == sigterm.get("expected_queue_len")
        and bool(sigterm.get("released_at_head_in_order")) and sigterm.get("in_flight_at_exit") == 0,
    }


def summary(report: dict[str, Any]) -> str:
    rec = report["recovery_seconds"]
    outage = report.get("outage") or {}
    redis_broker = report.get("broker", "redis") == "redis"
    lines = [
        "",
        f"=== hexq chaos run ({report.get('broker', 'redis')} broker) ===",
        f"tasks {report['tasks']}: sent {report['sent']}, completed {report['completed']}, "
        f"LOST {report['lost']}, dead letters {report['dead_letters']} {report['dead_letter_reasons'] or ''}",
        f"runs {report['runs']}: duplicate runs {report['duplicate_runs']} "
        f"(by a kill of the process running them: {report['duplicates_by_kill']}, other: {report['duplicates_other']})",
    ]
    for cause, count in sorted(report["duplicate_causes"].items(), key=lambda kv: -kv[1]):
        lines.append(f"    {count:6d}  {cause}")
    lines += [
        f"kills: {report['kills']['child']} worker children ({report['kill_ticks_skipped']} ticks skipped: every "
        f"child ran a long task), {report['kills']['worker_processes']} processes of a whole worker; killed runs "
        f"not restarted because a concurrent run completed the task: "
        f"{len(report['killed_runs_completed_by_a_concurrent_run'])}",
        "recovery, SIGKILL -> next start of the task it was running (s): "
        + ", ".join(f"{kind}: {v}" for kind, v in rec.items()),
        f"long tasks: {report['long_tasks']} (completed {report['long_tasks_completed']}); re-runs by cause: "
        f"{report['long_duplicate_causes'] or 'none'}; run twice without a kill: "
        f"{len(report['long_tasks_run_twice_without_kill'])}",
    ]
    if redis_broker:
        lines += [
            f"redis crash (SIGKILL, AOF everysec): down {report['redis_restart'].get('down_seconds')} s, writes "
            f"lost {report['redis_restart'].get('writes_lost_seconds')} s, enqueued tasks lost and re-sent "
            f"{report['redis_restart'].get('enqueued_tasks_lost')}; producer enqueue errors retried "
            f"{report['enqueue_errors_retried']}",
            f"network cut {outage.get('seconds')} s: worker CPU {outage.get('cpu_seconds')} s "
            f"({100 * outage.get('cpu_share', 0):.1f}% of one core), log lines {outage.get('log_lines')}, "
            f"alive {outage.get('workers_alive')}, children killed meanwhile {outage.get('children_killed_during')}",
        ]
    else:
        lines.append(f"no broker crash or network cut (SQLite); producer enqueue errors retried "
                     f"{report['enqueue_errors_retried']}")
    lines += [
        f"first task start after: {report['first_start_after']}; child respawns delayed by the crash-loop "
        f"backoff: {report.get('respawns_delayed_by_crash_loop_backoff')}",
        f"shutdown: {report['shutdown']}; keys left: {report['leftover_keys']}",
        f"poison: {report['poison']}",
        f"sigterm: {report['sigterm']}",
    ]
    if report["long_tasks_run_twice_without_kill"]:
        lines.append("long tasks run twice without a kill (first 5):")
        lines += [f"    {json.dumps(x)}" for x in report["long_tasks_run_twice_without_kill"][:5]]
    if report["errors"]:
        lines.append(f"errors: {report['errors']}")
    lines.append("verdicts:")
    lines += [f"    {'PASS' if ok else 'FAIL'}  {name}" for name, ok in report["verdicts"].items()]
    lines.append(f"wall time {report['wall_seconds']} s; logs in {report['logs']}")
    return "\n".join(lines)


def run(plan: Plan, workdir: Path | None = None, seed: int = 1, log: Callable[[str], None] = print,
        broker: str = "redis") -> dict[str, Any]:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="hexq-chaos-"))
    with cleanup_on_signals():
        report = Chaos(plan, workdir, seed, log, broker).run()
    report["verdicts"] = verdicts(report)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 tasks and a shorter chaos (CI)")
    parser.add_argument("--tasks", type=int, help="number of tasks (default 10000, or 1000 with --quick)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="where to write the report (default: in the log directory)")
    parser.add_argument("--workdir", type=Path, help="logs and Redis data (default: a new temp directory)")
    parser.add_argument("--broker", choices=BROKER_KINDS, default="redis",
                        help="the broker under test (default redis; sqlite: no Redis crash or network cut)")
    args = parser.parse_args(argv)
    plan = Plan.quick() if args.quick else Plan()
    if args.tasks:
        plan = attrs.evolve(plan, tasks=args.tasks)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hexq-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = run(plan, workdir, args.seed, broker=args.broker)
    print(summary(report))
    path = args.json or workdir / "chaos.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"report: {path}")
    return 0 if all(report["verdicts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
