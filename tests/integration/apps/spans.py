"""Test-only span export for the test app: where a worker's spans go so that the test can read them.

``HEXQ_TEST_SPANS=/path/spans.jsonl``: every process of the worker (parent and children) appends its finished
spans to that file, one JSON object per line, through a BatchSpanProcessor: buffered in a thread of the process
that made them, and written every ``HEXQ_TEST_SPANS_DELAY_MS`` (default 60 s: in practice, only when the process
exits, which tests that hexq flushes them; a worker child ends with ``os._exit``, which runs no exit handler).
``HEXQ_TEST_SPANS=memory``: the spans stay in ``MEMORY``, an InMemorySpanExporter, for a test's own process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

MEMORY = InMemorySpanExporter()


class JsonLinesExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(as_record(span)) + "\n" for span in spans)
        with open(self.path, "a") as out:  # one write per batch: lines of several processes never interleave
            out.write(lines)
        return SpanExportResult.SUCCESS


def as_record(span: ReadableSpan) -> dict[str, Any]:
    assert span.context is not None
    return {
        "name": span.name, "kind": span.kind.name, "pid": os.getpid(),
        "trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}), "status": span.status.status_code.name,
        "description": span.status.description, "events": [event.name for event in span.events],
        "start": span.start_time, "end": span.end_time,
    }


def provider_factory(where: str) -> Callable[[], TracerProvider]:
    """What the test app passes as ``HexQ(tracing=...)``: hexq calls it once in each process that traces."""

    def make() -> TracerProvider:
        provider = TracerProvider()
        if where == "memory":
            provider.add_span_processor(SimpleSpanProcessor(MEMORY))
        else:
            delay = int(os.environ.get("HEXQ_TEST_SPANS_DELAY_MS", "60000"))
            provider.add_span_processor(BatchSpanProcessor(JsonLinesExporter(where), schedule_delay_millis=delay))
        return provider

    return make


def read(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path) as spans:
        return [json.loads(line) for line in spans if line.strip()]
