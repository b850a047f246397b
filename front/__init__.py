"""hexq: a Redis-backed background task queue with WakaQ's API and at-least-once delivery.

    from hexq import HexQ, Queue, CronTask, SoftTimeout
"""

from hexq.core.cron import CronTask
from hexq.core.errors import (
    BrokerUnavailableError,
    ConfigError,
    DeadlineError,
    HexqError,
    MalformedPayloadError,
    ResultNotFound,
    SerializationError,
    SoftTimeout,
    TaskCancelled,
    TaskFailed,
    UnknownQueueError,
    UnknownTaskError,
)
from hexq.core.ports import Cancelled
from hexq.core.queues import Queue
from hexq.core.rate_limit import RateLimit
from hexq.core.registry import current_attempt, current_task
from hexq.core.services.sender import TaskArgumentsError
from hexq.core.status import TaskStatus
from hexq.core.unique import UniqueKeyError
from hexq.entrypoints.app import Call, HexQ, Task
from hexq.entrypoints.handle import TaskHandle

__all__ = [
    "BrokerUnavailableError",
    "Call",
    "Cancelled",
    "ConfigError",
    "CronTask",
    "DeadlineError",
    "HexQ",
    "HexqError",
    "MalformedPayloadError",
    "Queue",
    "RateLimit",
    "ResultNotFound",
    "SerializationError",
    "SoftTimeout",
    "Task",
    "TaskArgumentsError",
    "TaskCancelled",
    "TaskFailed",
    "TaskHandle",
    "TaskStatus",
    "UniqueKeyError",
    "UnknownQueueError",
    "UnknownTaskError",
    "current_attempt",
    "current_task",
]
__version__ = "0.1.0"
