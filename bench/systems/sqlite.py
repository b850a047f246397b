"""The embedded brokers: hexq on its SQLite broker and Huey's SqliteHuey, each on a database file the
harness makes anew for every step (``BENCH_SQLITE_PATH``); their completion counter stays in the harness's
Redis, like every other system's. Only the processing, batch and latency workloads apply (no priority app,
and the +1 ms proxy delays Redis round trips and the cost workload measures a Redis server, neither of which
these brokers use)."""

from __future__ import annotations

import importlib.util

from bench.systems.base import script
from bench.systems.hexq import Hexq
from bench.systems.huey import Huey

SQLITE_SKIPS = frozenset({"priority", "proxy", "cost"})  # cost: what tasks cost a Redis server
# SqliteHuey's consumer polls its table; the defaults (-d 0.1 -b 1.15 -m 10) back off to 10 s when idle.
# As the issue measured it: a fixed 10 ms poll (no back-off), hexq's own safety-net poll period.
HUEY_POLL = ["-d", "0.01", "-b", "1", "-m", "0.01"]


class HexqSqlite(Hexq):
    name = "hexq-sqlite"
    app_module = "bench.apps.hexq_sqlite_app"
    broker = "sqlite"
    skips = SQLITE_SKIPS
    command = "hexq worker --app=bench.apps.hexq_sqlite_app:app --concurrency=2"
    has_priority = False
    priority = "not run on SQLite"
    priority_command = ""

    def missing(self) -> str | None:
        reason = super().missing()
        if reason:
            return reason
        if importlib.util.find_spec("hexq.adapters.sqlite.broker") is None:
            return "not available yet (hexq.adapters.sqlite.broker missing)"
        return None

    def worker_argvs(self, url: str, app: str = "bench.apps.hexq_sqlite_app:app") -> list[list[str]]:
        return super().worker_argvs(url, app)


class HueySqlite(Huey):
    name = "huey-sqlite"
    app_module = "bench.apps.huey_sqlite_app"
    broker = "sqlite"
    skips = SQLITE_SKIPS
    setup = "2 procs (-w 2 -k process), 10 ms poll"
    command = "huey_consumer bench.apps.huey_sqlite_app.huey -w 2 -k process -q " + " ".join(HUEY_POLL)
    has_priority = False
    priority = "not run on SQLite"
    priority_command = ""

    def worker_argvs(self, url: str) -> list[list[str]]:
        return [[script("huey_consumer"), "bench.apps.huey_sqlite_app.huey", "-w", "2", "-k", "process", "-q",
                 *HUEY_POLL]]
