"""Raw access to what hexq stored, one implementation per broker kind, for the few checks hexq's own
Inspection port cannot make: writing a malformed entry the way a buggy or hostile producer would (no hexq
code involved), whether anything of one task id is left, its stored eta, the order of a queue and of a
consumer's reserved batch, the cron claims.

Everything else the integration tests read about hexq's state (live workers, dead letters, pending and
in-flight counts) goes through hexq itself (``app.broker.workers()``, ``.dead_letters()``, ...), so the same
test body runs on every broker.

Redis: the key layout of ``adapters/redis/keys.py`` under ``{prefix}``. SQLite: the ``tasks`` and ``cron``
tables of ``adapters/sqlite/schema.py``; a raw entry is a row in state 0 (queued) at the tail of its queue
(``pos`` = the queue's largest queued ``pos`` + 1, the rule of ``adapters/sqlite/statements.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import redis

BROKER_KINDS = ("redis", "sqlite")
# The same Redis adapter behind a Redis Cluster (3 primaries, 3 replicas; one partition, so every ordering
# the tests check holds: tests/integration/test_redis_cluster.py covers three) and behind Sentinel (a
# primary, a replica, three sentinels). The integration suite runs on all four; HEXQ_TEST_BROKERS narrows it.
TOPOLOGY_KINDS = ("cluster", "sentinel")
INTEGRATION_KINDS = (*BROKER_KINDS, *TOPOLOGY_KINDS)


def kind_of(url: str) -> str:
    if url.startswith("sqlite:"):
        return "sqlite"
    if url.startswith(("redis+cluster:", "rediss+cluster:")):
        return "cluster"
    if url.startswith(("redis+sentinel:", "rediss+sentinel:")):
        return "sentinel"
    return "redis"


def is_redis(kind: str) -> bool:
    """Any kind of Redis deployment (hexq's Redis adapter), as opposed to SQLite."""
    return kind != "sqlite"


def sqlite_url(directory: Path) -> str:
    """A new database file in ``directory`` (hexq creates it, and its ``-wake`` folder, on first use)."""
    return "sqlite://" + quote(str((directory / "hexq.db").resolve()))


def url_for(kind: str, redis_url: str, directory: Path, topology: Callable[[str], str] | None = None) -> str:
    """The app URL of the broker under test: the session's Redis, a new database file in ``directory``, or
    the URL ``topology(kind)`` gives for the session's cluster or Sentinel deployment."""
    if kind == "redis":
        return redis_url
    if kind == "sqlite":
        return sqlite_url(directory)
    if topology is None:
        raise ValueError(f"broker kind {kind!r} needs the session's {kind} deployment")
    return topology(kind)


def topology_url(request: Any, kind: str) -> str:
    """The URL of the session's Redis Cluster or Sentinel deployment (pytest fixtures of conftest.py, started
    on first use); ``request`` is a pytest FixtureRequest."""
    if kind == "cluster":
        return str(request.getfixturevalue("redis_cluster").url())
    return str(request.getfixturevalue("session_sentinels").url())


class BrokerState(Protocol):
    kind: str

    def push_raw(self, task_id: str, payload: str | bytes | None, queue: str = "default") -> None:
        """An entry at the tail of ``queue``; ``payload=None``: an id queued with no stored payload."""

    def stored(self, task_id: str, queue: str = "default") -> bool:
        """Is anything of ``task_id`` left: a payload, a queue entry, an owner?"""

    def stored_many(self, task_ids: Sequence[str]) -> list[bool]:
        """For each id: is its payload stored (queued, waiting or owned)?"""

    def eta_ms(self, task_id: str, queue: str = "default") -> float | None:
        """The due time (epoch ms) of a task waiting for its eta; None if it is not waiting."""

    def queued_ids(self, queue: str = "default") -> list[str]:
        """The ids queued on ``queue``, head first."""

    def owned(self) -> dict[str, list[str]]:
        """Consumer -> the ids it owns, in reservation order."""

    def footprint(self) -> list[tuple[str, str]]:
        """Every stored trace of a task, as sorted (where, task id) pairs (Redis: and every key of the
        prefix, as ("key", name)): [] when nothing is stored."""

    def cron_claims(self) -> dict[str, str]:
        """Schedule key -> last fired tick."""

    def leftovers(self) -> dict[str, object]:
        """What is stored at all, by structure (key or table) -> size: a report of what a run left."""

    def close(self) -> None: ...


def _raw_client(url: str) -> redis.Redis:  # type: ignore[type-arg]
    """A plain client of the node that holds the prefix's keys: the server, the node of a cluster that owns
    the prefix's slot (one partition: every key carries that hash tag), or the primary the sentinels name."""
    kind = kind_of(url)
    if kind == "cluster":
        from redis.cluster import RedisCluster

        from hexq.adapters.redis.cluster_settings import parse_cluster_url

        nodes = parse_cluster_url(url).nodes
        return RedisCluster(host=nodes[0][0], port=nodes[0][1], decode_responses=True)  # type: ignore[return-value]
    if kind == "sentinel":
        from redis.sentinel import Sentinel

        from hexq.adapters.redis.sentinel_settings import parse_sentinel_url

        target = parse_sentinel_url(url)
        return Sentinel(list(target.sentinels)).master_for(target.service, decode_responses=True)  # type: ignore[no-any-return]
    return redis.Redis.from_url(url, decode_responses=True)


class RedisState:
    kind = "redis"

    def __init__(self, url: str, prefix: str) -> None:
        self.client: redis.Redis = _raw_client(url)  # type: ignore[type-arg]
        self.prefix = prefix

    def key(self, name: str) -> str:
        return f"{{{self.prefix}}}:{name}"

    def push_raw(self, task_id: str, payload: str | bytes | None, queue: str = "default") -> None:
        if payload is not None:
            self.client.hset(self.key("tasks"), task_id, payload)
        self.client.rpush(self.key(f"q:{queue}"), task_id)

    def stored(self, task_id: str, queue: str = "default") -> bool:
        return bool(self.client.hexists(self.key("tasks"), task_id)
                    or self.client.hexists(self.key("inflight"), task_id)
                    or self.client.lpos(self.key(f"q:{queue}"), task_id) is not None)

    def stored_many(self, task_ids: Sequence[str]) -> list[bool]:
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hexists(self.key("tasks"), task_id)
        return [bool(found) for found in pipe.execute()]

    def eta_ms(self, task_id: str, queue: str = "default") -> float | None:
        score = self.client.zscore(self.key(f"eta:{queue}"), task_id)
        return None if score is None else float(score)

    def queued_ids(self, queue: str = "default") -> list[str]:
        return list(self.client.lrange(self.key(f"q:{queue}"), 0, -1))

    def owned(self) -> dict[str, list[str]]:
        start = len(self.key("owned:"))
        return {key[start:]: list(self.client.lrange(key, 0, -1))
                for key in self.client.scan_iter(match="{" + self.prefix + "}:owned:*")}

    def footprint(self) -> list[tuple[str, str]]:
        # Every key of the prefix too: a refused write must not even create an empty structure.
        found = [("key", key) for key in self.client.scan_iter(match="{" + self.prefix + "}*", count=1000)]
        found += [(self.key("tasks"), task_id) for task_id in self.client.hkeys(self.key("tasks"))]
        found += [(self.key("inflight"), task_id) for task_id in self.client.hkeys(self.key("inflight"))]
        for pattern, read in (("q:*", self.client.lrange), ("eta:*", self.client.zrange)):
            for key in self.client.scan_iter(match="{" + self.prefix + "}:" + pattern):
                found += [(key, task_id) for task_id in read(key, 0, -1)]
        return sorted(found)

    def cron_claims(self) -> dict[str, str]:
        return dict(self.client.hgetall(self.key("cron")))

    def leftovers(self) -> dict[str, object]:
        sizes = {"list": self.client.llen, "hash": self.client.hlen, "zset": self.client.zcard,
                 "set": self.client.scard}
        found: dict[str, object] = {}
        for key in self.client.scan_iter(match="{" + self.prefix + "}:*", count=1000):
            kind = self.client.type(key)
            size = sizes.get(kind)
            found[key.split("}:", 1)[1]] = size(key) if size else kind
        return found

    def close(self) -> None:
        self.client.close()


class SqliteState:
    kind = "sqlite"

    def __init__(self, url: str) -> None:
        from hexq.adapters.sqlite.settings import SqliteSettings

        self.path = SqliteSettings.from_url(url).path

    @contextmanager
    def connection(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """A connection of this process's own, closed afterwards; a write is one BEGIN IMMEDIATE transaction,
        as every writer of the database must be."""
        from hexq.adapters.sqlite.schema import ensure_schema

        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as conn:
            ensure_schema(conn, self.path)  # a raw entry may come before any worker created the layout
            if not write:
                yield conn
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def push_raw(self, task_id: str, payload: str | bytes | None, queue: str = "default") -> None:
        with self.connection(write=True) as conn:
            conn.execute("INSERT INTO tasks (id, queue, state, pos, payload) VALUES (?1, ?2, 0, "
                         "(SELECT coalesce(max(pos), 0) + 1 FROM tasks WHERE state = 0 AND queue = ?2), ?3)",
                         (task_id, queue, payload))

    def stored(self, task_id: str, queue: str = "default") -> bool:
        with self.connection() as conn:
            return conn.execute("SELECT 1 FROM tasks WHERE id = ?", (task_id,)).fetchone() is not None

    def stored_many(self, task_ids: Sequence[str]) -> list[bool]:
        with self.connection() as conn:
            found = {row[0] for row in conn.execute("SELECT id FROM tasks WHERE payload IS NOT NULL")}
        return [task_id in found for task_id in task_ids]

    def eta_ms(self, task_id: str, queue: str = "default") -> float | None:
        with self.connection() as conn:
            row = conn.execute("SELECT eta_ms FROM tasks WHERE id = ? AND queue = ? AND state = 1",
                               (task_id, queue)).fetchone()
        return None if row is None else float(row[0])

    def queued_ids(self, queue: str = "default") -> list[str]:
        with self.connection() as conn:
            return [row[0] for row in conn.execute("SELECT id FROM tasks WHERE state = 0 AND queue = ? ORDER BY pos",
                                                   (queue,))]

    def owned(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        with self.connection() as conn:
            for consumer, task_id in conn.execute("SELECT consumer, id FROM tasks WHERE state = 2 "
                                                  "ORDER BY consumer, since_ms, pos"):
                out.setdefault(consumer, []).append(task_id)
        return out

    def footprint(self) -> list[tuple[str, str]]:
        with self.connection() as conn:
            return sorted((f"tasks {queue} state {state}", task_id)
                          for task_id, queue, state in conn.execute("SELECT id, queue, state FROM tasks"))

    def cron_claims(self) -> dict[str, str]:
        with self.connection() as conn:
            return {key: str(tick) for key, tick in conn.execute("SELECT schedule_key, last_fire_ms FROM cron")}

    def leftovers(self) -> dict[str, object]:
        found: dict[str, object] = {}
        with self.connection() as conn:
            names = {0: "queued", 1: "waiting", 2: "owned"}
            for state, count in conn.execute("SELECT state, count(*) FROM tasks GROUP BY state"):
                found[f"tasks {names.get(state, state)}"] = count
            for table in ("leases", "dead", "cron", "workers"):
                count = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # fixed table names
                if count:
                    found[table] = count
        return found

    def close(self) -> None:
        pass  # every call closes its own connection


def broker_state(url: str, prefix: str) -> BrokerState:
    return SqliteState(url) if kind_of(url) == "sqlite" else RedisState(url, prefix)  # every Redis kind
