"""``redis+cluster://`` and ``rediss+cluster://`` URLs: ``ClusterSettings`` and the parsing of the URL into a
``ClusterTarget`` (the startup nodes and the credentials).

Why it exists: redis-py's ``RedisCluster.from_url`` takes one host; hexq's cluster URL names several startup
nodes, so that the cluster is found while any one of them answers. The options every kind of URL takes
(timeouts, TLS files, durable enqueue) come from ``settings.ClientOptions``. Nothing here imports redis-py or
connects (``cluster.ClusterRouter`` does, on first use).
"""

from __future__ import annotations

import functools
from typing import Literal, cast
from urllib.parse import urlsplit

import attrs

from hexq.adapters.redis.settings import DURABLE_PARAMS, ClientOptions, _query, host_port, redacted_url, url_parts
from hexq.core.errors import ConfigError

ClusterScheme = Literal["redis+cluster", "rediss+cluster"]
CLUSTER_SCHEMES: tuple[ClusterScheme, ...] = ("redis+cluster", "rediss+cluster")
DEFAULT_CLUSTER_PORT = 6379
_FORM = "redis+cluster://[user:password@]host:port[,host:port...]"


@attrs.frozen
class ClusterTarget:
    """What a cluster URL names: nodes to ask for the cluster's layout (any one that answers will do)."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False


@functools.lru_cache(maxsize=64)
def parse_cluster_url(url: str) -> ClusterTarget:
    """Parse a cluster URL; raises ConfigError naming what is wrong, never showing the password."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        raise ConfigError(f"not a cluster URL: {redacted_url(url)!r} (expected {_FORM})")
    username, password, hosts = url_parts(parts.netloc)
    nodes = tuple(host_port(item.strip(), url, default_port=DEFAULT_CLUSTER_PORT, what="", form=_FORM)
                  for item in hosts.split(",") if item.strip())
    if not nodes:
        raise ConfigError(f"{redacted_url(url)!r} names no node: expected {_FORM}")
    if parts.path.strip("/") not in ("", "0"):
        raise ConfigError(f"{redacted_url(url)!r}: a Redis Cluster has only database 0; remove the path "
                          f"{parts.path!r}")
    unknown = sorted(set(_query(url)) - set(DURABLE_PARAMS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} in {redacted_url(url)!r}: a cluster "
                          f"URL accepts {', '.join(DURABLE_PARAMS)}; pass timeouts and TLS files to HexQ(...)")
    return ClusterTarget(nodes, username, password, tls=parts.scheme == "rediss+cluster")


@attrs.frozen(repr=False)
class ClusterSettings(ClientOptions):
    """A Redis Cluster (or Valkey cluster), with the same options as ``RedisSettings``.

    Grammar::

        redis+cluster://[user:password@]host[:port][,host[:port]...][?option=value&...]
        rediss+cluster://...        the same over TLS

    - hosts are startup nodes (port 6379 when omitted): any one that answers tells where every slot is, and
      hexq follows the cluster's own view from then on (failovers, slots that move);
    - ``user:password@`` are the nodes' credentials (ACL user or ``requirepass``);
    - options: ``wait_replicas`` and ``wait_timeout_ms`` (durable enqueue, as for ``redis://``: WAIT counts
      the replicas of the node that took the write); anything else is refused rather than silently ignored.
    """

    @classmethod
    def _check_url(cls, url: object) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in CLUSTER_SCHEMES:
            scheme = urlsplit(url).scheme if isinstance(url, str) else None
            raise ConfigError(f"unsupported cluster URL scheme {scheme!r}: use redis+cluster:// or "
                              "rediss+cluster://")
        parse_cluster_url(url)

    @property
    def scheme(self) -> ClusterScheme:
        return cast(ClusterScheme, urlsplit(self.url).scheme)  # checked by the url validator

    @property
    def target(self) -> ClusterTarget:
        return parse_cluster_url(self.url)
