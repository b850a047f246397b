"""What the harness needs from each system: how to start its workers and how its client sends tasks.

Worker commands run in subprocesses; the client methods run in ``python -m bench.client`` subprocesses,
so a peer that hangs or crashes on import is killed by the harness and never takes the bench down.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def script(name: str) -> str:
    """A console script of the running venv (falls back to PATH)."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


class System:
    name = ""
    dist = ""  # distribution name, for the version
    app_module = ""  # bench.apps.<name>_app
    setup = ""  # worker processes, as shown in the table
    command = ""  # worker command, as shown in RESULTS.md
    has_batch = False
    # Priority workload: how the system prefers the high queue (shown in the notes), and the worker command
    # for bench/apps/<name>_priority_app.py; without has_priority its cells read "—".
    has_priority = False
    priority = "no priorities"
    priority_command = ""
    # Where the queue lives: "redis" (the bench redis-server) or "sqlite" (a database file the harness makes
    # for each step, ``BENCH_SQLITE_PATH``); each broker's systems get a table of their own.
    broker = "redis"
    skips: frozenset[str] = frozenset()  # workloads that do not apply to this system (not run, not shown)

    @property
    def python(self) -> str:
        """The interpreter of this system's client processes (another venv's for ``hexq-base``)."""
        return sys.executable

    # -- harness side ------------------------------------------------------------------------------
    def missing(self) -> str | None:
        """None when usable, else why not (shown in the table instead of numbers)."""
        try:
            if importlib.util.find_spec(self.dist.replace("-", "_").lower()) is None:
                return "not installed"
        except (ImportError, ValueError):
            return "not installed"
        return None

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    def worker_argvs(self, url: str) -> list[list[str]]:
        raise NotImplementedError

    def priority_argvs(self, url: str) -> list[list[str]]:
        """The worker command(s) for the priority workload's app (only if ``priority``)."""
        raise NotImplementedError

    def priority_app(self) -> Any:
        return importlib.import_module(self.app_module.replace("_app", "_priority_app"))

    # -- client side (runs in bench.client) ---------------------------------------------------------
    def app(self) -> Any:
        return importlib.import_module(self.app_module)

    def open(self) -> None:
        """Connect/import before timing starts."""
        self.app()

    def close(self) -> None:
        pass

    def enqueue(self, n: int) -> None:
        """``n`` single enqueue calls of ``noop`` through the documented one-task API."""
        raise NotImplementedError

    def batch(self, n: int, chunk: int) -> None:
        """``n`` enqueues of ``noop`` through the system's batch API, in chunks (only if has_batch)."""
        raise NotImplementedError

    def fill(self, n: int) -> None:
        """Queue ``n`` noops as fast as the system allows (untimed)."""
        if self.has_batch:
            self.batch(n, 1000)
        else:
            self.enqueue(n)

    def send_stamp(self, sent: float) -> None:
        raise NotImplementedError

    def send_eta(self, due: float) -> None:
        """Enqueue ``stamp(due)`` to run at epoch ``due``."""
        raise NotImplementedError

    def send_low(self, n: int) -> None:
        """Queue ``n`` low-priority ``slow()`` tasks of the priority app, as fast as the system allows."""
        raise NotImplementedError

    def send_high(self, sent: float) -> None:
        """Enqueue the priority app's high-priority ``urgent(sent)``."""
        raise NotImplementedError
