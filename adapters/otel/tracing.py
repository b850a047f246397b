"""The ``Tracing`` port with OpenTelemetry: spans for sends and runs, the context carried in W3C form.

- A send (``.delay()``, ``.apply()``, ``delay_many``, a broadcast) is a PRODUCER span, ``send <task>`` (``broadcast
  <task>``), a child of the caller's active span; a cron tick, ``cron <task>``, starts a trace of its own.
- Its context is written into each envelope it sends by the W3C Trace Context propagator (``traceparent``,
  ``tracestate``), whatever global propagator the application set: the envelope's field is W3C by contract.
- A run is a CONSUMER span, ``process <task>``, a **child** of the context its envelope carries. A retry and a
  redelivery after a crash keep the envelope's context, so every attempt is a child of the one producer span:
  siblings in one trace, told apart by ``hexq.attempt`` (a parent rather than a span link, so that trace
  viewers draw the whole story as one tree; the attempts' order is in their start times and attempt numbers).
- A run the worker parent killed at its hard timeout gets its span from the parent, backdated to when it began.

Nothing here may fail a task: a malformed context is ignored with a warning, and errors of the tracing itself
(an exception whose ``__str__`` raises, a failing processor) are logged, never raised.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from hexq.core.policy import safe_str
from hexq.core.ports import OutgoingTask

log = logging.getLogger("hexq.tracing")

PROPAGATOR = TraceContextTextMapPropagator()
SYSTEM = "hexq"
INTERRUPTED = "interrupted"  # the outcome of a run cut short by a shutdown: the task goes back to its queue

try:
    _VERSION = version("hexq")
except PackageNotFoundError:  # a source tree that is not installed
    _VERSION = "0"

# A provider factory (``HexQ(tracing=make_provider)``) is called once per process, at its first span: after any
# fork, so that an exporter's background thread is started in the process that uses it.
_providers: dict[Callable[[], Any], tuple[int, Any]] = {}


def _provider(factory: Callable[[], Any]) -> Any:
    made = _providers.get(factory)
    if made is None or made[0] != os.getpid():
        made = _providers[factory] = (os.getpid(), factory())
    return made[1]


class OtelSendSpan:
    def __init__(self, span: trace.Span, cron: bool) -> None:
        self._span = span
        self._cron = cron
        carrier: dict[str, str] = {}
        PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
        # Nothing when the span has no valid context (no TracerProvider set): the envelopes stay as they were.
        self.carrier: dict[str, str] | None = carrier or None

    def end(self, sent: Sequence[OutgoingTask], error: BaseException | None = None) -> None:
        span = self._span
        try:
            if span.is_recording():
                queues = {task.queue for task in sent}
                if len(queues) == 1:
                    span.set_attribute("messaging.destination.name", queues.pop())
                if len(sent) == 1:
                    span.set_attribute("messaging.message.id", sent[0].id)
                if self._cron:
                    span.set_attribute("hexq.cron.fired", bool(sent))
                if error is not None:
                    _record_error(span, error, f"{type(error).__name__}: {safe_str(error)}")
        except Exception:
            log.exception("could not complete the span of a send")
        span.end()


class OtelRunSpan:
    def __init__(self, span: trace.Span, token: object | None) -> None:
        self._span = span
        self._token = token
        self._ended = False

    def end(self, outcome: str | None, failure: str | None = None, error: BaseException | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        span = self._span
        try:
            if span.is_recording():
                span.set_attribute("hexq.outcome", outcome or INTERRUPTED)
                if failure is not None:
                    span.set_attribute("hexq.failure", failure)
                    described = (f"{type(error).__name__}: {safe_str(error)}" if error is not None
                                 else failure.replace("_", " "))
                    span.set_attribute("error.type", type(error).__qualname__ if error is not None else failure)
                    _record_error(span, error, described)
        except Exception:
            log.exception("could not complete the span of a task run")
        finally:
            span.end()
            if self._token is not None:
                otel_context.detach(self._token)  # type: ignore[arg-type]


def _record_error(span: trace.Span, error: BaseException | None, description: str) -> None:
    if error is not None:
        try:
            span.record_exception(error, escaped=True)
        except Exception:  # an exception whose __str__ raises: the status still says what it was
            span.add_event("exception", {"exception.type": type(error).__qualname__, "exception.message": description})
    span.set_status(Status(StatusCode.ERROR, description))


class OtelTracing:
    """``provider``: a function that makes the TracerProvider, called once in each process at its first span;
    None: OpenTelemetry's global provider (``trace.set_tracer_provider``), looked up at each span until set."""

    def __init__(self, provider: Callable[[], Any] | None = None) -> None:
        self._factory = provider
        self._made: tuple[int, trace.Tracer] | None = None

    @property
    def _tracer(self) -> trace.Tracer:
        # Asked once per process: the SDK's get_tracer builds a new Tracer each time, which cost a third of a span.
        made = self._made
        if made is None or made[0] != os.getpid():
            if self._factory is None:
                tracer = trace.get_tracer(SYSTEM, _VERSION)  # the global provider's, or a proxy until one is set
            else:
                tracer = _provider(self._factory).get_tracer(SYSTEM, _VERSION)
            made = self._made = (os.getpid(), tracer)
        return made[1]

    def send(self, task: str, count: int, *, broadcast: bool = False, cron: str | None = None) -> OtelSendSpan:
        operation = "broadcast" if broadcast else "cron" if cron is not None else "send"
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.operation.type": "send", "messaging.operation.name": operation,
            "hexq.task.name": task,
        }
        if count > 1:
            attributes["messaging.batch.message_count"] = count
        if cron is not None:
            attributes["hexq.cron.schedule"] = cron
        # A cron tick has no caller to descend from: an empty context makes its span the root of a new trace.
        parent = otel_context.Context() if cron is not None else None
        span = self._tracer.start_span(f"{operation} {task}", context=parent, kind=SpanKind.PRODUCER,
                                       attributes=attributes)
        return OtelSendSpan(span, cron is not None)

    def run(self, task: str, task_id: str, queue: str, attempt: int, carried: Mapping[str, str] | None, *,
            current: bool = True, ran_for: float = 0.0) -> OtelRunSpan:
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM, "messaging.operation.type": "process", "messaging.operation.name": "process",
            "messaging.destination.name": queue, "messaging.message.id": task_id,
            "hexq.task.name": task, "hexq.attempt": attempt,
        }
        start = time.time_ns() - int(ran_for * 1e9) if ran_for > 0 else None
        span = self._tracer.start_span(f"process {task}", context=_parent(carried, task_id), kind=SpanKind.CONSUMER,
                                       attributes=attributes, start_time=start)
        token = otel_context.attach(trace.set_span_in_context(span)) if current else None
        return OtelRunSpan(span, token)

    def flush(self) -> None:
        if self._factory is None:
            provider = trace.get_tracer_provider()
        else:
            made = _providers.get(self._factory)
            if made is None or made[0] != os.getpid():
                return  # no span was started in this process
            provider = made[1]
        force_flush = getattr(provider, "force_flush", None)
        if force_flush is not None:
            try:
                force_flush()
            except Exception:
                log.exception("could not export the last spans")


def _parent(carried: Mapping[str, str] | None, task_id: str) -> otel_context.Context:
    """The producer's context from an envelope; an empty one (a trace of its own) when there is none or it is
    not a valid W3C trace context, which is said once per run."""
    if not carried:
        return otel_context.Context()
    extracted = PROPAGATOR.extract(carried)
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        log.warning("task %s: ignoring the trace context in its envelope (no valid W3C traceparent: %.100r); it "
                    "runs outside its producer's trace", task_id, carried.get("traceparent"))
        return otel_context.Context()
    return extracted
