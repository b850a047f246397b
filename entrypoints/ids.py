"""Task ids that sort by creation time (like UUIDv7): 16 hex digits of nanoseconds, then 16 hex digits
made of a random per-process part and a counter.

Redis orders sorted-set members with equal scores by their bytes, so time-ordered ids keep eta tasks due
at the same millisecond in the order they were enqueued. The random part keeps ids from different
processes apart; the counter keeps ids from one process unique even within one nanosecond.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
import time

_lock = threading.Lock()
_state = {"last": 0, "pid": 0, "node": ""}
_counter = itertools.count()


def new_task_id() -> str:
    with _lock:
        if _state["pid"] != os.getpid():  # a forked child must not repeat its parent's sequence
            _state["pid"] = os.getpid()
            _state["node"] = secrets.token_hex(4)
        stamp = max(time.time_ns(), int(_state["last"]) + 1)
        _state["last"] = stamp
        return f"{stamp:016x}{_state['node']}{next(_counter) & 0xFFFFFFFF:08x}"
