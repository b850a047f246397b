"""Traces (adapters/otel) with the OpenTelemetry SDK's in-memory exporter: producer and run spans, the context in
the envelope, retries, hard kills, broadcasts, cron ticks, and malformed contexts."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from service_fixtures import make_app
from test_runner import make_world

from hexq import ConfigError, CronTask, HexQ, current_attempt
from hexq.adapters.memory import FakeClock
from hexq.adapters.otel import OtelTracing
from hexq.core.errors import SoftTimeout, TaskCancelled
from hexq.core.message import TaskMessage
from hexq.core.outgoing import TaskFactory, TaskIds
from hexq.core.services.scheduler import Scheduler
from hexq.entrypoints import options as options_module


class Traces:
    """A TracerProvider of its own (never the global one) whose finished spans the test reads."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.made = 0

    def make_provider(self) -> TracerProvider:
        """What an app passes as ``HexQ(tracing=...)``; counts how often hexq asks."""
        self.made += 1
        return self.provider

    @property
    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans if span.name == name]


@pytest.fixture
def traces() -> Iterator[Traces]:
    traces = Traces()
    yield traces
    traces.provider.shutdown()


def inline(traces: Traces, **options: Any) -> HexQ:
    return HexQ(url="memory://", clock=FakeClock(), tracing=traces.make_provider, **options)


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ctx(span: ReadableSpan) -> Any:
    assert span.context is not None
    return span.context


def test_a_delay_is_a_producer_span_and_its_run_a_consumer_span_that_is_its_child(traces: Traces) -> None:
    app = inline(traces)
    job = app.task(lambda x: None, name="job")
    with traces.provider.get_tracer("web").start_as_current_span("request") as request:
        task_id = job.delay(1)
    [send] = traces.named("send job")
    [run] = traces.named("process job")
    assert send.kind == SpanKind.PRODUCER and run.kind == SpanKind.CONSUMER
    assert parent_id(send) == request.get_span_context().span_id  # the caller's span is the producer's parent
    assert parent_id(run) == ctx(send).span_id
    assert ctx(run).trace_id == ctx(send).trace_id == request.get_span_context().trace_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "hexq", "messaging.operation.type": "send", "messaging.operation.name": "send",
        "hexq.task.name": "job", "messaging.destination.name": "default", "messaging.message.id": task_id}
    assert dict(run.attributes or {}) == {
        "messaging.system": "hexq", "messaging.operation.type": "process", "messaging.operation.name": "process",
        "messaging.destination.name": "default", "messaging.message.id": task_id, "hexq.task.name": "job",
        "hexq.attempt": 1, "hexq.outcome": "succeeded"}
    assert run.status.status_code == StatusCode.UNSET
    assert traces.made == 1  # the provider is made once in a process, however many spans it makes


def test_without_an_active_span_a_delay_starts_a_trace(traces: Traces) -> None:
    app = inline(traces)
    job = app.task(lambda: None, name="job")
    job.delay()
    [send] = traces.named("send job")
    assert send.parent is None
    assert traces.named("process job")[0].parent is not None


def stored_envelope(app: HexQ, task_id: str) -> dict[str, Any]:
    delivery = app.broker.lookup(task_id)
    assert delivery is not None and delivery.payload is not None
    return json.loads(delivery.payload)  # type: ignore[no-any-return]


def test_the_envelope_carries_the_w3c_context_only_when_tracing(traces: Traces) -> None:
    traced, _, _ = make_app(tracing=traces.make_provider)
    plain, _, _ = make_app()
    traced_job = traced.task(lambda: None, name="job")
    plain_job = plain.task(lambda: None, name="job")
    envelope = stored_envelope(traced, traced_job.delay())
    [send] = traces.named("send job")
    expected = f"00-{ctx(send).trace_id:032x}-{ctx(send).span_id:016x}-{ctx(send).trace_flags:02x}"
    assert envelope["trace"] == {"traceparent": expected}
    assert "trace" not in stored_envelope(plain, plain_job.delay())


def test_tracing_true_with_no_provider_set_writes_nothing() -> None:
    # OpenTelemetry's global provider is a no-op until the application sets one (these tests never do).
    app, _, _ = make_app(tracing=True)
    job = app.task(lambda: None, name="job")
    assert "trace" not in stored_envelope(app, job.delay())


def test_a_batch_is_one_span_whose_context_every_task_carries(traces: Traces) -> None:
    app = inline(traces)
    job = app.task(lambda n: None, name="job")
    ids = job.delay_many([job.bind(n) for n in range(3)])
    [send] = traces.named("send job")
    assert send.attributes is not None and send.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in send.attributes
    runs = traces.named("process job")
    assert sorted(r.attributes["messaging.message.id"] for r in runs if r.attributes) == sorted(ids)
    assert {parent_id(r) for r in runs} == {ctx(send).span_id}


def test_apply_and_broadcast_carry_the_context_too(traces: Traces) -> None:
    app = inline(traces)
    job = app.task(lambda x=0: None, name="job")
    job.apply(args=[1])
    job.broadcast()
    send, broadcast = traces.named("send job") + traces.named("broadcast job")
    assert broadcast.attributes is not None and broadcast.attributes["messaging.operation.name"] == "broadcast"
    assert [parent_id(r) for r in traces.named("process job")] == [ctx(send).span_id, ctx(broadcast).span_id]


def test_a_retry_keeps_the_producer_context_and_each_attempt_is_its_child(traces: Traces) -> None:
    app = inline(traces)

    @app.task(retry_on=ConnectionError, max_retries=3, backoff=0.0)
    def flaky() -> None:
        if current_attempt.get() < 3:
            raise ConnectionError("down")

    flaky.delay()
    [send] = traces.named("send flaky")
    runs = traces.named("process flaky")
    assert [r.attributes["hexq.attempt"] for r in runs if r.attributes] == [1, 2, 3]
    assert [r.attributes["hexq.outcome"] for r in runs if r.attributes] == ["retried", "retried", "succeeded"]
    assert {parent_id(r) for r in runs} == {ctx(send).span_id}
    assert {ctx(r).trace_id for r in runs} == {ctx(send).trace_id}
    failed = runs[0]
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.status.description == "ConnectionError: down"
    assert failed.attributes is not None and failed.attributes["hexq.failure"] == "exception"
    assert failed.attributes["error.type"] == "ConnectionError"
    [event] = failed.events
    assert event.name == "exception" and event.attributes is not None
    assert event.attributes["exception.message"] == "down"


def test_a_dead_letter_and_a_soft_timeout_are_outcomes_with_an_error_status(traces: Traces) -> None:
    app = inline(traces, max_retries=0)

    @app.task
    def boom() -> None:
        raise ValueError("no")

    @app.task(soft_timeout=1.0)
    def slow() -> None:
        raise SoftTimeout("alarm")  # what the SIGALRM handler raises in a worker child

    boom.delay()
    slow.delay()
    [dead] = traces.named("process boom")
    [timed_out] = traces.named("process slow")
    assert dead.attributes is not None and dead.attributes["hexq.outcome"] == "dead_lettered"
    assert timed_out.attributes is not None and timed_out.attributes["hexq.outcome"] == "dead_lettered"
    assert timed_out.attributes["hexq.failure"] == "soft_timeout"
    assert timed_out.status.status_code == StatusCode.ERROR


def test_the_task_body_runs_inside_its_span(traces: Traces) -> None:
    app = inline(traces)
    tracer = traces.provider.get_tracer("app")

    @app.task
    def job() -> None:
        with tracer.start_as_current_span("query"):
            pass

    job.delay()
    [query] = traces.named("query")
    [run] = traces.named("process job")
    assert parent_id(query) == ctx(run).span_id


def test_an_async_task_body_runs_inside_its_span_too(traces: Traces) -> None:
    app = inline(traces)
    tracer = traces.provider.get_tracer("app")

    @app.task
    async def job() -> None:
        await asyncio.sleep(0)
        with tracer.start_as_current_span("query"):
            pass

    job.delay()
    assert parent_id(traces.named("query")[0]) == ctx(traces.named("process job")[0]).span_id


def carrier_of(traces: Traces) -> tuple[dict[str, str], ReadableSpan]:
    tracing = OtelTracing(traces.make_provider)
    span = tracing.send("stuck", 1)
    assert span.carrier is not None
    span.end(())
    return span.carrier, traces.spans[-1]


def test_a_hard_kill_gets_a_span_from_the_worker_parent_backdated_to_when_the_run_began(traces: Traces) -> None:
    world = make_world(tracing=OtelTracing(traces.make_provider), max_retries=1)
    world.task("stuck", lambda: None, hard_timeout=60.0)
    carrier, send = carrier_of(traces)
    message = TaskMessage("h1", "stuck", "default", enqueued_at=world.clock.now(), trace=carrier)
    world.put(world.codec.encode(message), "h1")
    world.runner.fail_outside(world.reserve(), "hard_timeout", consumer="dead-child")
    [run] = traces.named("process stuck")
    assert parent_id(run) == ctx(send).span_id
    assert run.end_time is not None and run.start_time is not None
    assert run.end_time - run.start_time >= 60 * 10**9
    assert run.attributes is not None
    assert (run.attributes["hexq.outcome"], run.attributes["hexq.failure"]) == ("retried", "hard_timeout")
    assert run.status.status_code == StatusCode.ERROR and run.status.description == "hard timeout"
    # The retried envelope keeps the producer's context, so its next attempt joins the same trace.
    assert world.stored("h1").trace == carrier


class StaleReads:
    """A scheduler's view of the cron store that read the last tick just before another scheduler claimed it."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def last_cron_tick(self, key: str) -> int | None:
        return None

    def claim_cron_tick(self, key: str, tick_ms: int, task: Any) -> bool:
        return bool(self._store.claim_cron_tick(key, tick_ms, task))


def test_a_cron_tick_starts_a_trace_of_its_own_and_says_whether_it_fired(traces: Traces) -> None:
    app, broker, clock = make_app(schedules=[CronTask("* * * * * *", "job")], tracing=traces.make_provider)
    app.task(lambda: None, name="job")
    schedulers = [Scheduler(app.registry, TaskFactory(app.codec, TaskIds(clock, lambda: "node0001")), store, clock,
                            app.schedules, tracing=OtelTracing(traces.make_provider))
                  for store in (broker, StaleReads(broker))]
    for scheduler in schedulers:
        scheduler.tick()
    clock.advance(1.0)
    with traces.provider.get_tracer("web").start_as_current_span("unrelated"):
        for scheduler in schedulers:
            scheduler.tick()
    ticks = traces.named("cron job")
    assert len(ticks) == 2 and all(t.parent is None and t.kind == SpanKind.PRODUCER for t in ticks)
    assert [t.attributes["hexq.cron.fired"] for t in ticks if t.attributes] == [True, False]
    [delivery] = broker.reserve("c", app.queues.names, 10, int(clock.now() * 1000), 10_000).deliveries
    assert delivery.payload is not None
    assert json.loads(delivery.payload)["trace"]["traceparent"].split("-")[1] == f"{ctx(ticks[0]).trace_id:032x}"


MALFORMED = [
    ("a list", [1, 2], "expected an object of strings, got list"),
    ("a number inside", {"traceparent": 7}, "'traceparent' is a int, not a string"),
    ("too big", {"traceparent": "x" * 5000}, "'traceparent' is 5000 characters long, over 1024"),
    ("not W3C", {"traceparent": "garbage"}, "no valid W3C traceparent: 'garbage'"),
]


@pytest.mark.parametrize(("label", "value", "warning"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_a_malformed_trace_context_is_ignored_with_a_warning_and_the_task_runs(
    label: str, value: Any, warning: str, traces: Traces, caplog: pytest.LogCaptureFixture,
) -> None:
    world = make_world(tracing=OtelTracing(traces.make_provider))
    envelope = json.loads(world.codec.encode(TaskMessage("m1", "add", "default", (1, 2), enqueued_at=1.0)))
    world.put(json.dumps({**envelope, "trace": value}), "m1")
    with caplog.at_level(logging.WARNING, logger="hexq"):
        world.run()
    assert world.calls == [("add", 3, 1)]
    assert world.dead_reasons() == [] and world.stats() == (0, 0, 0)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert record.getMessage().startswith("task m1: ignoring the trace context in its envelope (")
    assert warning in record.getMessage()
    [run] = traces.named("process add")
    assert run.parent is None  # a trace of its own


def test_an_exception_whose_str_raises_still_ends_the_span(traces: Traces) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    app = inline(traces, max_retries=0)

    @app.task
    def boom() -> None:
        raise Unprintable()

    boom.delay()
    [run] = traces.named("process boom")
    assert run.status.description == "Unprintable: <unprintable Unprintable>"


def test_tracing_must_be_a_flag_or_a_provider_factory_and_needs_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="tracing must be True, False or a function returning an OpenTelemetry "
                                          "TracerProvider, got 'yes'"):
        HexQ(url="memory://", tracing="yes")  # type: ignore[arg-type]
    assert HexQ(url="memory://").tracing is False
    monkeypatch.setattr(options_module.importlib.util, "find_spec", lambda name: None)  # not installed
    with pytest.raises(ConfigError, match=r"pip install 'hexq\[otel\]'"):
        HexQ(url="memory://", tracing=True)


def test_an_awaited_adelay_is_traced_like_delay(traces: Traces) -> None:
    app, _, _ = make_app(tracing=traces.make_provider)
    job = app.task(lambda x: None, name="job")

    async def handler() -> str:
        with traces.provider.get_tracer("web").start_as_current_span("request"):
            return await job.adelay(1)

    task_id = asyncio.run(handler())
    [request] = traces.named("request")
    [send] = traces.named("send job")
    assert parent_id(send) == ctx(request).span_id
    assert send.attributes is not None and send.attributes["messaging.message.id"] == task_id
    carried = stored_envelope(app, task_id)["trace"]["traceparent"]
    assert carried.split("-")[1:3] == [f"{ctx(send).trace_id:032x}", f"{ctx(send).span_id:016x}"]


def test_a_cancelled_run_says_so(traces: Traces) -> None:
    app = inline(traces)

    @app.task
    def stopped() -> None:
        raise TaskCancelled("stopped at the request")  # what a cancellation request raises in a sync task

    stopped.delay()
    [run] = traces.named("process stopped")
    assert run.attributes is not None and run.attributes["hexq.outcome"] == "cancelled"
    assert run.status.status_code == StatusCode.UNSET
