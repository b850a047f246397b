"""Prometheus metrics: the adapter on its own, and a real worker's ``/metrics`` summing its children, on
each broker (the tests that take ``cluster`` or ``broker_url``). The tasks count their runs in the
session's Redis, whatever the broker."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis_server import free_port
from workers import ROOT, Cluster, Proc, wait_for

from hexq import ConfigError, HexQ
from hexq.adapters.prometheus.metrics import PrometheusMetrics

APP = "tests.integration.apps.metrics_tasks:app"


class MetricsCluster(Cluster):
    def start(self, command: str, *args: str, **env: str) -> Proc:
        proc = Proc([command, f"--app={APP}", *args], self.env(**env), self.tmp / f"{command}-{len(self.procs)}.log")
        self.procs.append(proc)
        return proc


@pytest.fixture
def cluster(broker_url: str, redis_url: str, hexq_prefix: str, tmp_path: Path) -> Iterator[MetricsCluster]:
    running = MetricsCluster(broker_url, hexq_prefix, tmp_path, book_url=redis_url)
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def tasks(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("HEXQ_TEST_URL", cluster.url)
    monkeypatch.setenv("HEXQ_TEST_BOOK_URL", cluster.book_url)
    monkeypatch.setenv("HEXQ_TEST_PREFIX", cluster.prefix)
    sys.modules.pop("tests.integration.apps.metrics_tasks", None)
    import tests.integration.apps.metrics_tasks as module

    try:
        yield module
    finally:
        sys.modules.pop("tests.integration.apps.metrics_tasks", None)


def scrape(port: int) -> dict[str, float]:
    """``name{label="v",...}`` -> value, labels in the order the exposition prints them (sorted)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def series(name: str, **labels: str) -> str:
    return name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")


def test_counters_histogram_and_gauges_in_one_process() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    metrics.enqueued("ok", "fast", 3)
    for outcome in ("succeeded", "retried", "retried", "dead_lettered"):
        metrics.started("ok", "fast")
        metrics.finished("ok", "fast", outcome, 0.2)
    metrics.started("ok", "fast")
    metrics.finished("ok", "fast", "expired", 0.2)  # failed, and its retry would have missed the deadline
    metrics.expired("ok", "fast")
    metrics.expired("ok", "fast")  # and one that never started
    metrics.recovered(2)
    metrics.recovered(0)
    metrics.queue_depths({"fast": 4}, {"fast": 1}, {"fast": 2})

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    labels = {"task": "ok", "queue": "fast"}
    assert value("hexq_tasks_enqueued_total", **labels) == 3
    assert value("hexq_tasks_started_total", **labels) == 5
    assert value("hexq_tasks_succeeded_total", **labels) == 1
    assert value("hexq_tasks_retried_total", **labels) == 2
    assert value("hexq_tasks_dead_lettered_total", **labels) == 1
    assert value("hexq_tasks_failed_total", **labels) == 4
    assert value("hexq_tasks_expired_total", **labels) == 2
    assert value("hexq_tasks_recovered_after_crash_total") == 2
    assert value("hexq_task_duration_seconds_count", **labels) == 5
    assert value("hexq_task_duration_seconds_bucket", le="0.25", **labels) == 5
    assert value("hexq_task_duration_seconds_bucket", le="0.1", **labels) == 0
    assert (value("hexq_queue_pending", queue="fast"), value("hexq_queue_eta", queue="fast"),
            value("hexq_queue_in_flight", queue="fast")) == (4, 1, 2)


def test_producer_counts_enqueued_tasks_by_task_and_queue(broker_url: str, hexq_prefix: str) -> None:
    registry = CollectorRegistry()
    app = HexQ(url=broker_url, prefix=hexq_prefix, queues=["a", "b"], metrics=PrometheusMetrics(registry=registry))

    @app.task(queue="a")
    def job(n: int) -> None: ...

    job.delay(1)
    job.delay_many([(2,), (3,)])
    job.delay(4, queue="b")
    assert registry.get_sample_value("hexq_tasks_enqueued_total", {"task": "job", "queue": "a"}) == 3
    assert registry.get_sample_value("hexq_tasks_enqueued_total", {"task": "job", "queue": "b"}) == 1


def test_worker_serves_the_sum_of_its_children(cluster: MetricsCluster, tasks: Any) -> None:
    port = free_port()
    worker = cluster.worker(f"--metrics-port={port}", "--metrics-host=127.0.0.1", "--concurrency=2")
    for _ in range(3):
        tasks.ok.delay()
    tasks.ok.delay(queue="slow")
    tasks.flaky.delay()
    tasks.broken.delay()

    def ran(name: str) -> int:
        return int(cluster.book.get(f"{cluster.prefix}-ran-{name}") or 0)

    wait_for(lambda: (ran("ok"), ran("flaky"), ran("broken")) == (4, 3, 1), 30, f"the tasks to run:\n{cluster.logs()}")
    # Alone in the queues, so the dying child holds no other reserved task: exactly one is recovered.
    tasks.crash_once.delay()
    wait_for(lambda: ran("crash_once") == 2, 30, f"crash_once to run twice:\n{cluster.logs()}")
    expected = {
        ("started", "ok", "fast"): 3, ("succeeded", "ok", "fast"): 3, ("failed", "ok", "fast"): 0,
        ("started", "ok", "slow"): 1, ("succeeded", "ok", "slow"): 1,
        ("started", "flaky", "slow"): 3, ("retried", "flaky", "slow"): 2, ("dead_lettered", "flaky", "slow"): 1,
        ("failed", "flaky", "slow"): 3, ("succeeded", "flaky", "slow"): 0,
        ("started", "broken", "fast"): 1, ("dead_lettered", "broken", "fast"): 1, ("failed", "broken", "fast"): 1,
        ("retried", "broken", "fast"): 0,
        # The first run was killed with its child: started twice, finished (and succeeded) once.
        ("started", "crash_once", "slow"): 2, ("succeeded", "crash_once", "slow"): 1,
        ("failed", "crash_once", "slow"): 0,
    }

    def counters() -> dict[tuple[str, str, str], float | None]:
        samples = scrape(port)
        return {key: samples.get(series(f"hexq_tasks_{key[0]}_total", task=key[1], queue=key[2]))
                for key in expected}

    wait_for(lambda: counters() == expected, 10, f"counters {counters()} to be {expected}")
    samples = scrape(port)
    assert samples["hexq_tasks_recovered_after_crash_total"] == 1
    for task, queue, runs in (("ok", "fast", 3), ("ok", "slow", 1), ("flaky", "slow", 3), ("broken", "fast", 1),
                              ("crash_once", "slow", 1)):
        assert samples[series("hexq_task_duration_seconds_count", task=task, queue=queue)] == runs
        assert samples[series("hexq_task_duration_seconds_bucket", task=task, queue=queue, le="+Inf")] == runs
    # Queue depths are reported every few heartbeats by the parent.
    wait_for(lambda: all(series(f"hexq_queue_{kind}", queue=queue) in scrape(port)
                         for kind in ("pending", "eta", "in_flight") for queue in ("fast", "slow")), 15,
             f"queue gauges in {sorted(scrape(port))}")
    samples = scrape(port)
    assert samples[series("hexq_queue_pending", queue="fast")] == 0
    assert samples[series("hexq_queue_in_flight", queue="slow")] == 0

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    directory = re.search(r"files in (\S+)\)", worker.output())
    assert directory is not None, worker.output()
    assert not Path(directory.group(1)).exists(), "the multiprocess directory outlived the worker"
    with pytest.raises(OSError):
        scrape(port)


def test_metrics_port_without_prometheus_client_fails_at_start_with_the_install_hint(tmp_path: Path) -> None:
    # None in sys.modules makes `import prometheus_client` fail as if it were not installed.
    code = ("import sys; sys.modules['prometheus_client'] = None; from hexq.entrypoints.cli import main; "
            f"sys.exit(main(['worker', '--app={APP}', '--metrics-port=9', '--concurrency=1']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "pip install 'hexq[prometheus]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_metrics_port_from_the_app_and_its_validation(cluster: MetricsCluster, tasks: Any) -> None:
    for bad in (0, 70000, "9100", True):
        with pytest.raises(ConfigError, match="metrics_port"):
            HexQ(metrics_port=bad)
    port = free_port()
    cluster.worker(HEXQ_TEST_METRICS_PORT=str(port))
    tasks.ok.delay()
    wait_for(lambda: scrape(port).get(series("hexq_tasks_succeeded_total", task="ok", queue="fast")) == 1, 20,
             f"the task to be counted:\n{cluster.logs()}")


def test_metrics_port_in_use_fails_at_start(cluster: MetricsCluster) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = cluster.worker(f"--metrics-port={port}", "--metrics-host=127.0.0.1", wait=False)
        assert worker.wait(30) == 2, worker.output()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in worker.output()
    assert "Traceback" not in worker.output()


def test_recycled_children_keep_their_counts_and_leave_no_files_behind(cluster: MetricsCluster, tasks: Any) -> None:
    port = free_port()
    worker = cluster.worker(f"--metrics-port={port}", "--metrics-host=127.0.0.1", "--concurrency=2",
                            HEXQ_TEST_MAX_TASKS="1")
    runs = 12
    for _ in range(runs):
        tasks.ok.delay()
    wait_for(lambda: int(cluster.book.get(f"{cluster.prefix}-ran-ok") or 0) == runs, 60,
             f"{runs} runs:\n{cluster.logs()}")
    labels = {"task": "ok", "queue": "fast"}
    wait_for(lambda: scrape(port).get(series("hexq_tasks_succeeded_total", **labels)) == runs, 10,
             f"{runs} successes in {scrape(port)}")
    samples = scrape(port)
    assert samples[series("hexq_tasks_started_total", **labels)] == runs
    assert samples[series("hexq_task_duration_seconds_count", **labels)] == runs
    assert samples[series("hexq_task_duration_seconds_bucket", le="+Inf", **labels)] == runs
    assert samples[series("hexq_task_duration_seconds_bucket", le="0.005", **labels)] <= runs
    # Each child exits after one task: the dead ones are folded into one archive file per kind.
    directory = re.search(r"files in (\S+)\)", worker.output())
    assert directory is not None
    folder = Path(directory.group(1))

    def listing() -> list[str]:
        return sorted(p.name for p in folder.iterdir())

    # A child that exits right now is being folded (archive written to *.new, then renamed): wait for a
    # settled directory rather than race the fold.
    wait_for(lambda: not [f for f in listing() if not f.endswith(".db")], 10, f"a settled folder: {listing()}")
    files = listing()
    assert len(files) <= 8, files  # parent counter + gauge, 2 archives, 2 live children x (counter, histogram)
    assert "counter_archive.db" in files and "histogram_archive.db" in files, files


def test_a_hard_timeout_counts_as_failed_and_dead_lettered(cluster: MetricsCluster, tasks: Any) -> None:
    port = free_port()
    cluster.worker(f"--metrics-port={port}", "--metrics-host=127.0.0.1", "--concurrency=1")
    tasks.stuck.delay()
    wait_for(lambda: len(tasks.app.broker.dead_letters()) == 1, 20, f"the dead letter:\n{cluster.logs()}")
    labels = {"task": "stuck", "queue": "fast"}
    # The counter is written right after the dead letter: wait for it rather than race it.
    wait_for(lambda: scrape(port).get(series("hexq_tasks_dead_lettered_total", **labels)) == 1, 10, "the counter")
    samples = scrape(port)
    assert samples.get(series("hexq_tasks_started_total", **labels)) == 1
    assert samples.get(series("hexq_tasks_dead_lettered_total", **labels)) == 1
    assert samples.get(series("hexq_tasks_failed_total", **labels)) == 1


def test_a_task_past_its_deadline_counts_as_expired(cluster: MetricsCluster, tasks: Any) -> None:
    tasks.ok.options(expires=0.3).delay()
    time.sleep(0.6)  # no worker yet: the deadline passes while the task waits in its queue
    port = free_port()
    cluster.worker(f"--metrics-port={port}", "--metrics-host=127.0.0.1", "--concurrency=1")
    labels = {"task": "ok", "queue": "fast"}
    wait_for(lambda: scrape(port).get(series("hexq_tasks_expired_total", **labels)) == 1, 20,
             f"the expired counter:\n{cluster.logs()}")
    assert scrape(port).get(series("hexq_tasks_started_total", **labels)) is None
    assert int(cluster.book.get(f"{cluster.prefix}-ran-ok") or 0) == 0
