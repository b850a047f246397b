"""Redis exceptions translated into hexq's own at the port, with messages that say what to do."""

from __future__ import annotations

from collections.abc import Sequence

import redis.exceptions as rx
from redis.sentinel import MasterNotFoundError

from hexq.core.errors import BrokerAuthError, BrokerError, BrokerFullError, BrokerUnavailableError, HexqError


class NotReplicatedError(HexqError, TimeoutError):
    """Durable enqueue (``wait_replicas``): the primary stored the tasks, but fewer replicas than asked for
    acknowledged them within ``wait_timeout_ms``. Unlike a BrokerError, something *was* changed: the tasks are
    queued and will most likely run; only their survival of a failover right now is not guaranteed. Sending
    them again may run them twice. ``task_ids`` are the ids ``.delay()`` would have returned."""

    def __init__(self, task_ids: Sequence[str], wanted: int, acknowledged: int, timeout_ms: int, where: str) -> None:
        self.task_ids = list(task_ids)
        self.wanted = wanted
        self.acknowledged = acknowledged
        self.timeout_ms = timeout_ms
        self.where = where
        shown = ", ".join(self.task_ids[:3]) + (f" and {len(self.task_ids) - 3} more" if len(self.task_ids) > 3 else "")
        super().__init__(
            f"task {shown} was stored by the primary at {where} but reached only {acknowledged} of the "
            f"{wanted} replica(s) asked for (wait_replicas) within {timeout_ms} ms: it is queued and will "
            "probably run, but a failover now could lose it; enqueueing it again may run it twice"
        )


class UnknownSentinelServiceError(BrokerError, LookupError):
    """No sentinel that answered monitors a service of that name (a typo in the URL's path, most likely)."""

    def __init__(self, service: str, known: Sequence[str], where: str) -> None:
        self.service = service
        self.known = list(known)
        listed = ", ".join(map(repr, self.known)) or "none"
        super().__init__(
            f"no Sentinel at {where} monitors a service named {service!r} (they monitor: {listed}); check the "
            "service name after the hosts in the redis+sentinel:// URL"
        )


class NotAClusterError(BrokerError):
    """A ``redis+cluster://`` URL names a server that does not run in cluster mode."""


class ServiceNotMonitored(MasterNotFoundError):
    """Raised by the Sentinel client (``client.py``) when every sentinel that answered ignores the service;
    carries what they do monitor."""

    def __init__(self, service: str, known: Sequence[str]) -> None:
        self.service = service
        self.known = list(known)
        super().__init__(f"no sentinel monitors {service!r}")


_AUTH_PREFIXES = ("NOAUTH", "WRONGPASS", "NOPERM", "INVALIDPASSWORD")
_UNAVAILABLE_PREFIXES = ("LOADING", "BUSY ", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def translate(exc: rx.RedisError | rx.RedisClusterException, where: str) -> Exception | None:
    """The hexq error for ``exc``, or None when it is not one hexq knows how to explain.

    ``where`` is the redacted URL. Redis error texts never contain the password, but ours are built
    from ``where`` only, so nothing secret can leak through them.
    """
    text = str(exc)
    upper = text.lstrip("-").upper()
    if isinstance(exc, ServiceNotMonitored):
        return UnknownSentinelServiceError(exc.service, exc.known, where)
    if isinstance(exc, MasterNotFoundError):
        return BrokerUnavailableError(
            f"no Sentinel at {where} names a primary it sees up ({text}): a failover may be under way, or the "
            "sentinels are unreachable; workers keep retrying until one names a primary again"
        )
    if isinstance(exc, (rx.AuthenticationError, rx.AuthorizationError, rx.NoPermissionError,
                        rx.AuthenticationWrongNumberOfArgsError)) or upper.startswith(_AUTH_PREFIXES):
        return BrokerAuthError(
            f"Redis at {where} refused hexq's credentials ({text}): check the password and the ACL user "
            "in the broker URL, and that this user may run the commands hexq needs"
        )
    if type(exc).__name__ == "OutOfMemoryError" or upper.startswith("OOM") or "MAXMEMORY" in upper:
        return BrokerFullError(
            f"Redis at {where} is out of memory and refused the write ({text}); nothing was stored. Free "
            "memory (finish or purge queues) or raise maxmemory; callers may retry later"
        )
    cluster = _cluster_error(exc, text, where)
    if cluster is not None:
        return cluster
    if isinstance(exc, (rx.ConnectionError, rx.TimeoutError, rx.ReadOnlyError, rx.ClusterDownError,
                        rx.TryAgainError)) or upper.startswith(_UNAVAILABLE_PREFIXES):
        hint = ""
        if "SSL" in upper or "CERTIFICATE" in upper or "EOF OCCURRED IN VIOLATION OF PROTOCOL" in upper:
            hint = (" TLS failed: check ssl_ca_certs (the CA that signed the server's certificate), and "
                    "ssl_certfile/ssl_keyfile if the server requires client certificates.")
        return BrokerUnavailableError(
            f"cannot use Redis at {where} ({type(exc).__name__}: {text}); workers keep retrying until "
            f"it is reachable again.{hint}"
        )
    return None


def is_redirect(exc: BaseException) -> bool:
    """A MOVED or ASK reply: the cluster serves that slot elsewhere now. redis-py >= 6 raises MovedError or
    AskError for them; 5.x a plain ResponseError whose text starts with the word."""
    if isinstance(exc, rx.AskError):  # MovedError is a subclass
        return True
    return isinstance(exc, rx.ResponseError) and str(exc).lstrip("-").startswith(("MOVED ", "ASK "))


def _cluster_error(exc: rx.RedisError | rx.RedisClusterException, text: str, where: str) -> Exception | None:
    """Errors only a Redis Cluster gives: a server that is not one, slots nobody serves, a slot that moved."""
    lower = text.lower()
    if isinstance(exc, rx.RedisClusterException) and "cluster mode is not enabled" in lower:
        return NotAClusterError(
            f"{where} names a Redis Cluster, but the server there is not one (cluster mode is not enabled); use "
            "redis://host:port for a single server, or point the URL at the nodes of a cluster")
    if isinstance(exc, (rx.SlotNotCoveredError, rx.RedisClusterException)) and ("not covered" in lower
                                                                                or "slot" in lower):
        return BrokerUnavailableError(
            f"the Redis Cluster at {where} does not serve every hash slot ({text}): a failover may be under way, "
            "or slots were never assigned (redis-cli --cluster check / fix); workers keep retrying")
    if is_redirect(exc):  # MOVED and ASK: the slot moved (a failover, resharding) mid-command
        return BrokerUnavailableError(
            f"a slot moved in the Redis Cluster at {where} ({type(exc).__name__}: {text}); hexq asks the cluster "
            "where it is now, and the command is retried")
    if isinstance(exc, rx.RedisClusterException):
        return BrokerUnavailableError(f"cannot use the Redis Cluster at {where} ({text}); workers keep retrying")
    return None


class Translated:
    """``with Translated(where):`` turns redis-py errors into hexq's. A plain class rather than a
    generator-based context manager: it wraps every command, and this is several times cheaper."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        # RedisClusterException is not a RedisError in redis-py (it derives from Exception).
        if isinstance(exc, (rx.RedisError, rx.RedisClusterException)):
            mapped = translate(exc, self.where)  # type: ignore[arg-type,unused-ignore]
            if mapped is not None:
                raise mapped from exc


def translated(where: str) -> Translated:
    return Translated(where)
