"""Redis exceptions translated into hexq's own at the port, with messages that say what to do."""

from __future__ import annotations

import redis.exceptions as rx

from hexq.core.errors import BrokerAuthError, BrokerFullError, BrokerUnavailableError

_AUTH_PREFIXES = ("NOAUTH", "WRONGPASS", "NOPERM", "INVALIDPASSWORD")
_UNAVAILABLE_PREFIXES = ("LOADING", "BUSY ", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN")


def translate(exc: rx.RedisError, where: str) -> Exception | None:
    """The hexq error for ``exc``, or None when it is not one hexq knows how to explain.

    ``where`` is the redacted URL. Redis error texts never contain the password, but ours are built
    from ``where`` only, so nothing secret can leak through them.
    """
    text = str(exc)
    upper = text.lstrip("-").upper()
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


class Translated:
    """``with Translated(where):`` turns redis-py errors into hexq's. A plain class rather than a
    generator-based context manager: it wraps every command, and this is several times cheaper."""

    __slots__ = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, rx.RedisError):
            mapped = translate(exc, self.where)
            if mapped is not None:
                raise mapped from exc


def translated(where: str) -> Translated:
    return Translated(where)
