"""Building the Redis adapter for a connection: one broker, or one per partition, on a server or a cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.client import clients_for
from hexq.adapters.redis.cluster import ClusterRouter, pinned_client
from hexq.adapters.redis.cluster_settings import ClusterSettings
from hexq.adapters.redis.partitioned import PartitionedBroker
from hexq.adapters.redis.partitions import partition_tags

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.sentinel_settings import SentinelSettings
    from hexq.adapters.redis.settings import RedisSettings
    from hexq.core.rules import LeaseRules


def open_broker(connection: RedisSettings | SentinelSettings | ClusterSettings, prefix: str, *, rules: LeaseRules,
                partitions: int = 1, home: int = 0, covers_all: bool = True) -> RedisBroker | PartitionedBroker:
    """One ``RedisBroker`` for one partition on one server (today's layout), else a ``PartitionedBroker``
    over one per partition. On a cluster each partition's clients are pinned to the node that owns its slot
    (``cluster.py``), even with one partition. ``home`` and ``covers_all`` say where a worker child blocks
    when idle (``partitioned.py``). Nothing connects here."""
    tags = partition_tags(prefix, partitions)

    def part(client: RedisClient, blocking: RedisClient, tag: str) -> RedisBroker:
        return RedisBroker(client, prefix, rules=rules, blocking_client=blocking, where=connection.redacted,
                           wait_replicas=connection.wait_replicas, wait_timeout_ms=connection.wait_timeout_ms,
                           tag=tag)

    if not isinstance(connection, ClusterSettings):
        if partitions == 1:
            return RedisBroker.from_connection(connection, prefix, rules=rules)
        client, blocking = clients_for(connection)  # one server: every partition on the same connections
        return PartitionedBroker([part(client, blocking, tag) for tag in tags], home=home, covers_all=covers_all)
    router = ClusterRouter(connection)
    parts = [part(pinned_client(connection, router, tag, blocking=False),
                  pinned_client(connection, router, tag, blocking=True), tag) for tag in tags]
    return PartitionedBroker(parts, home=home, covers_all=covers_all, router=router)
