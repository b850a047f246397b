"""Which broker HexQ's connection keywords name: a Redis server (the adapter's ``RedisSettings``), a primary
found through Redis Sentinel (``SentinelSettings``, for ``redis+sentinel://`` and ``rediss+sentinel://``), a
Redis Cluster (``ClusterSettings``, for ``redis+cluster://`` and ``rediss+cluster://``), an
SQLite file (``SqliteSettings``) or, for ``memory://``, this process (``InProcess``)."""

from __future__ import annotations

from typing import Any, Literal, TypeAlias
from urllib.parse import urlsplit

import attrs

from hexq.adapters.redis.cluster_settings import CLUSTER_SCHEMES, ClusterSettings
from hexq.adapters.redis.sentinel_settings import SentinelSettings
from hexq.adapters.redis.settings import (
    REDIS_SCHEMES,
    SCHEMES_HINT,
    SENTINEL_SCHEMES,
    RedisSettings,
    redacted_url,
    redis_url,
)
from hexq.adapters.sqlite.settings import SQLITE_SCHEME, SqliteSettings
from hexq.core.errors import ConfigError

MEMORY_SCHEME = "memory"

# The old name of the Redis settings, kept for code that builds them directly (``Connection(url, ...)``).
Connection = RedisSettings


@attrs.frozen
class InProcess:
    """The ``memory://`` mode: a broker in this process, tasks run by ``.delay()`` itself."""

    url: str = "memory://"

    @property
    def scheme(self) -> Literal["memory"]:
        return "memory"

    @property
    def redacted(self) -> str:
        return redacted_url(self.url)


# ``scheme`` tells them apart, for mypy too: ``if c.scheme == "memory"`` narrows to InProcess.
BrokerConnection: TypeAlias = RedisSettings | SentinelSettings | ClusterSettings | SqliteSettings | InProcess


def build_connection(url: str | None, host: str, port: int, db: int, username: str | None, password: str | None,
                     **options: Any) -> BrokerConnection:
    """HexQ's connection keywords as a value; ``options`` are RedisSettings' timeouts and TLS files (ignored
    by ``memory://``, which has no socket). ``username=``/``password=`` with a ``redis+sentinel://`` URL are
    the data nodes' credentials, as in the URL."""
    try:
        urlsplit(url or "")
    except ValueError as exc:  # an unbalanced "[" of an IPv6 address; the URL is not shown: it may hold a password
        raise ConfigError(f"malformed broker URL: {exc}") from None
    if url is not None and urlsplit(url).scheme == SQLITE_SCHEME:
        # A file on this host; a relative path is made absolute now, once, before any fork or chdir.
        if username is not None or password is not None:
            raise ConfigError("username=/password= are for a Redis server; an sqlite: URL names a file, which "
                              "the file system's permissions protect")
        return SqliteSettings.from_url(url)
    full = redis_url(url, host, port, db, username, password)
    scheme = urlsplit(full).scheme
    if scheme == MEMORY_SCHEME:
        return InProcess(full)
    if scheme in SENTINEL_SCHEMES:
        return SentinelSettings(full, **options)
    if scheme in CLUSTER_SCHEMES:
        return ClusterSettings(full, **options)
    # RedisSettings checks this too; checked first here so the message can offer the other brokers.
    if scheme not in REDIS_SCHEMES:
        raise ConfigError(f"unsupported broker URL scheme {scheme!r}: use {SCHEMES_HINT}, "
                          "sqlite:///absolute/path.db (a file on this host) or memory://")
    return RedisSettings(full, **options)


def partition_count(value: object, scheme: str) -> int:
    """How many hash tags one app's Redis keys are spread over (``adapters/redis/partitions.py``)."""
    from hexq.adapters.redis.partitions import MAX_PARTITIONS
    from hexq.core.validation import whole_number

    count = whole_number(value, "partitions", 1, MAX_PARTITIONS)
    if count > 1 and scheme in (MEMORY_SCHEME, SQLITE_SCHEME):
        raise ConfigError(f"partitions={count} spreads an app over the nodes of a Redis Cluster; a {scheme}: broker "
                          "has one store, so leave partitions at 1")
    return count
