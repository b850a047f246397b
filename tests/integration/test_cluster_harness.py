"""The Redis Cluster harness itself (``cluster.py``), with redis-py's own ``RedisCluster``: no hexq code.

It also pins down what redis-py does that hexq's cluster support relies on, for the installed redis-py
(5.x locally, >= 6 in CI): the errors for a server that is not a cluster and for a cluster with slots
uncovered, the redirections a plain connection gets, and how long writes to a killed primary's slots fail.
The test marked ``slow`` runs only with HEXQ_TEST_SLOW=1.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from cluster import BUS_PORT_OFFSET, SLOTS, LocalRedisCluster, raw_command
from redis.cluster import RedisCluster
from redis_server import RedisServer, free_port

pytestmark = pytest.mark.integration
slow = pytest.mark.skipif(not os.environ.get("HEXQ_TEST_SLOW"), reason="slow: set HEXQ_TEST_SLOW=1 to run")
REDIS_PY_MAJOR = int(redis.__version__.split(".")[0])


def _cleanup(cluster: LocalRedisCluster, prefix: str) -> None:
    for server in cluster.primaries():
        with server.probe() as client:
            keys = list(client.scan_iter(match=f"*{prefix}*", count=1000))
            for key in keys:
                client.delete(key)


def test_the_cluster_is_built_as_asked(redis_cluster: LocalRedisCluster) -> None:
    nodes = redis_cluster.nodes()
    primaries = [n for n in nodes if n.role == "primary"]
    replicas = [n for n in nodes if n.role == "replica"]
    assert (len(primaries), len(replicas)) == (3, 3)
    assert len({n.node_id for n in nodes}) == 6 and all(len(n.node_id) == 40 for n in nodes)
    assert len({n.pid for n in nodes}) == 6 and None not in {n.pid for n in nodes}
    covered = sorted(s for n in primaries for first, last in n.slots for s in range(first, last + 1))
    assert covered == list(range(SLOTS))  # every slot once
    assert all(5400 < sum(last - first + 1 for first, last in n.slots) < 5500 for n in primaries)
    assert sorted(r.primary_port or 0 for r in replicas) == sorted(p.port for p in primaries)  # one each
    assert all(not r.slots for r in replicas)
    assert redis_cluster.url() == "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in redis_cluster.servers)
    assert redis_cluster.url("a=1").endswith("?a=1")
    for server in redis_cluster.servers:
        assert server.cluster_info()["cluster_state"] == "ok"
        assert server.cluster_info()["cluster_known_nodes"] == "6"
    assert redis_cluster.problems() == []


def test_keys_land_on_all_three_shards_where_node_for_key_says(redis_cluster: LocalRedisCluster) -> None:
    prefix = f"harness-{uuid.uuid4().hex[:8]}"
    client = redis_cluster.cluster_client()
    try:
        keys = [f"{prefix}-{i}" for i in range(300)]
        for key in keys:
            client.set(key, key)
        assert [client.get(key) for key in keys] == keys
        owners: Counter[int] = Counter()
        any_node = redis_cluster.servers[0].probe()
        for key in keys[:50]:  # redis-py's CRC16 is the server's
            assert raw_command(any_node, "CLUSTER", "KEYSLOT", key) == redis_cluster.slot_for_key(key)
        any_node.close()
        for key in keys:
            owner = redis_cluster.node_for_key(key)
            assert owner is redis_cluster.primary_for_slot(redis_cluster.slot_for_key(key))
            with owner.probe() as plain:
                assert plain.get(key) == key  # the owner serves it without redirection
            owners[owner.port] += 1
        assert sorted(owners) == sorted(s.port for s in redis_cluster.primaries())
        assert min(owners.values()) > 60
        # A {hash tag} keeps keys together: a multi-key command on one slot works.
        tagged = [f"{{{prefix}}}-{i}" for i in range(5)]
        client.mset({k: "t" for k in tagged})
        assert client.mget(tagged) == ["t"] * 5
        assert len({redis_cluster.node_for_key(k).port for k in tagged}) == 1
        # key_for() finds keys of a given node and slot.
        for server in redis_cluster.primaries():
            assert redis_cluster.node_for_key(redis_cluster.key_for(server, prefix)) is server
        assert redis_cluster.slot_for_key(redis_cluster.key_for(12345, prefix)) == 12345
    finally:
        client.set(prefix, "")  # something to delete even if the test failed early
        client.close()
        _cleanup(redis_cluster, prefix)


def _redirection(exc: redis.ResponseError) -> tuple[str, int, str, int]:
    """(kind, slot, host, port) of a MOVED/ASK reply, from whichever form redis-py gave it."""
    if isinstance(exc, redis.exceptions.AskError):  # redis-py >= 6 (MovedError is an AskError)
        kind = "MOVED" if isinstance(exc, redis.exceptions.MovedError) else "ASK"
        return kind, exc.slot_id, exc.host, exc.port
    kind, slot, address = str(exc).split()  # redis-py 5: a plain ResponseError "MOVED 866 127.0.0.1:7001"
    host, port = address.rsplit(":", 1)
    return kind, int(slot), host, int(port)


def test_a_plain_connection_to_the_wrong_node_is_redirected(redis_cluster: LocalRedisCluster) -> None:
    """MOVED from a primary that does not own the slot, and from the owner's replica; ASK while the slot
    is migrating and the key is not on the source. redis-py >= 6 raises MovedError / AskError with
    ``slot_id``, ``host``, ``port``; redis-py 5 a plain ResponseError whose text is the server's reply."""
    key = f"harness-{uuid.uuid4().hex[:8]}"
    slot = redis_cluster.slot_for_key(key)
    owner = redis_cluster.node_for_key(key)
    other = next(s for s in redis_cluster.primaries() if s is not owner)
    replica = redis_cluster.replicas_of(owner)[0]
    for wrong in (other, replica):
        with wrong.probe() as plain, pytest.raises(redis.ResponseError) as caught:
            plain.get(key)
        assert _redirection(caught.value) == ("MOVED", slot, "127.0.0.1", owner.port)
        if REDIS_PY_MAJOR >= 6:
            assert type(caught.value) is redis.exceptions.MovedError
        else:
            assert type(caught.value) is redis.ResponseError and str(caught.value).startswith("MOVED ")

    source, target = owner.probe(), other.probe()
    try:
        raw_command(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", owner.node_id)
        raw_command(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", other.node_id)
        with pytest.raises(redis.ResponseError) as caught:
            source.get(key)  # not on the source: go ASK the target
        assert _redirection(caught.value) == ("ASK", slot, "127.0.0.1", other.port)
        if REDIS_PY_MAJOR >= 6:
            assert type(caught.value) is redis.exceptions.AskError
    finally:
        for client in (source, target):
            raw_command(client, "CLUSTER", "SETSLOT", slot, "STABLE")
            client.close()
    assert redis_cluster.problems() == []


def _taken(port: int) -> socket.socket:
    """The port bound but not listening: what an outgoing connection given that local port looks like."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", port))
    return sock


def test_a_node_whose_bus_port_is_taken_before_it_starts_moves_to_free_ports(tmp_path: Path) -> None:
    """What failed a CI run: another process bound a node's bus port (port + 10000) between the harness
    choosing it and the node starting; the node aborted and every cluster test errored."""
    cluster = LocalRedisCluster(tmp_path, primaries=1, replicas=1)
    chosen = [s.port for s in cluster.servers]
    with _taken(chosen[0] + BUS_PORT_OFFSET), _taken(chosen[1]):
        try:
            cluster.start()
            moved = [s.port for s in cluster.servers]
            assert moved[0] != chosen[0] and moved[1] != chosen[1]
            assert cluster.problems() == []
        finally:
            cluster.stop()


def test_a_server_whose_port_is_taken_before_it_first_starts_moves(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "moved")
    chosen = server.port
    with _taken(chosen):
        try:
            server.start()
            assert server.port != chosen and server.client().ping()
        finally:
            server.stop()
    first = RedisServer(tmp_path / "first")
    first.start()
    try:  # two processes that drew the same port: the second must not take the first's server for its own
        second = RedisServer(tmp_path / "second")
        second.port = first.port
        second.start()
        try:
            assert second.port != first.port
            assert second.client().info("server")["process_id"] == second.pid
        finally:
            second.stop()
    finally:
        first.stop()
    pinned = RedisServer(tmp_path / "pinned", port=free_port())
    with _taken(pinned.port), pytest.raises(RuntimeError, match="Address already in use"):
        pinned.start()  # a port someone was told is never changed behind their back


def test_free_ports_are_drawn_below_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low - BUS_PORT_OFFSET < 11000:
        pytest.skip(f"this machine's ephemeral range starts at {low}: too low to draw below it")
    ports = [free_port(also_free_at=BUS_PORT_OFFSET) for _ in range(50)]
    assert all(p >= 10000 and p + BUS_PORT_OFFSET < low for p in ports)
    assert len(set(ports)) > 40  # drawn at random, not one port over and over


def test_redis_cluster_on_a_plain_server(private_redis: Callable[..., RedisServer]) -> None:
    """Not a cluster: RedisClusterException at construction (not a RedisError subclass), at once."""
    server = private_redis()
    makers: list[Callable[[], object]] = [
        lambda: RedisCluster(host="127.0.0.1", port=server.port),
        lambda: RedisCluster.from_url(server.url),
        lambda: RedisCluster(host="127.0.0.1", port=server.port, require_full_coverage=True)]
    for make in makers:
        started = time.monotonic()
        with pytest.raises(redis.exceptions.RedisClusterException) as caught:
            make()
        assert "Cluster mode is not enabled on this node" in str(caught.value)
        assert not isinstance(caught.value, redis.RedisError)
        assert time.monotonic() - started < 2
    print(f"\nredis-py {redis.__version__} on a plain server: {type(caught.value).__name__}: {caught.value}")


def test_redis_cluster_on_a_cluster_with_slots_uncovered(partial_redis_cluster: LocalRedisCluster) -> None:
    """Slots 10923-16383 served by no one. With require_full_coverage=True: RedisClusterException "All slots
    are not covered ..." at construction. With the default (False): redis-py >= 6 raises the same; redis-py 5
    builds the client, then an uncovered slot raises SlotNotCoveredError (a RedisClusterException) and a
    covered one ClusterDownError (a ResponseError: the servers answer CLUSTERDOWN, after redis-py's retries).
    A plain connection gets CLUSTERDOWN: ClusterDownError on redis-py >= 6, a plain ResponseError on 5."""
    cluster = partial_redis_cluster
    port = cluster.servers[0].port
    assert {s.cluster_info()["cluster_state"] for s in cluster.servers} == {"fail"}
    assert {s.cluster_info()["cluster_slots_assigned"] for s in cluster.servers} == {str(10923)}
    with pytest.raises(redis.exceptions.RedisClusterException, match="All slots are not covered") as caught:
        RedisCluster(host="127.0.0.1", port=port, require_full_coverage=True)
    assert "10923 of 16384 covered" in str(caught.value)
    report = [f"require_full_coverage=True: {type(caught.value).__name__}: {caught.value}"]

    uncovered_key, covered_key = cluster.key_for(16000), cluster.key_for(0)
    if REDIS_PY_MAJOR >= 6:
        with pytest.raises(redis.exceptions.RedisClusterException, match="All slots are not covered"):
            RedisCluster(host="127.0.0.1", port=port)
        report.append("default: the same at construction")
    else:
        client = RedisCluster(host="127.0.0.1", port=port)
        try:
            with pytest.raises(redis.exceptions.SlotNotCoveredError, match='Slot "16000" not covered') as slot_error:
                client.set(uncovered_key, "x")
            with pytest.raises(redis.exceptions.ClusterDownError) as down:
                client.set(covered_key, "x")
        finally:
            client.close()
        report.append(f"default: built; uncovered slot: {type(slot_error.value).__name__}: {slot_error.value}; "
                      f"covered slot: {type(down.value).__name__}: {down.value}")

    with cluster.servers[0].probe() as plain, pytest.raises(redis.ResponseError) as caught_plain:
        plain.set(covered_key, "x")
    assert "cluster is down" in str(caught_plain.value).lower()
    if REDIS_PY_MAJOR >= 6:
        assert isinstance(caught_plain.value, redis.exceptions.ClusterDownError)
    report.append(f"plain connection: {type(caught_plain.value).__name__}: {caught_plain.value}")
    print(f"\nredis-py {redis.__version__} on a cluster with slots uncovered: " + " | ".join(report))


def _write_until_ok(client: RedisCluster, key: str, timeout: float = 20.0) -> tuple[float, list[str]]:  # type: ignore[type-arg]
    """SET ``key`` until it succeeds; returns the seconds it took and the errors seen on the way."""
    started = time.monotonic()
    errors: list[str] = []
    while True:
        try:
            client.set(key, "after")
            return time.monotonic() - started, errors
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.05)


def test_sigkill_of_a_primary_promotes_its_replica(fresh_redis_cluster: LocalRedisCluster) -> None:
    """SIGKILL a primary: its replica takes its slots, keeps the data written (and replicated) before, takes
    writes again; the old primary restarted comes back as a replica of the new one."""
    cluster = fresh_redis_cluster
    client = cluster.cluster_client()
    try:
        victim = cluster.primaries()[1]
        replica = cluster.replicas_of(victim)[0]
        keys = [cluster.key_for(victim, f"before-{i}-") for i in range(20)]
        for key in keys:
            client.set(key, "before")
        with victim.probe() as plain:
            assert plain.wait(1, 5000) == 1  # on the replica too

        cluster.kill_primary(victim)
        assert victim.pid is None
        new, seconds = cluster.wait_for_failover(victim)
        print(f"\nfailover ({cluster.node_timeout_ms} ms node timeout): writes to the killed primary's slots "
              f"succeed again {seconds:.2f}s after the SIGKILL")
        assert new is replica
        assert seconds < 15
        assert {n.port: n.role for n in cluster.nodes()}[replica.port] == "primary"
        assert cluster.node_for_key(keys[0]) is replica

        waited, errors = _write_until_ok(client, keys[0])  # the same client follows the new layout
        print(f"the client already open wrote after {waited:.2f}s more, errors on the way: {Counter(errors)}")
        assert [client.get(key) for key in keys[1:]] == ["before"] * 19
        other_shard = next(s for s in cluster.primaries() if s is not replica)
        client.set(cluster.key_for(other_shard, "other-"), "x")

        started = time.monotonic()
        cluster.restart_node(victim)
        print(f"the old primary rejoined as a replica in {time.monotonic() - started:.2f}s")
        back = next(n for n in cluster.nodes() if n.port == victim.port)
        assert (back.role, back.primary_port) == ("replica", replica.port)
        assert cluster.problems() == []
    finally:
        client.close()


@pytest.mark.slow
@slow
def test_failover_time_seen_by_a_writer(fresh_redis_cluster: LocalRedisCluster) -> None:
    """A thread SETs a key of the victim's slots every 10 ms through one RedisCluster client while each of
    the three primaries in turn is SIGKILLed (and restarted afterwards): how long its writes fail, and how."""
    cluster = fresh_redis_cluster
    rounds: list[dict[str, Any]] = []
    for _ in range(3):
        victim = cluster.primaries()[0]
        key = cluster.key_for(victim, "writer-")
        client = cluster.cluster_client()
        stop = threading.Event()
        failures: list[tuple[float, str]] = []
        successes: list[float] = []

        def write(client: RedisCluster = client, key: str = key, stop: threading.Event = stop,  # type: ignore[type-arg]
                  failures: list[tuple[float, str]] = failures, successes: list[float] = successes) -> None:
            while not stop.is_set():
                try:
                    client.set(key, "x")
                    successes.append(time.monotonic())
                except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
                    failures.append((time.monotonic(), type(exc).__name__))
                time.sleep(0.01)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        time.sleep(0.3)
        cluster.kill_primary(victim)
        killed_at = victim.killed_at
        assert killed_at is not None
        failover = cluster.wait_for_failover(victim)
        time.sleep(0.5)
        stop.set()
        writer.join(10)
        client.close()
        resumed = next(t for t in successes if t > killed_at) - killed_at
        rounds.append({"failover": failover.seconds, "writes_resumed": resumed,
                       "errors": Counter(name for _, name in failures)})
        cluster.restart_node(victim)
    for number, result in enumerate(rounds, 1):
        print(f"\nround {number}: failover {result['failover']:.2f}s, the writer's SETs succeeded again after "
              f"{result['writes_resumed']:.2f}s; errors: {dict(result['errors'])}")
    print(f"median failover {statistics.median(r['failover'] for r in rounds):.2f}s "
          f"(redis-py {redis.__version__}, node timeout {cluster.node_timeout_ms} ms)")
    assert all(r["writes_resumed"] < 15 for r in rounds)
