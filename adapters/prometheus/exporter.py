"""``/metrics`` for a worker: the parent and its forked children each write their own files in a private
directory (prometheus_client's multiprocess mode), and the parent serves their sum over HTTP."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, multiprocess, start_http_server, values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.registry import Collector

from hexq.adapters.prometheus.metrics import PrometheusMetrics
from hexq.core.errors import ConfigError

ENV = "PROMETHEUS_MULTIPROC_DIR"
# Kinds whose values from every process are summed, so a dead child's file can be folded into one archive.
_SUMMED_KINDS = ("counter", "histogram", "summary")


# A child creates its file, then sizes it and writes its header: a scrape in between found an empty file,
# prometheus_client failed to read its header (struct.error), and the scrape answered 500. Such a file holds
# no value yet, so it is left out until its header is written.
_HEADER_BYTES = 8


def _started(path: str) -> bool:
    try:
        return os.path.getsize(path) >= _HEADER_BYTES
    except OSError:  # gone meanwhile (folded by process_dead)
        return False


class _Files(Collector):
    """The multiprocess directory. Every child leaves files behind and a scrape reads them all, so a
    worker that recycles its children would be scraped slower and slower: a dead child's files are folded
    into one archive file per kind, under a lock that scrapes take too (they never see a value twice)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            return list(multiprocess.MultiProcessCollector.merge(self._all(), accumulate=True))  # type: ignore[no-untyped-call]

    def _all(self) -> list[str]:
        return [path for name in os.listdir(self.directory) if name.endswith(".db")
                and _started(path := os.path.join(self.directory, name))]

    def process_dead(self, pid: int) -> None:
        multiprocess.mark_process_dead(pid, self.directory)  # type: ignore[no-untyped-call]
        with self._lock:
            for kind in _SUMMED_KINDS:
                dead = os.path.join(self.directory, f"{kind}_{pid}.db")
                if os.path.exists(dead):
                    self._fold(kind, dead)

    def _fold(self, kind: str, dead: str) -> None:
        archive = os.path.join(self.directory, f"{kind}_archive.db")
        sources = [archive, dead] if os.path.exists(archive) else [dead]
        # accumulate=False keeps the values as stored (histogram buckets not cumulative, no _count).
        merged = multiprocess.MultiProcessCollector.merge(sources, accumulate=False)  # type: ignore[no-untyped-call]
        staging = archive + ".new"  # not *.db: a scrape never reads it
        target = MmapedDict(staging)  # type: ignore[no-untyped-call]
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                   metric.documentation)
                    target.write_value(key, sample.value, 0.0)  # type: ignore[no-untyped-call]
        finally:
            target.close()  # type: ignore[no-untyped-call]
        os.replace(staging, archive)
        os.remove(dead)


class MultiprocessExporter:
    """``prepare()`` in the worker parent before any child (or the fork server) is forked, so that they all
    inherit the multiprocess directory and ``metrics``; then ``serve()``, which starts the HTTP thread."""

    def __init__(self, files: _Files, metrics: PrometheusMetrics, previous: tuple[str | None, Any]) -> None:
        self.directory = files.directory
        self.metrics = metrics
        self.port: int | None = None
        self._files = files
        self._previous = previous
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def prepare(cls) -> MultiprocessExporter:
        directory = tempfile.mkdtemp(prefix="hexq-metrics-")
        previous = (os.environ.get(ENV), values.ValueClass)
        # Children inherit the variable; prometheus_client reads it whenever a process opens its files.
        os.environ[ENV] = directory
        # prometheus_client picks its value class when first imported, and the app may have imported it
        # before the variable was set: switch to per-process files explicitly.
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
        return cls(_Files(directory), PrometheusMetrics(registry=None), previous)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        registry = CollectorRegistry()
        registry.register(self._files)
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as exc:
            raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.port = self._server.server_port

    def process_dead(self, pid: int) -> None:
        """Bookkeeping for a child that exited: its totals are kept (folded into the archive), its live
        gauges dropped."""
        self._files.process_dead(pid)

    def close(self) -> None:
        if self._server is not None and self._thread is not None:
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
