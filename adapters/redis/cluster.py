"""Redis Cluster: connections pinned to the node that owns a partition's hash slot, following the cluster.

Every key of one partition shares a hash tag (``partitions.py``), so a partition lives wholly on one node and
the Redis adapter can talk to that node as to a single server: the same scripts, the per-thread connections
of ``direct.py`` and the pipelined BLPOP + reserve all work unchanged, on a connection that is *pinned* to
the node owning the slot. What makes the pin follow the cluster:

- ``ClusterRouter`` knows the cluster's layout, through ``redis.cluster.RedisCluster``'s view of the slots
  (built on first use, from any startup node that answers, and refreshed when it is suspected stale);
- ``ClusterSlotConnection`` asks the router where its slot lives every time it connects, as a Sentinel
  connection asks the sentinels where the primary is;
- a MOVED or ASK reply (the slot moved: a failover, or resharding) marks the router stale and closes the
  connection before its next command (the rest of a pipeline's replies are read first), so the next
  connection goes where the cluster now says; a connection
  that fails to connect or breaks marks it stale too (a dead primary, before or during its failover).

A MOVED write was refused, not run, so ``direct.DirectCommand`` sends it again once on a new connection;
everywhere else the error reaches the caller as ``BrokerUnavailableError`` and workers retry, as for any
outage. During resharding (ASK), a partition's keys are split between two nodes for a moment: its scripts
fail until the move ends, and are retried.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
import redis.exceptions as rx
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection, SSLConnection

from hexq.adapters.redis.cluster_settings import ClusterSettings
from hexq.adapters.redis.errors import is_redirect
from hexq.adapters.redis.partitions import slot_of_tag

# A stale view is refreshed at most this often (seconds): during a failover every connection attempt fails,
# and each would otherwise ask the cluster again.
MIN_REFRESH_INTERVAL = 0.25


class ClusterRouter:
    """Where each slot's primary is, as the cluster says. One per broker (per process: a forked child builds
    its own broker, so no connection or lock crosses a fork). Thread-safe."""

    def __init__(self, settings: ClusterSettings) -> None:
        self._settings = settings
        self._cluster: RedisCluster | None = None
        self._lock = threading.Lock()
        self._stale = False
        self._refreshed_at = 0.0

    def primary_for(self, tag: str) -> tuple[str, int]:
        """The address of the primary that owns ``{tag}``'s slot; raises RedisError if no node answers or
        the cluster does not cover that slot."""
        with self._lock:
            cluster = self._view()
            node = cluster.nodes_manager.get_node_from_slot(slot_of_tag(tag))
            return str(node.host), int(node.port)

    def suspect(self) -> None:
        """Something failed on a pinned connection: ask the cluster again before the next connection."""
        self._stale = True

    def _view(self) -> RedisCluster:
        if self._cluster is None:
            self._cluster = self._connect()
            self._refreshed_at, self._stale = time.monotonic(), False
        elif self._stale and time.monotonic() - self._refreshed_at >= MIN_REFRESH_INTERVAL:
            self._refreshed_at = time.monotonic()
            # Raises while no node answers, and the view stays stale.
            self._cluster.nodes_manager.initialize()  # type: ignore[no-untyped-call,unused-ignore]
            self._stale = False
        return self._cluster

    def _connect(self) -> RedisCluster:
        settings, target = self._settings, self._settings.target
        options: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            "username": target.username,
            "password": target.password,
            "decode_responses": True,
            "require_full_coverage": True,  # a slot nobody serves is an error to report, not to discover later
        }
        if target.tls:
            options.update(ssl=True, ssl_ca_certs=settings.ssl_ca_certs, ssl_certfile=settings.ssl_certfile,
                           ssl_keyfile=settings.ssl_keyfile)
        nodes = [ClusterNode(host, port) for host, port in target.nodes]  # type: ignore[no-untyped-call,unused-ignore]
        cluster: RedisCluster = RedisCluster(startup_nodes=nodes, **options)
        return cluster

    def close(self) -> None:
        with self._lock:
            if self._cluster is not None:
                self._cluster.close()
                self._cluster = None


class _Pinned:
    """Mixed into redis-py's connection classes: where to connect comes from the router, for one tag."""

    host: str
    port: int
    _router: ClusterRouter
    _tag: str
    _rerouted: bool

    def _pinned_init(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        self._router = kwargs.pop("router")
        self._tag = kwargs.pop("tag")
        self._rerouted = False
        return kwargs

    def _connect(self) -> Any:
        # _connect is where every redis-py version (4 to 8) opens the socket from self.host/self.port, on
        # every path that connects (the pool, send_command on a closed connection, retries).
        try:
            self.host, self.port = self._router.primary_for(self._tag)
            return super()._connect()  # type: ignore[misc]
        except (rx.ConnectionError, rx.TimeoutError, OSError):
            self._router.suspect()
            raise

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except rx.ResponseError as exc:
            if is_redirect(exc):
                # This node no longer serves the slot. The other replies of a pipeline still come from it, so
                # the connection is closed before its next command, not now (a closed connection fails the
                # next read with an error redis-py does not even translate).
                self._router.suspect()
                self._rerouted = True
            raise
        except (rx.ConnectionError, rx.TimeoutError):
            self._router.suspect()
            raise

    def send_packed_command(self, command: Any, *args: Any, **kwargs: Any) -> None:
        # Every command goes through here (send_command packs, then sends), pooled or direct: a connection
        # that was told MOVED or ASK reconnects, and connecting asks the router where the slot is now.
        if self._rerouted:
            self._rerouted = False
            self.disconnect()  # type: ignore[attr-defined]
        super().send_packed_command(command, *args, **kwargs)  # type: ignore[misc]


class ClusterSlotConnection(_Pinned, Connection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._pinned_init(kwargs))  # type: ignore[no-untyped-call,unused-ignore]


class ClusterSlotSSLConnection(_Pinned, SSLConnection):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**self._pinned_init(kwargs))  # type: ignore[no-untyped-call,unused-ignore]


def pinned_client(settings: ClusterSettings, router: ClusterRouter, tag: str, *, blocking: bool) -> redis.Redis:
    """A client whose every connection goes to the primary of ``{tag}``'s slot. ``blocking``: no read timeout
    of its own (the broker bounds each wait itself), as for a single server."""
    from hexq.adapters.redis.client import HEALTH_CHECK_INTERVAL, retry_policy

    target = settings.target
    options: dict[str, Any] = {
        "router": router,
        "tag": tag,
        "host": target.nodes[0][0],  # replaced by the router's answer before every connect
        "port": target.nodes[0][1],
        "username": target.username,
        "password": target.password,
        "socket_timeout": None if blocking else settings.socket_timeout,
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "decode_responses": True,
        "retry": retry_policy(),
    }
    connection_class: type[Connection] = ClusterSlotConnection
    if target.tls:
        connection_class = ClusterSlotSSLConnection
        options.update(ssl_ca_certs=settings.ssl_ca_certs, ssl_certfile=settings.ssl_certfile,
                       ssl_keyfile=settings.ssl_keyfile)
    return redis.Redis(connection_pool=redis.ConnectionPool(connection_class=connection_class, **options))
