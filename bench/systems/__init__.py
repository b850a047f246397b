"""The systems under test, hexq first; the Redis-backed ones, then the embedded (SQLite) ones."""

from __future__ import annotations

from bench.systems.arq import Arq
from bench.systems.base import System
from bench.systems.baseline import HexqBaseline
from bench.systems.celery import Celery
from bench.systems.dramatiq import Dramatiq
from bench.systems.hexq import Hexq
from bench.systems.huey import Huey
from bench.systems.rq import Rq
from bench.systems.sqlite import HexqSqlite, HueySqlite
from bench.systems.wakaq import Wakaq

SYSTEMS: dict[str, type[System]] = {
    cls.name: cls for cls in (Hexq, HexqBaseline, Wakaq, Celery, Rq, Huey, Dramatiq, Arq, HexqSqlite, HueySqlite)}
# The hexq system each broker's table compares its peers with.
HEXQ_OF = {"redis": "hexq", "sqlite": "hexq-sqlite"}
PEERS = [name for name, cls in SYSTEMS.items() if name not in HEXQ_OF.values()]
