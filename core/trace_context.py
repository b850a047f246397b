"""The producer's trace context as an envelope carries it (the optional field ``trace``).

It is the W3C Trace Context in text form, ``{"traceparent": "00-<trace id>-<span id>-01", "tracestate": "..."}``,
written by a producer that traces (``HexQ(tracing=...)``) and read by a worker that traces. The core only
carries it: what the values mean is the tracing adapter's business (``adapters/otel``). A context that is not
a small object of strings is dropped with a warning when the envelope is read: the task runs as it would
untraced, never fails for it (docs/BAD_INPUTS.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("hexq.worker")

# W3C allows a traceparent of 55 characters and a tracestate of 32 members (512 characters is the size
# vendors are asked to keep to); anything much bigger is not a trace context.
MAX_ENTRIES = 8
MAX_VALUE_LENGTH = 1024


def carried(value: Any, task_id: str) -> Mapping[str, str] | None:
    """The trace context found in an envelope, or None (none there, or malformed: then a warning says so)."""
    if value is None:
        return None
    problem = _problem(value)
    if problem is None:
        return value  # type: ignore[no-any-return]
    log.warning("task %s: ignoring the trace context in its envelope (%s); it runs outside its producer's trace",
                task_id, problem)
    return None


def _problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected an object of strings, got {type(value).__name__}"
    if len(value) > MAX_ENTRIES:
        return f"{len(value)} entries, over {MAX_ENTRIES}"
    for key, item in value.items():
        if not isinstance(item, str):
            return f"{key!r} is a {type(item).__name__}, not a string"
        if len(item) > MAX_VALUE_LENGTH:
            return f"{key!r} is {len(item)} characters long, over {MAX_VALUE_LENGTH}"
    return None
