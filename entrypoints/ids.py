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
_counter = itertools.count()
_last = 0
_pid = 0
_node = ""


def new_task_id() -> str:
    global _last, _pid, _node
    with _lock:
        if _pid != os.getpid():  # a forked child must not share its parent's random part
            _pid = os.getpid()
            _node = secrets.token_hex(4)
        _last = max(time.time_ns(), _last + 1)
        return f"{_last:016x}{_node}{next(_counter) & 0xFFFFFFFF:08x}"
