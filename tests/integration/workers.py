"""Starting real `hexq` worker and scheduler processes on the broker under test, and reading what their tasks
reported.

Two stores are involved: the broker under test (``url``: the session's Redis, or an SQLite file of the
test's own), which only hexq reads and writes, and the bookkeeping Redis (``book_url``, the session's Redis
whatever the broker), where the test apps' tasks append what happened (``{prefix}-results``). The
``Cluster`` reads hexq's state through hexq itself (the Inspection port) and, for the few raw checks and
malformed entries no hexq API can give, through ``broker_state`` (one implementation per broker kind)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.integration.broker_state import BrokerState, broker_state, is_redis, kind_of  # noqa: E402

APP = "tests.integration.apps.tasks:app"
FORK_WARNING = "use of fork() may lead to deadlocks"  # Python 3.12+ (see tests/conftest.py)


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = subprocess.Popen(
            [sys.executable, "-m", "hexq.entrypoints.cli", *args], cwd=ROOT, env=env,
            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.handle.pid

    def children(self) -> list[int]:
        """The worker's children: the processes its fork server (its one direct child) forked."""
        import psutil

        try:
            return [c.pid for server in psutil.Process(self.pid).children() for c in server.children()]
        except psutil.NoSuchProcess:
            return []

    def signal(self, signum: int) -> None:
        if self.handle.poll() is None:
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        return self.handle.wait(timeout)

    def kill_group(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.handle.wait(10)

    def output(self) -> str:
        return self.log.read_text()


class Cluster:
    """The processes of one test on one broker (``url``) and key prefix; their tasks report to ``book_url``
    (default: the broker, which must then be a Redis). Everything is killed at the end."""

    def __init__(self, url: str, prefix: str, tmp: Path, book_url: str | None = None) -> None:
        self.url = url
        self.kind = kind_of(url)
        self.prefix = prefix
        self.tmp = tmp
        self.book_url = book_url or url
        if kind_of(self.book_url) != "redis":  # a plain server, whatever the broker under test
            raise ValueError(f"the bookkeeping store must be a Redis, got {self.book_url}")
        self.procs: list[Proc] = []
        self.book = redis.Redis.from_url(self.book_url, decode_responses=True)  # the tasks' reports
        self.state: BrokerState = broker_state(url, prefix)  # raw reads and writes of hexq's stored state
        self._inspect: Any = None

    @property
    def redis(self) -> redis.Redis:  # type: ignore[type-arg]
        """A raw client of the broker under test, for tests that are about Redis itself."""
        if not is_redis(self.kind):
            raise TypeError(f"cluster.redis is for a Redis broker; this one is {self.url}")
        return self.state.client  # type: ignore[attr-defined,no-any-return]

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, HEXQ_TEST_URL=self.url, HEXQ_TEST_BOOK_URL=self.book_url,
                   HEXQ_TEST_PREFIX=self.prefix, PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def start(self, command: str, *args: str, **env: str) -> Proc:
        log = self.tmp / f"{command}-{len(self.procs)}.log"
        proc = Proc([command, f"--app={APP}", *args], self.env(**env), log)
        self.procs.append(proc)
        return proc

    def worker(self, *args: str, wait: bool = True, **env: str) -> Proc:
        before = len(self.live_workers())
        proc = self.start("worker", "--log-level=DEBUG", *args, **env)
        if wait:
            wait_for(lambda: len(self.live_workers()) > before, 20, f"worker to start:\n{proc.output()}")
        return proc

    # -- hexq's state, read through hexq (the Inspection port) -------------------------------------------
    @property
    def partitions(self) -> int:
        """How many partitions the tests' apps spread over on this broker: 3 on a Redis Cluster (one per
        primary, so that the tests cross nodes), 1 elsewhere."""
        return 3 if self.kind == "cluster" else 1

    @property
    def inspect(self) -> Any:
        """A broker of this process on the cluster's URL and prefix (built on first use), with one partition:
        an app spread over more is read through its own ``app.broker``."""
        if self._inspect is None:
            from hexq import HexQ

            self._inspect = HexQ(url=self.url, prefix=self.prefix).broker
        return self._inspect

    def live_workers(self) -> list[str]:
        return [beat.worker_id for beat in self.inspect.workers()]

    def dead(self) -> dict[str, dict[str, Any]]:
        """Dead letters by task id (id, queue, payload, reason, failed_at_ms)."""
        return {letter.id: attrs.asdict(letter) for letter in self.inspect.dead_letters(limit=100_000)}

    def dead_count(self) -> int:
        return int(self.inspect.dead_count())

    def pending(self, queue: str) -> int:
        (stats,) = self.inspect.queue_stats([queue])
        return int(stats.pending)

    def in_flight_ids(self) -> set[str]:
        return {row.id for row in self.inspect.in_flight(limit=100_000)}

    # -- raw entries, as a hostile producer writes them ---------------------------------------------------
    def push_raw(self, payload: str | bytes | None, queue: str = "default", task_id: str | None = None) -> str:
        """Put an entry at the tail of a queue the way a buggy or hostile producer would: no hexq code
        involved (Redis: HSET + RPUSH; SQLite: an INSERT into ``tasks``). ``None``: an id without payload."""
        task_id = task_id or f"raw-{uuid.uuid4().hex}"
        self.state.push_raw(task_id, payload, queue)
        return task_id

    # -- what the tasks reported ----------------------------------------------------------------------
    def results(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.book.lrange(f"{self.prefix}-results", 0, -1)]

    def tags(self) -> list[str]:
        return [r["tag"] for r in self.results()]

    def wait_for_tags(self, wanted: int, timeout: float = 30, suffix: str = "") -> list[str]:
        def enough() -> bool:
            return len([t for t in self.tags() if t.endswith(suffix)]) >= wanted

        wait_for(enough, timeout, f"{wanted} results, got {self.tags()[-20:]}\n{self.logs()}")
        return self.tags()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.procs)

    def app_env(self, **extra: str) -> Any:
        """``app_env`` for this cluster's broker, prefix and bookkeeping store."""
        return app_env(self.url, self.prefix, book_url=self.book_url, **extra)

    def wipe(self) -> None:
        """Delete what this cluster left in Redis (a Redis broker's keys, the tasks' reports); an SQLite
        database is a file in the test's temporary directory."""
        keys = list(self.book.scan_iter(match=f"{self.prefix}-*", count=1000))
        if is_redis(self.kind):
            keys += list(self.redis.scan_iter(match="{" + self.prefix + "}*", count=1000))
        if keys:
            self.book.delete(*keys)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        if self._inspect is not None:
            self._inspect.close()
        self.state.close()
        forked = [p.log.name for p in self.procs if FORK_WARNING in p.output()]
        assert not forked, f"a worker process forked while running threads: {forked}\n{self.logs()}"


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@contextmanager
def app_env(url: str, prefix: str, book_url: str | None = None, **extra: str) -> Iterator[Any]:
    """Import the test app in this process, pointed at the broker under test (``url``), the test's prefix
    and the bookkeeping Redis (``book_url``, default ``url``)."""
    names = ("HEXQ_TEST_URL", "HEXQ_TEST_BOOK_URL", "HEXQ_TEST_PREFIX", *extra)
    old = {k: os.environ.get(k) for k in names}
    os.environ.update(HEXQ_TEST_URL=url, HEXQ_TEST_BOOK_URL=book_url or url, HEXQ_TEST_PREFIX=prefix, **extra)
    sys.modules.pop("tests.integration.apps.tasks", None)
    try:
        import tests.integration.apps.tasks as tasks

        yield tasks
    finally:
        sys.modules.pop("tests.integration.apps.tasks", None)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
