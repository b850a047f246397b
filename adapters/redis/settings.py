"""How to reach a Redis server: a URL, socket timeouts and TLS files, with the password kept out of reprs.

Building the URL from WakaQ's host/port/db/username/password also lives here. Nothing in this module
imports redis-py or connects (``client.clients_for`` builds the clients).
"""

from __future__ import annotations

from typing import Any, Literal, cast
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs

from hexq.core.errors import ConfigError
from hexq.core.validation import number

RedisScheme = Literal["redis", "rediss", "unix"]
REDIS_SCHEMES: tuple[RedisScheme, ...] = ("redis", "rediss", "unix")
SCHEMES_HINT = "redis://, rediss:// (TLS), unix://"
# redis-py also reads credentials from the query string (?password=...).
_SECRET_PARAMS = {"password", "ssl_password", "ssl_keyfile_password"}


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, in the netloc or the query; safe for logs."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        user = parts.username or ""
        netloc = f"{user}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(
        f"{name}=***" if unquote(name).lower() in _SECRET_PARAMS else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide; urlunsplit would turn "memory://" into "memory:"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redis_scheme(_instance: object, _attribute: attrs.Attribute[Any], url: object) -> None:
    if not isinstance(url, str) or urlsplit(url).scheme not in REDIS_SCHEMES:
        scheme = urlsplit(url).scheme if isinstance(url, str) else None
        raise ConfigError(f"unsupported Redis URL scheme {scheme!r}: use {SCHEMES_HINT}")


# Timeouts may be None (wait forever, redis-py's meaning) but not 0, which would make every read fail.
_timeout = number(0, above_low=True, unit="seconds", optional=True)


@attrs.frozen(repr=False)
class RedisSettings:
    """What ``clients_for`` needs to build redis-py clients; validated when built."""

    url: str = attrs.field(validator=_redis_scheme)
    socket_timeout: float | None = attrs.field(default=15.0, validator=_timeout)
    socket_connect_timeout: float | None = attrs.field(default=5.0, validator=_timeout)
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def scheme(self) -> RedisScheme:
        return cast(RedisScheme, urlsplit(self.url).scheme)  # checked by the url validator

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, safe for logs and ``info``."""
        return redacted_url(self.url)

    def __repr__(self) -> str:
        tls = "".join(f", {name}={getattr(self, name)!r}" for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                      if getattr(self, name) is not None)
        return (f"RedisSettings({self.redacted!r}, socket_timeout={self.socket_timeout!r}, "
                f"socket_connect_timeout={self.socket_connect_timeout!r}{tls})")


def _auth(username: str | None, password: str | None) -> str:
    """The ``user:password@`` part of a URL, percent-encoded; empty without credentials."""
    if password is not None:
        return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    if username is not None:
        return f"{quote(username, safe='')}@"
    return ""


def _with_credentials(url: str, username: str | None, password: str | None) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ConfigError(f"username=/password= need a redis:// or rediss:// URL, not {parts.scheme}://; "
                          "for a unix socket put them in the URL's query (?password=...)")
    if parts.username or parts.password:
        raise ConfigError("credentials given twice: put them in the URL or pass username=/password=, not both")
    netloc = _auth(username, password) + parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_url(url: str | None, host: str, port: int, db: int, username: str | None, password: str | None) -> str:
    """The URL WakaQ-style options name: ``url`` (with username=/password= merged in) or host/port/db.

    Any URL passes through unchecked when no credentials are given; ``RedisSettings`` checks the scheme."""
    if url is None:
        return f"redis://{_auth(username, password)}{host}:{port}/{db}"
    if username is None and password is None:
        return url
    return _with_credentials(url, username, password)
