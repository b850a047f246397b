"""Where the SQLite database is and how it is opened; parsing ``sqlite:`` URLs. Nothing here opens a file.

URL spelling (the same as SQLite's own ``file:`` URIs, RFC 8089):

- ``sqlite:///var/lib/hexq/hexq.db`` — an absolute path (three slashes, then the path from the root);
- ``sqlite:hexq.db`` or ``sqlite:data/hexq.db`` — a path relative to the working directory of the process
  that parses the URL; it is resolved once, there, so a worker's children and a daemon that changes its
  directory later all use the same file;
- ``sqlite://localhost/var/lib/hexq/hexq.db`` is accepted as the absolute form; any other host is refused
  (SQLite is a file on this host, not a server). ``sqlite://hexq.db`` is refused with a hint, since it looks
  like a relative path but names a host.

Note for SQLAlchemy users: there ``sqlite:///relative.db`` is relative; here, as in ``file:`` URIs, it is the
absolute path ``/relative.db``. Errors about a folder at the root say so.

Query options: ``busy_timeout`` (seconds a write waits for another process's transaction, default 5) and
``synchronous`` (``NORMAL`` or ``FULL``, see ``database.py``); percent-escapes in the path are decoded.
"""

from __future__ import annotations

import os
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import attrs

from hexq.core.errors import ConfigError
from hexq.core.validation import number

SQLITE_SCHEME = "sqlite"
Synchronous = Literal["NORMAL", "FULL"]
_SYNCHRONOUS = ("NORMAL", "FULL")


def _absolute(_instance: object, _attribute: attrs.Attribute[Any], path: object) -> None:
    if not isinstance(path, str) or not path or not os.path.isabs(path):
        raise ConfigError(f"SqliteSettings.path must be an absolute path, got {path!r}: resolve it first "
                          "(SqliteSettings.from_url does, for sqlite:relative.db)")


def _synchronous(_instance: object, _attribute: attrs.Attribute[Any], value: object) -> None:
    if value not in _SYNCHRONOUS:
        raise ConfigError(f"synchronous must be one of {_SYNCHRONOUS}, got {value!r}")


@attrs.frozen
class SqliteSettings:
    """An SQLite database file, by absolute path. ``busy_timeout``: how long (seconds) a transaction waits
    for another connection's write lock before the call fails with BrokerUnavailableError."""

    path: str = attrs.field(validator=_absolute)
    busy_timeout: float = attrs.field(default=5.0, validator=number(0, 3600, unit="seconds"))
    synchronous: Synchronous = attrs.field(default="NORMAL", validator=_synchronous)

    @property
    def scheme(self) -> Literal["sqlite"]:
        return "sqlite"

    @property
    def url(self) -> str:
        """The absolute URL of this database (``sqlite:///...``), for logs and ``hexq info``."""
        return f"sqlite://{quote(self.path)}"

    @property
    def redacted(self) -> str:
        return self.url  # a path holds no secret

    @classmethod
    def from_url(cls, url: str) -> SqliteSettings:
        """Parse a ``sqlite:`` URL (see the module docstring); a relative path is made absolute now."""
        parts = urlsplit(url)
        if parts.scheme != SQLITE_SCHEME:
            raise ConfigError(f"not an SQLite URL: {url!r} (expected sqlite:///absolute/path.db or sqlite:relative.db)")
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(
                f"SQLite URL {url!r} names a host ({parts.netloc!r}); SQLite is a file on this machine: write "
                f"sqlite:///absolute/path.db, or sqlite:{parts.netloc}{parts.path} for a path relative to the "
                "working directory")
        path = unquote(parts.path)
        if not path or path.endswith("/"):
            raise ConfigError(f"SQLite URL {url!r} names no file: write sqlite:///absolute/path/hexq.db")
        options = dict(parse_qsl(parts.query, keep_blank_values=True))
        unknown = sorted(set(options) - {"busy_timeout", "synchronous"})
        if unknown:
            raise ConfigError(f"unknown option(s) {unknown} in SQLite URL {url!r}: known are busy_timeout, synchronous")
        kwargs: dict[str, Any] = {}
        if "busy_timeout" in options:
            try:
                kwargs["busy_timeout"] = float(options["busy_timeout"])
            except ValueError:
                raise ConfigError(f"busy_timeout must be a number of seconds, got {options['busy_timeout']!r}"
                                  ) from None
        if "synchronous" in options:
            kwargs["synchronous"] = options["synchronous"].upper()
        # Resolved once, here: forked children and a daemon that changes directory must open the same file.
        return cls(os.path.abspath(path), **kwargs)
