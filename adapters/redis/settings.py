"""How to reach a Redis server: a URL, socket timeouts and TLS files, with the password kept out of reprs.

Two kinds of URL: one server (``redis://``, ``rediss://``, ``unix://``: ``RedisSettings``, parsed by redis-py)
and a primary found through Redis Sentinel (``redis+sentinel://``, ``rediss+sentinel://``:
``SentinelSettings`` in ``sentinel_settings.py``, parsed there; the grammar is in its docstring). Both take
hexq's own durable-enqueue options from the URL's query (``?wait_replicas=N&wait_timeout_ms=T``), which are
removed before redis-py sees the rest; the helpers both use (timeouts, those options, the repr's tail) live
here.

Building the URL from WakaQ's host/port/db/username/password also lives here. Nothing in this module
imports redis-py or connects (``client.clients_for`` builds the clients).
"""

from __future__ import annotations

from typing import Any, Literal, cast
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

import attrs

from hexq.core.errors import ConfigError
from hexq.core.validation import number, whole

RedisScheme = Literal["redis", "rediss", "unix"]
SentinelScheme = Literal["redis+sentinel", "rediss+sentinel"]
REDIS_SCHEMES: tuple[RedisScheme, ...] = ("redis", "rediss", "unix")
SENTINEL_SCHEMES: tuple[SentinelScheme, ...] = ("redis+sentinel", "rediss+sentinel")
SCHEMES_HINT = ("redis://, rediss:// (TLS), unix://, redis+sentinel://host:26379[,host:port...]/service[/db] "
                "(Sentinel), rediss+sentinel:// (Sentinel over TLS), redis+cluster://host:port[,host:port...] "
                "(Redis Cluster), rediss+cluster:// (Cluster over TLS)")
# redis-py also reads credentials from the query string (?password=...); sentinel_password is ours.
_SECRET_PARAMS = {"password", "ssl_password", "ssl_keyfile_password", "sentinel_password"}
# hexq's own query options, taken out of the URL before redis-py parses it.
DURABLE_PARAMS = ("wait_replicas", "wait_timeout_ms")
DEFAULT_WAIT_TIMEOUT_MS = 1000


def redacted_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, in the netloc or the query; safe for logs. Works for
    the several hosts of a ``redis+sentinel://`` URL too."""
    parts = urlsplit(url)
    netloc = parts.netloc
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        f"{name}=***" if unquote(name).lower() in _SECRET_PARAMS else f"{name}={value}" if sep else name
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # nothing to hide; urlunsplit would turn "memory://" into "memory:"
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# Timeouts may be None (wait forever, redis-py's meaning) but not 0, which would make every read fail.
_timeout = number(0, above_low=True, unit="seconds", optional=True)


def _query(url: object) -> dict[str, str]:
    if not isinstance(url, str):
        return {}  # the url validator, which runs after the defaults, says what is wrong
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def _whole_option(url: object, name: str, default: int) -> int:
    """A whole-number option of the URL's query (``?wait_replicas=1``), or ``default`` when absent."""
    raw = _query(url).get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} in the broker URL must be a whole number, got {raw!r}") from None


def url_parts(netloc: str) -> tuple[str | None, str | None, str]:
    """``[user[:password]@]hosts`` of a URL naming several hosts (Sentinel, Cluster): the user and password,
    percent-decoded, and the hosts part. redis-py parses one-host URLs itself."""
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        return None, None, hosts
    user, colon, secret = userinfo.partition(":")
    return unquote(user) or None, unquote(secret) if colon else None, hosts


def host_port(item: str, url: str, *, default_port: int, what: str, form: str) -> tuple[str, int]:
    """One host of such a URL: ``host``, ``host:port`` or ``[v6]:port``. ``what`` names the host in errors
    ("sentinel "), ``form`` is the URL's grammar; the password is never shown."""
    if item.startswith("["):
        host, close, rest = item[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            raise ConfigError(f"bad {what}address {item!r} in {redacted_url(url)!r}: expected [v6 address]:port")
        port_text = rest[1:]
    else:
        host, _, port_text = item.partition(":")
    if not host:
        raise ConfigError(f"empty {what}host in {redacted_url(url)!r}: expected {form}")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f"bad {what}port {port_text!r} in {redacted_url(url)!r}: expected 1 to 65535")
    return host, int(port_text)


def without_params(url: str, names: tuple[str, ...]) -> str:
    """``url`` without the query options ``names`` (hexq's own, which redis-py would refuse)."""
    head, question, rest = url.partition("?")
    if not question:
        return url
    query, hash_sign, fragment = rest.partition("#")
    items = [item for item in query.split("&") if item]
    kept = [item for item in items if unquote(item.partition("=")[0]) not in names]
    if len(kept) == len(items):
        return url  # untouched (urlunsplit would also turn "unix:///path" into "unix:/path")
    return head + ("?" + "&".join(kept) if kept else "") + hash_sign + fragment


def _url_wait_replicas(settings: Any) -> int:
    return _whole_option(settings.url, "wait_replicas", 0)


def _url_wait_timeout_ms(settings: Any) -> int:
    return _whole_option(settings.url, "wait_timeout_ms", DEFAULT_WAIT_TIMEOUT_MS)


# Durable enqueue: ``.delay()`` returns once the write reached ``wait_replicas`` replicas (Redis WAIT), or
# raises NotReplicatedError after ``wait_timeout_ms``. 0 replicas (the default) turns it off. Both default
# to the URL's ``?wait_replicas=&wait_timeout_ms=``.
_check_wait_replicas = whole(0, 100)
_check_wait_timeout = whole(1, 600_000)


def _check_durable(settings: Any) -> None:
    """WAIT's reply is read with ``socket_timeout``: a longer wait would always look like a lost connection."""
    if (settings.wait_replicas and settings.socket_timeout is not None
            and settings.wait_timeout_ms >= settings.socket_timeout * 1000):
        raise ConfigError(f"wait_timeout_ms ({settings.wait_timeout_ms}) must be below socket_timeout "
                          f"({settings.socket_timeout} s), which bounds the wait for its reply")


def _durable_repr(settings: Any) -> str:
    if not settings.wait_replicas:
        return ""
    return f", wait_replicas={settings.wait_replicas!r}, wait_timeout_ms={settings.wait_timeout_ms!r}"


@attrs.frozen(repr=False)
class ClientOptions:
    """What every kind of Redis URL takes besides the URL: socket timeouts, TLS files and durable enqueue.

    Stated once here; ``RedisSettings``, ``SentinelSettings`` (``sentinel_settings.py``) and
    ``ClusterSettings`` (``cluster_settings.py``) subclass it and say how their URL is checked
    (``_check_url``) and read."""

    url: str = attrs.field(validator=lambda instance, _attribute, url: type(instance)._check_url(url))
    socket_timeout: float | None = attrs.field(default=15.0, validator=_timeout)
    socket_connect_timeout: float | None = attrs.field(default=5.0, validator=_timeout)
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    wait_replicas: int = attrs.field(default=attrs.Factory(_url_wait_replicas, takes_self=True),
                                     validator=_check_wait_replicas)
    wait_timeout_ms: int = attrs.field(default=attrs.Factory(_url_wait_timeout_ms, takes_self=True),
                                       validator=_check_wait_timeout)

    def __attrs_post_init__(self) -> None:
        _check_durable(self)

    @classmethod
    def _check_url(cls, url: object) -> None:
        raise NotImplementedError  # each kind of URL says what it accepts

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, safe for logs and ``info``."""
        return redacted_url(self.url)

    def __repr__(self) -> str:
        tls = "".join(f", {name}={getattr(self, name)!r}" for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
                      if getattr(self, name) is not None)
        return (f"{type(self).__name__}({self.redacted!r}, socket_timeout={self.socket_timeout!r}, "
                f"socket_connect_timeout={self.socket_connect_timeout!r}{tls}{_durable_repr(self)})")


@attrs.frozen(repr=False)
class RedisSettings(ClientOptions):
    """One server: what ``clients_for`` needs to build redis-py clients; validated when built."""

    @classmethod
    def _check_url(cls, url: object) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in REDIS_SCHEMES:
            scheme = urlsplit(url).scheme if isinstance(url, str) else None
            raise ConfigError(f"unsupported Redis URL scheme {scheme!r}: use {SCHEMES_HINT}")

    @property
    def scheme(self) -> RedisScheme:
        return cast(RedisScheme, urlsplit(self.url).scheme)  # checked by the url validator

    @property
    def client_url(self) -> str:
        """The URL as redis-py gets it: without hexq's own query options."""
        return without_params(self.url, DURABLE_PARAMS)


def _auth(username: str | None, password: str | None) -> str:
    """The ``user:password@`` part of a URL, percent-encoded; empty without credentials."""
    if password is not None:
        return f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
    if username is not None:
        return f"{quote(username, safe='')}@"
    return ""


def _with_credentials(url: str, username: str | None, password: str | None) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", *SENTINEL_SCHEMES, "redis+cluster", "rediss+cluster"):
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
