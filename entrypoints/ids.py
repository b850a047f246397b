"""Task ids that sort by creation time (like UUIDv7): 16 hex digits of nanoseconds, 16 random.

Redis orders sorted-set members with equal scores by their bytes, so time-ordered ids keep eta tasks due
at the same millisecond in the order they were enqueued.
"""

from __future__ import annotations

import secrets
import threading
import time

_lock = threading.Lock()
_last = 0


def new_task_id() -> str:
    global _last
    with _lock:
        _last = max(time.time_ns(), _last + 1)  # strictly increasing within this process
        stamp = _last
    return f"{stamp:016x}{secrets.token_hex(8)}"
