"""The broker on SQLite: every role of ``hexq.core.ports.broker`` on a database file shared by the processes
of one host (``sqlite:///path/hexq.db``), and, on an in-memory database, the ``memory://`` broker."""

from hexq.adapters.sqlite.broker import SqliteBroker
from hexq.adapters.sqlite.errors import SqliteFileError, SqliteSchemaError
from hexq.adapters.sqlite.settings import SqliteSettings

__all__ = ["SqliteBroker", "SqliteFileError", "SqliteSchemaError", "SqliteSettings"]
