"""hexq: ``hexq worker --app=bench.apps.hexq_app:app --concurrency=2``."""

import os
from typing import Any

from bench.apps.common import BROKER_URL, done, partitions_option, record
from hexq import HexQ


def _tracing() -> dict[str, Any]:
    """BENCH_HEXQ_TRACING=1: trace every send and run with the OpenTelemetry SDK, the spans batched and dropped
    (the SDK's cost, not an exporter's); its hexq must know HexQ(tracing=)."""
    if os.environ.get("BENCH_HEXQ_TRACING") != "1":
        return {}

    def provider() -> Any:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        made = TracerProvider()
        made.add_span_processor(BatchSpanProcessor(Discard()))
        return made

    return {"tracing": provider}


def _log_tasks() -> dict[str, Any]:
    """BENCH_HEXQ_LOG_TASKS=0/1 turns the line per finished task off/on; unset, the option is not passed at
    all, so that ``--baseline`` can run this app on a hexq from before ``log_tasks=``."""
    chosen = os.environ.get("BENCH_HEXQ_LOG_TASKS")
    return {} if chosen is None else {"log_tasks": chosen != "0"}


# BENCH_HEXQ_LOG_LEVEL=INFO (and BENCH_HEXQ_LOG_TASKS=0) measure the cost of the line per finished task.
app = HexQ(queues=["default"], url=BROKER_URL, concurrency=2, **partitions_option(),
           worker_log_level=os.environ.get("BENCH_HEXQ_LOG_LEVEL", "WARNING"), **_log_tasks(), **_tracing())


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
