"""``/metrics`` for a worker: the parent and its forked children each write their own files in a private
directory (prometheus_client's multiprocess mode), and the parent serves their sum over HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values

from hexq.adapters.prometheus.metrics import PrometheusMetrics
from hexq.core.errors import ConfigError

ENV = "PROMETHEUS_MULTIPROC_DIR"


class MultiprocessExporter:
    """Create with ``start()`` in the worker parent before it forks any child; ``metrics`` is then shared
    by the parent (Supervisor) and, through fork, every child (TaskRunner)."""

    def __init__(self, directory: str, metrics: PrometheusMetrics, server: WSGIServer,
                 thread: threading.Thread, previous: tuple[str | None, Any]) -> None:
        self.directory = directory
        self.metrics = metrics
        self.port: int = server.server_port
        self._server = server
        self._thread = thread
        self._previous = previous

    @classmethod
    def start(cls, port: int, host: str = "0.0.0.0") -> MultiprocessExporter:
        directory = tempfile.mkdtemp(prefix="hexq-metrics-")
        previous = (os.environ.get(ENV), values.ValueClass)
        # Children inherit the variable; prometheus_client reads it whenever a process opens its files.
        os.environ[ENV] = directory
        try:
            # prometheus_client picks its value class when first imported, and the app may have imported it
            # before the variable was set: switch to per-process files explicitly.
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            metrics = PrometheusMetrics(registry=None)
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            try:
                server, thread = start_http_server(port, host, registry)
            except OSError as exc:
                raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        except BaseException:
            _restore(*previous)
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cls(directory, metrics, server, thread, previous)

    def process_dead(self, pid: int) -> None:
        """Bookkeeping for a child that exited: its counters stay (they are totals), live gauges go."""
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]

    def in_child(self) -> None:
        """Close the listening socket a forked child inherited: only the parent answers scrapes, and the
        port must be free once the parent is gone."""
        self._server.socket.close()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        _restore(*self._previous)
        shutil.rmtree(self.directory, ignore_errors=True)


def _restore(env: str | None, value_class: Any) -> None:
    values.ValueClass = value_class
    if env is None:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = env
