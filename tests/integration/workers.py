"""Starting real `hexq` worker and scheduler processes, and reading what their tasks reported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
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
    """The processes of one test, with their shared Redis prefix; everything is killed at the end."""

    def __init__(self, url: str, prefix: str, tmp: Path) -> None:
        self.url = url
        self.prefix = prefix
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.redis = redis.Redis.from_url(url, decode_responses=True)

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ, HEXQ_TEST_URL=self.url, HEXQ_TEST_PREFIX=self.prefix, PYTHONUNBUFFERED="1")
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

    def live_workers(self) -> list[str]:
        return list(self.redis.zrange(f"{{{self.prefix}}}:workers", 0, -1))

    def results(self) -> list[dict[str, Any]]:
        return [json.loads(r) for r in self.redis.lrange(f"{self.prefix}-results", 0, -1)]

    def tags(self) -> list[str]:
        return [r["tag"] for r in self.results()]

    def wait_for_tags(self, wanted: int, timeout: float = 30, suffix: str = "") -> list[str]:
        def enough() -> bool:
            return len([t for t in self.tags() if t.endswith(suffix)]) >= wanted

        wait_for(enough, timeout, f"{wanted} results, got {self.tags()[-20:]}\n{self.logs()}")
        return self.tags()

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
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
def app_env(url: str, prefix: str, **extra: str) -> Iterator[Any]:
    """Import the test app in this process, pointed at the test's Redis and prefix."""
    old = {k: os.environ.get(k) for k in ("HEXQ_TEST_URL", "HEXQ_TEST_PREFIX", *extra)}
    os.environ.update(HEXQ_TEST_URL=url, HEXQ_TEST_PREFIX=prefix, **extra)
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
