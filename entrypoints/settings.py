"""Connection settings: a URL or WakaQ-style host/port/db/password, with secrets kept out of reprs."""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit, urlunsplit

import attrs

from hexq.core.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix", "memory")
_SECRET_PARAMS = {"password", "ssl_password", "ssl_keyfile_password"}


@attrs.frozen
class Connection:
    url: str = attrs.field(repr=False)
    socket_timeout: float | None = 15.0
    socket_connect_timeout: float | None = 5.0
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def redacted(self) -> str:
        """The URL with any password replaced, safe for logs and ``info``."""
        parts = urlsplit(self.url)
        netloc = parts.netloc
        if parts.password is not None:
            user = parts.username or ""
            netloc = f"{user}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        # redis-py also reads credentials from the query string (?password=...).
        query = "&".join(
            f"{name}=***" if unquote(name).lower() in _SECRET_PARAMS else f"{name}={value}" if sep else name
            for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
        )
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))

    def __repr__(self) -> str:
        return f"Connection({self.redacted!r})"


def build_connection(
    url: str | None,
    host: str,
    port: int,
    db: int,
    username: str | None,
    password: str | None,
    **options: object,
) -> Connection:
    if url is not None and (username is not None or password is not None):
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ConfigError(f"username=/password= need a redis:// or rediss:// URL, not {parts.scheme}://; "
                              "for a unix socket put them in the URL's query (?password=...)")
        if parts.username or parts.password:
            raise ConfigError("credentials given twice: put them in the URL or pass username=/password=, "
                              "not both")
        auth = quote(username or "", safe="") + (f":{quote(password, safe='')}" if password is not None else "")
        netloc = f"{auth}@{parts.netloc}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    if url is None:
        auth = ""
        if password is not None:
            auth = f"{quote(username or '', safe='')}:{quote(password, safe='')}@"
        elif username is not None:
            auth = f"{quote(username, safe='')}@"
        url = f"redis://{auth}{host}:{port}/{db}"
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"unsupported broker URL scheme {scheme!r}: use redis://, rediss:// (TLS), unix:// or memory://"
        )
    return Connection(url, **options)  # type: ignore[arg-type]
