"""The Metrics port on prometheus_client. Label values are task names and queue names, both declared by
the app, so the number of series stays bounded."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

# Tasks run from milliseconds to many minutes: the default buckets stop at 10s.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                    3600.0, float("inf"))
_TASK_LABELS = ("task", "queue")


@attrs.frozen
class _Series:
    """The labelled children of one (task, queue), looked up once: ``labels()`` costs a lock and a dict."""

    started: Counter
    succeeded: Counter
    failed: Counter
    retried: Counter
    dead_lettered: Counter
    duration: Histogram


class PrometheusMetrics:
    """Counters ``hexq_tasks_{enqueued,started,succeeded,failed,retried,dead_lettered,expired}_total`` by task
    and queue, ``hexq_tasks_recovered_after_crash_total``, the histogram ``hexq_task_duration_seconds`` by task
    and queue, and gauges ``hexq_queue_{pending,eta,in_flight}`` by queue.

    ``registry`` is where the metrics are registered: prometheus_client's default one (what
    ``start_http_server`` serves in a single process), another, or None for a worker in multiprocess mode,
    whose endpoint reads the children's files instead (see ``exporter.py``).
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY, namespace: str = "hexq",
                 buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        def counter(name: str, doc: str, labels: Sequence[str] = _TASK_LABELS) -> Counter:
            return Counter(name, doc, labels, namespace=namespace, registry=registry)

        self._enqueued = counter("tasks_enqueued", "Tasks stored in the broker by producers.")
        self._started = counter("tasks_started", "Task runs started by workers.")
        self._succeeded = counter("tasks_succeeded", "Task runs that returned normally.")
        self._failed = counter("tasks_failed", "Task runs that failed: retried plus dead-lettered.")
        self._retried = counter("tasks_retried", "Failed task runs scheduled for another attempt.")
        self._dead_lettered = counter("tasks_dead_lettered", "Failed task runs moved to the dead-letter list.")
        self._expired = counter("tasks_expired", "Tasks dropped unrun because their deadline (expires) passed.")
        self._recovered = counter("tasks_recovered_after_crash", "Tasks put back in their queues after the "
                                  "process running them died.", ())
        self._duration = Histogram("task_duration_seconds", "Wall-clock time of task runs.", _TASK_LABELS,
                                   namespace=namespace, registry=registry, buckets=tuple(buckets))
        # Only the worker parent sets these: in multiprocess mode the newest value wins.
        self._pending, self._eta, self._in_flight = (
            Gauge(f"queue_{name}", doc, ("queue",), namespace=namespace, registry=registry,
                  multiprocess_mode="mostrecent")
            for name, doc in (("pending", "Tasks waiting in the queue."),
                              ("eta", "Tasks scheduled for later in the queue."),
                              ("in_flight", "Tasks of the queue reserved by workers and not yet finished.")))
        self._series: dict[tuple[str, str], _Series] = {}

    def _for(self, task: str, queue: str) -> _Series:
        series = self._series.get((task, queue))
        if series is None:
            series = _Series(self._started.labels(task, queue), self._succeeded.labels(task, queue),
                             self._failed.labels(task, queue), self._retried.labels(task, queue),
                             self._dead_lettered.labels(task, queue), self._duration.labels(task, queue))
            self._series[(task, queue)] = series
        return series

    def enqueued(self, task: str, queue: str, count: int) -> None:
        self._enqueued.labels(task, queue).inc(count)

    def started(self, task: str, queue: str) -> None:
        self._for(task, queue).started.inc()

    def finished(self, task: str, queue: str, outcome: str, seconds: float) -> None:
        series = self._for(task, queue)
        series.duration.observe(seconds)
        if outcome == "succeeded":
            series.succeeded.inc()
        elif outcome == "retried":
            series.failed.inc()
            series.retried.inc()
        elif outcome == "dead_lettered":
            series.failed.inc()
            series.dead_lettered.inc()
        elif outcome == "expired":  # failed, and its retry would have started after its deadline
            series.failed.inc()

    def recovered(self, count: int) -> None:
        if count:
            self._recovered.inc(count)

    def expired(self, task: str, queue: str) -> None:
        self._expired.labels(task, queue).inc()

    def queue_depths(self, pending: dict[str, int], eta: dict[str, int], in_flight: dict[str, int]) -> None:
        for gauge, depths in ((self._pending, pending), (self._eta, eta), (self._in_flight, in_flight)):
            for queue, depth in depths.items():
                gauge.labels(queue).set(depth)
