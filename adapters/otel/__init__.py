"""Traces with OpenTelemetry (``pip install 'hexq[otel]'``): the ``Tracing`` port over the OpenTelemetry API."""

from hexq.adapters.otel.tracing import OtelTracing

__all__ = ["OtelTracing"]
