"""Logging for workers and schedulers: every line about a task names its id, task, queue and attempt."""

from __future__ import annotations

import logging
import sys

from hexq.core.registry import current_attempt, current_task

FORMAT = "%(asctime)s %(levelname)s [%(process)d] %(name)s%(task)s: %(message)s"


class TaskContextFilter(logging.Filter):
    """Adds ``%(task)s``: `` task=<name> id=<id> queue=<q> attempt=<n>`` inside a task, else empty (and empty on
    a task's finish line, which says all that itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "task_outcome"):
            # A task's finish line (core/services/task_log.py) names the task itself and carries its fields.
            record.task = ""
            return True
        message = current_task.get()
        if message is None:
            record.task = ""
            record.task_id = record.task_name = record.task_queue = ""
            record.task_attempt = 0
        else:
            attempt = current_attempt.get()
            record.task = f" task={message.name} id={message.id} queue={message.queue} attempt={attempt}"
            record.task_id, record.task_name, record.task_queue = message.id, message.name, message.queue
            record.task_attempt = attempt
        return True


def setup_logging(level: str | int, log_file: str | None) -> None:
    handler: logging.Handler = logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # Library chatter (redis-py's per-connection notices, asyncio's selector choice) drowns task logs.
    for noisy in ("redis", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
