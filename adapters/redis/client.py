"""Building redis-py clients for the broker; nothing here connects (redis-py connects on first use).

With Sentinel (``SentinelSettings``) both clients come from ``redis.sentinel.Sentinel.master_for``: every
connection they open, pooled or made with ``pool.make_connection()`` (the broker's per-thread connections,
``direct.py``), asks the sentinels for the primary's address when it connects, and a READONLY reply (a
demoted primary) closes that connection and raises ConnectionError, so the next attempt finds the new one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import redis
import redis.exceptions as rx
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.connection import AbstractConnection
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from hexq.adapters.redis.errors import ServiceNotMonitored
from hexq.adapters.redis.sentinel_settings import SentinelSettings
from hexq.adapters.redis.settings import RedisSettings

if TYPE_CHECKING:
    from typing import TypeAlias

    # types-redis makes Redis generic over the response type; redis-py's own annotations do not.
    RedisClient: TypeAlias = "redis.Redis[str]"  # type: ignore[type-arg]

# Seconds idle before redis-py PINGs a pooled connection before using it. Off on redis-py 5: its on_connect sends
# CLIENT SETINFO and SELECT with that check, whose PING, refused on a new connection (NOAUTH without a password,
# a TLS server that wants a client certificate), disconnects and connects again, recursing until RecursionError
# instead of raising the refusal. Version 6 checks no health while connecting. Without the PING, a connection
# that died idle still fails its first command, which retry_policy sends once more on a new one.
HEALTH_CHECK_INTERVAL = 25 if hasattr(AbstractConnection, "on_connect_check_health") else 0
# Connect and read timeout of each question to a sentinel: one that does not answer costs this much before the
# next is asked, on every new connection to the primary.
SENTINEL_TIMEOUT = 1.0


def retry_policy() -> Retry:
    # One quick retry replaces a pooled connection that died with a restarted server. Timeouts are not
    # retried: the command may have run, and the caller decides.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(redis.ConnectionError,))


def clients_for(settings: RedisSettings | SentinelSettings) -> tuple[RedisClient, RedisClient]:
    """A client for commands, and one for blocking waits. The blocking client's socket has no read timeout
    of its own on a single server (a BLPOP may wait longer than ``socket_timeout``): the broker bounds each
    of its waits itself (``RedisBroker``: the wait plus a margin)."""
    if isinstance(settings, SentinelSettings):
        return sentinel_clients(settings)
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "decode_responses": True,
        "retry": retry_policy(),
    }
    if settings.scheme == "rediss":
        options.update(ssl_ca_certs=settings.ssl_ca_certs, ssl_certfile=settings.ssl_certfile,
                       ssl_keyfile=settings.ssl_keyfile)
    client = redis.Redis.from_url(settings.client_url, socket_timeout=settings.socket_timeout, **options)
    blocking = redis.Redis.from_url(settings.client_url, socket_timeout=None, **options)
    return client, blocking


class HexqSentinel(Sentinel):
    """redis-py's Sentinel, with a precise error when no sentinel monitors the service at all (a typo in
    the URL) instead of the "no master found" that a failover in progress also gives."""

    def discover_master(self, service_name: str) -> tuple[str, int]:
        try:
            return cast("tuple[str, int]", super().discover_master(service_name))  # type: ignore[no-untyped-call]
        except MasterNotFoundError:
            self._explain(service_name)
            raise

    def _explain(self, service_name: str) -> None:
        """Replace redis-py's "no master found" (whose text holds a repr of every sentinel client) by a short
        reason: ServiceNotMonitored when some sentinel answered and none monitors ``service_name``; the
        sentinels' refusal of our credentials when that is all they said; else which of them answered."""
        known: set[str] = set()
        answered = False
        refused: rx.RedisError | None = None
        unreachable: list[str] = []
        for sentinel in self.sentinels:
            address = "{host}:{port}".format_map(sentinel.connection_pool.connection_kwargs)
            try:
                masters: dict[str, Any] = sentinel.sentinel_masters()  # type: ignore[no-untyped-call,assignment]
            except (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError) as exc:
                refused = exc
                continue
            except (rx.ConnectionError, rx.TimeoutError) as exc:
                unreachable.append(f"{address} ({type(exc).__name__})")
                continue
            answered = True
            if service_name in masters:
                raise MasterNotFoundError(
                    f"the sentinels that answered see no primary of {service_name!r} up: a failover is under way, "
                    "or no replica can be promoted") from None
            known.update(masters)
        if answered:
            raise ServiceNotMonitored(service_name, sorted(known)) from None
        if refused is not None:
            raise refused
        raise MasterNotFoundError(f"no sentinel answered: {', '.join(unreachable)}") from None


def sentinel_for(settings: SentinelSettings) -> HexqSentinel:
    """The Sentinel manager: which sentinels to ask, with their own credentials and short timeouts."""
    target = settings.target
    sentinel_options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT,
        "socket_connect_timeout": SENTINEL_TIMEOUT,
        "decode_responses": True,
        # No retries: the next sentinel is asked instead (redis-py's default would retry each one thrice).
        "retry": Retry(NoBackoff(), 0),
        "username": target.sentinel_username,
        "password": target.sentinel_password,
    }
    if target.tls:
        sentinel_options.update(ssl=True, **_tls_files(settings))
    return HexqSentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]


def _tls_files(settings: SentinelSettings) -> dict[str, Any]:
    return {"ssl_ca_certs": settings.ssl_ca_certs, "ssl_certfile": settings.ssl_certfile,
            "ssl_keyfile": settings.ssl_keyfile}


def sentinel_clients(settings: SentinelSettings) -> tuple[RedisClient, RedisClient]:
    """Clients of the primary the sentinels name, re-resolved on every new connection. The blocking client
    keeps ``socket_timeout`` as a backstop (a dead primary may never answer); its waits are bounded per
    call by the broker, which may wait longer than that."""
    target = settings.target
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "decode_responses": True,
        "retry": retry_policy(),
        "db": target.db,
        "username": target.username,
        "password": target.password,
    }
    if target.tls:
        options.update(ssl=True, **_tls_files(settings))
    manager = sentinel_for(settings)
    client = manager.master_for(  # type: ignore[no-untyped-call]
        target.service, socket_timeout=settings.socket_timeout, **options)
    blocking = manager.master_for(  # type: ignore[no-untyped-call]
        target.service, socket_timeout=settings.socket_timeout, **options)
    return cast("RedisClient", client), cast("RedisClient", blocking)  # type: ignore[redundant-cast]


def _twin_pool(pool: Any, **changes: Any) -> Any:
    """A new pool to the same place as ``pool`` with some connection options changed. For a Sentinel pool,
    another Sentinel pool on the same service and sentinels, so the twin follows failovers too."""
    kwargs = dict(pool.connection_kwargs, **changes)
    if isinstance(pool, SentinelConnectionPool):
        kwargs.pop("connection_pool", None)  # the proxy back to the original pool: the twin makes its own
        return SentinelConnectionPool(  # type: ignore[no-untyped-call]
            pool.service_name, pool.sentinel_manager, connection_class=pool.connection_class,
            is_master=pool.is_master, check_connection=pool.check_connection, **kwargs)
    return redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)


def blocking_twin(client: RedisClient) -> RedisClient:
    """A client on the same server and options as ``client`` whose reads never time out."""
    pool = client.connection_pool
    changes: dict[str, Any] = {"socket_timeout": None}
    if "orig_socket_timeout" in pool.connection_kwargs:  # redis-py >= 6 restores this after maintenance events
        changes["orig_socket_timeout"] = None
    return cast("RedisClient", redis.Redis(connection_pool=_twin_pool(pool, **changes)))  # type: ignore[redundant-cast]


def bytes_twin(client: RedisClient) -> RedisClient:
    """A client like ``client`` that returns replies as bytes, for data that may not be UTF-8."""
    pool = client.connection_pool
    return cast("RedisClient", redis.Redis(  # type: ignore[redundant-cast]
        connection_pool=_twin_pool(pool, decode_responses=False)))


def describe(client: RedisClient) -> str:
    """A URL for messages, built without the password."""
    pool = client.connection_pool
    kwargs = pool.connection_kwargs
    if isinstance(pool, SentinelConnectionPool):
        hosts = _hosts(pool.sentinel_manager.sentinels)
        return f"redis+sentinel://{hosts}/{pool.service_name}/{kwargs.get('db', 0)}"
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _hosts(sentinels: Sequence[Any]) -> str:
    return ",".join("{host}:{port}".format_map(s.connection_pool.connection_kwargs) for s in sentinels)
