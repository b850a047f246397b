"""Traces across a producer and a real worker (``HexQ(tracing=...)``, adapters/otel), on each broker.

The producer is this test process: its spans go to an InMemorySpanExporter. The worker's processes (parent and
children) append theirs to a JSON lines file (``tests/integration/apps/spans.py``), read once the worker exits.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from workers import Cluster, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def spans_file(tmp_path: Path) -> str:
    return str(tmp_path / "spans.jsonl")


@pytest.fixture
def producer(cluster: Cluster) -> Iterator[tuple[Any, Any]]:
    """The test app in this process, tracing into memory; and the spans module (its exporter, the file reader)."""
    with cluster.app_env(HEXQ_TEST_SPANS="memory") as tasks:
        from tests.integration.apps import spans

        spans.MEMORY.clear()
        yield tasks, spans


def sent(spans: Any, name: str) -> dict[str, Any]:
    """The producer's span sending task ``name``, as a record like the worker's."""
    [span] = [s for s in spans.MEMORY.get_finished_spans() if s.name == f"send {name}"]
    return spans.as_record(span)  # type: ignore[no-any-return]


def stop(worker: Any) -> None:
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()


def test_a_trace_goes_from_the_enqueue_through_a_retry_to_success(
    cluster: Cluster, producer: tuple[Any, Any], spans_file: str,
) -> None:
    tasks, spans = producer
    worker = cluster.worker("--concurrency=1", HEXQ_TEST_SPANS=spans_file)
    task_id = tasks.fail_once.delay("traced")
    cluster.wait_for_tags(1, suffix="traced")
    stop(worker)  # its children export their spans as they exit (the file's batch delay is a minute)

    send = sent(spans, "fail_once")
    runs = [s for s in spans.read(spans_file) if s["name"] == "process fail_once"]
    assert [r["attributes"]["hexq.attempt"] for r in runs] == [1, 2], runs
    failed, succeeded = runs
    # One trace: the producer's span, then each attempt as its child.
    assert send["kind"] == "PRODUCER" and send["parent_id"] is None
    assert {r["trace_id"] for r in runs} == {send["trace_id"]}
    assert {r["parent_id"] for r in runs} == {send["span_id"]}
    assert {r["kind"] for r in runs} == {"CONSUMER"}
    assert send["attributes"]["messaging.message.id"] == task_id
    for run in runs:
        assert run["attributes"]["messaging.system"] == "hexq"
        assert run["attributes"]["messaging.message.id"] == task_id
        assert run["attributes"]["messaging.destination.name"] == "low"  # the app's default queue
        assert run["attributes"]["hexq.task.name"] == "fail_once"
        assert run["pid"] in {int(line.split("[")[1].split("]")[0]) for line in worker.output().splitlines()
                              if "hexq.task: fail_once[" in line}  # the child that logged its line
    assert (failed["attributes"]["hexq.outcome"], failed["attributes"]["hexq.failure"]) == ("retried", "exception")
    assert failed["status"] == "ERROR" and failed["events"] == ["exception"]
    assert failed["description"] == "ConnectionError: the service is down the first time"
    assert succeeded["attributes"]["hexq.outcome"] == "succeeded" and succeeded["status"] == "UNSET"
    assert succeeded["start"] > failed["end"]


def test_a_crash_recovery_and_a_hard_kill_stay_in_the_producers_trace(
    cluster: Cluster, producer: tuple[Any, Any], spans_file: str,
) -> None:
    tasks, spans = producer
    worker = cluster.worker("--concurrency=1", HEXQ_TEST_SPANS=spans_file, HEXQ_TEST_SPANS_DELAY_MS="100")
    crash_id = tasks.crash_once.delay("crashy")
    cluster.wait_for_tags(1, suffix="crashy")
    # Its child is killed next (the hard timeout below): wait until the redelivered run's span left it.
    wait_for(lambda: any(s["name"] == "process crash_once" for s in spans.read(spans_file)), 10, "the run's span")
    hard_id = tasks.overrun_hard.delay("hard")
    wait_for(lambda: cluster.dead_count() == 1, 20, "the hard-killed task's dead letter")
    stop(worker)
    found = spans.read(spans_file)

    crashed = sent(spans, "crash_once")
    assert crashed["attributes"]["messaging.message.id"] == crash_id
    # The first run died with its process, and its span with it; the redelivery is the producer's child.
    [recovered] = [s for s in found if s["name"] == "process crash_once"]
    assert (recovered["trace_id"], recovered["parent_id"]) == (crashed["trace_id"], crashed["span_id"])
    assert (recovered["attributes"]["hexq.attempt"], recovered["attributes"]["hexq.outcome"]) == (2, "succeeded")

    killed = sent(spans, "overrun_hard")
    assert killed["attributes"]["messaging.message.id"] == hard_id
    runs = [s for s in found if s["name"] == "process overrun_hard"]
    # The children never ended these spans: the worker parent, which killed them, made them.
    assert {r["pid"] for r in runs} == {worker.pid}, runs
    assert [(r["attributes"]["hexq.attempt"], r["attributes"]["hexq.outcome"]) for r in runs] == [
        (1, "retried"), (2, "dead_lettered")]
    assert {(r["trace_id"], r["parent_id"]) for r in runs} == {(killed["trace_id"], killed["span_id"])}
    assert all(r["attributes"]["hexq.failure"] == "hard_timeout" and r["status"] == "ERROR" for r in runs)
    assert all(r["end"] - r["start"] >= 500_000_000 for r in runs)  # backdated by the hard timeout, 0.5 s
