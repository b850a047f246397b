"""``redis+sentinel://`` and ``rediss+sentinel://`` URLs: ``SentinelSettings`` and the parsing of the URL
into a ``SentinelTarget`` (the sentinels, the service name, the database and both sets of credentials).

Why it exists: redis-py has no URL form for Sentinel, so hexq parses these URLs itself, with its own grammar
and error messages; kept apart from ``settings.py`` (one server, parsed by redis-py) so that neither module
grows past a readable size. The options both kinds share (timeouts, TLS files, the durable-enqueue query
options) come from ``settings.py``. Nothing in this module imports redis-py or connects
(``client.clients_for`` builds the clients).
"""

from __future__ import annotations

import functools
from typing import cast
from urllib.parse import unquote, urlsplit

import attrs

from hexq.adapters.redis.settings import (
    DURABLE_PARAMS,
    SENTINEL_SCHEMES,
    ClientOptions,
    SentinelScheme,
    _query,
    host_port,
    redacted_url,
    url_parts,
)
from hexq.core.errors import ConfigError

DEFAULT_SENTINEL_PORT = 26379
_SENTINEL_PARAMS = ("sentinel_username", "sentinel_password", *DURABLE_PARAMS)


@attrs.frozen
class SentinelTarget:
    """What a ``redis+sentinel://`` URL names. ``username``/``password`` are the data nodes' (the primary's
    and its replicas'); ``sentinel_username``/``sentinel_password`` the sentinels' own."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    sentinel_username: str | None = attrs.field(default=None, repr=False)
    sentinel_password: str | None = attrs.field(default=None, repr=False)
    tls: bool = False


_SENTINEL_FORM = "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]"


@functools.lru_cache(maxsize=64)
def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse a ``redis+sentinel://`` or ``rediss+sentinel://`` URL (grammar: ``SentinelSettings``);
    raises ConfigError naming what is wrong, never showing the password."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        raise ConfigError(f"not a Sentinel URL: {redacted_url(url)!r} (expected {_SENTINEL_FORM})")
    username, password, hosts = url_parts(parts.netloc)
    if not hosts.strip(","):
        raise ConfigError(f"{redacted_url(url)!r} names no sentinel: expected {_SENTINEL_FORM}")
    sentinels = tuple(host_port(item.strip(), url, default_port=DEFAULT_SENTINEL_PORT, what="sentinel ",
                                form=_SENTINEL_FORM) for item in hosts.split(",") if item.strip())
    segments = [unquote(segment) for segment in parts.path.split("/")[1:]]
    while segments and segments[-1] == "" and len(segments) > 1:
        segments.pop()  # a trailing slash
    service = segments[0] if segments else ""
    if not service:
        raise ConfigError(f"{redacted_url(url)!r} names no Sentinel service: put the name the sentinels monitor "
                          f"after the hosts, as in {_SENTINEL_FORM}")
    if len(segments) > 2:
        raise ConfigError(f"{redacted_url(url)!r}: too many path segments; expected /service_name[/db]")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise ConfigError(f"{redacted_url(url)!r}: the database after the service name must be a whole "
                              f"number, got {segments[1]!r}")
        db = int(segments[1])
    query = _query(url)
    unknown = sorted(set(query) - set(_SENTINEL_PARAMS))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(map(repr, unknown))} in {redacted_url(url)!r}: a Sentinel "
                          f"URL accepts {', '.join(_SENTINEL_PARAMS)}; pass timeouts and TLS files to HexQ(...)")
    return SentinelTarget(sentinels, service, db, username, password, query.get("sentinel_username") or None,
                          query.get("sentinel_password") or None, tls=parts.scheme == "rediss+sentinel")


@attrs.frozen(repr=False)
class SentinelSettings(ClientOptions):
    """A primary found through Redis Sentinel, with the same options as ``RedisSettings``.

    Grammar::

        redis+sentinel://[user:password@]host[:port][,host[:port]...]/service_name[/db][?option=value&...]
        rediss+sentinel://...        the same over TLS, to the sentinels and to the data nodes

    - hosts are the sentinels (port 26379 when omitted; ``[v6]:port`` for IPv6 addresses); several are
      tried in turn, and the first that names a primary it sees up is believed;
    - ``service_name`` is the name the sentinels monitor (``sentinel monitor <name> ...``); required;
    - ``db`` is the database number on the data nodes (0 when omitted);
    - ``user:password@`` are the **data nodes'** credentials (the primary's ``requirepass`` or ACL user);
      the sentinels are reached without credentials unless ``?sentinel_password=`` (and
      ``?sentinel_username=``) say otherwise, since a sentinel's ``requirepass`` is usually another secret;
    - options: ``sentinel_username``, ``sentinel_password``, ``wait_replicas``, ``wait_timeout_ms`` (durable
      enqueue, as for ``redis://``); anything else is refused rather than silently ignored.
    """

    @classmethod
    def _check_url(cls, url: object) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in SENTINEL_SCHEMES:
            scheme = urlsplit(url).scheme if isinstance(url, str) else None
            raise ConfigError(f"unsupported Sentinel URL scheme {scheme!r}: use redis+sentinel:// or "
                              "rediss+sentinel://")
        parse_sentinel_url(url)

    @property
    def scheme(self) -> SentinelScheme:
        return cast(SentinelScheme, urlsplit(self.url).scheme)  # checked by the url validator

    @property
    def target(self) -> SentinelTarget:
        return parse_sentinel_url(self.url)
