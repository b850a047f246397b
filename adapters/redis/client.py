"""Building redis-py clients for the broker; nothing here connects (redis-py connects on first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from hexq.adapters.redis.settings import RedisSettings

if TYPE_CHECKING:
    from typing import TypeAlias

    # types-redis makes Redis generic over the response type; redis-py's own annotations do not.
    RedisClient: TypeAlias = "redis.Redis[str]"  # type: ignore[type-arg]

HEALTH_CHECK_INTERVAL = 25  # seconds idle before redis-py PINGs a pooled connection before using it


def _retry() -> Retry:
    # One quick retry replaces a pooled connection that died with a restarted server. Timeouts are not
    # retried: the command may have run, and the caller decides.
    return Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(redis.ConnectionError,))


def clients_for(settings: RedisSettings) -> tuple[RedisClient, RedisClient]:
    """A client for commands, and one for blocking waits whose reads never time out (a BLPOP may wait
    longer than ``socket_timeout``; TCP keepalive, on by default, still notices a dead peer)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": settings.socket_connect_timeout,
        "health_check_interval": HEALTH_CHECK_INTERVAL,
        "decode_responses": True,
        "retry": _retry(),
    }
    if settings.scheme == "rediss":
        options.update(ssl_ca_certs=settings.ssl_ca_certs, ssl_certfile=settings.ssl_certfile,
                       ssl_keyfile=settings.ssl_keyfile)
    client = redis.Redis.from_url(settings.url, socket_timeout=settings.socket_timeout, **options)
    blocking = redis.Redis.from_url(settings.url, socket_timeout=None, **options)
    return client, blocking


def blocking_twin(client: RedisClient) -> RedisClient:
    """A client on the same server and options as ``client`` whose reads never time out."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["socket_timeout"] = None
    if "orig_socket_timeout" in kwargs:  # redis-py >= 6 restores this after maintenance events
        kwargs["orig_socket_timeout"] = None
    twin_pool = redis.ConnectionPool(connection_class=pool.connection_class, **kwargs)
    return cast("RedisClient", redis.Redis(connection_pool=twin_pool))  # type: ignore[redundant-cast]


def bytes_twin(client: RedisClient) -> RedisClient:
    """A client like ``client`` that returns replies as bytes, for data that may not be UTF-8."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs, decode_responses=False)
    return cast("RedisClient", redis.Redis(connection_pool=redis.ConnectionPool(  # type: ignore[redundant-cast]
        connection_class=pool.connection_class, **kwargs)))


def describe(client: RedisClient) -> str:
    """A URL for messages, built without the password."""
    kwargs = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
