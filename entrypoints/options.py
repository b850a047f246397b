"""HexQ's settings, grouped into small frozen values that check themselves when built.

``HexQ.__init__`` composes them; ``OptionViews`` keeps WakaQ's flat attribute names (``app.concurrency``,
``app.worker_log_level``...) as read-only views over the groups. Defaults live in HexQ's signature only,
so the values here have none.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, TypeGuard

import attrs

from hexq.core.concurrency import evaluate
from hexq.core.cron import CronTask
from hexq.core.durations import expires_after, keep_result_seconds, to_seconds
from hexq.core.errors import ConfigError
from hexq.core.message import Codec
from hexq.core.policy import AppDefaults, TaskOptions
from hexq.core.queues import QueueSet, check_timeouts
from hexq.core.rate_limit import rate_limit_of
from hexq.core.unique import window_ms
from hexq.core.validation import is_int, number, number_between, optional_whole_number, whole, whole_number

Seconds = float | int | timedelta
# The worker renews leases every min(1 s, lease_timeout / 4); under a second, one slow round trip or pause
# of the parent would let a healthy worker's lease expire.
MIN_LEASE_SECONDS = 1.0
MIN_SIGNING_KEY_LENGTH = 16  # shorter keys are too easy to guess


def _processes(value: int | str) -> int:
    count = evaluate(value, os.cpu_count() or 1, "concurrency")
    if count < 1:  # 0 is fine for async_concurrency ("no limit") but a worker without processes runs nothing
        raise ConfigError(f"concurrency {value!r} gives {count} worker processes; a worker needs at least 1")
    return count


def _async_slots(value: int | str) -> int:
    return evaluate(value, os.cpu_count() or 1, "async_concurrency")


def _queue_names(value: Sequence[str]) -> tuple[str, ...]:
    # A bare str is a sequence too: exclude_queues="low" would exclude queues 'l', 'o' and 'w'.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ConfigError(f"exclude_queues must be a list of queue names, got {value!r}")
    return tuple(value)


def _lease(value: Seconds) -> float:
    return number_between(to_seconds(value, "lease_timeout"), "lease_timeout", MIN_LEASE_SECONDS, unit="seconds")


def _shutdown(value: Seconds | None) -> float:
    return to_seconds(value, "shutdown_timeout") or 0.0


def _cancel_grace(value: Seconds) -> float:
    seconds = to_seconds(value, "cancel_grace")
    if seconds is None:
        raise ConfigError("cancel_grace must be seconds (int/float) or a timedelta, got None: 0 kills a cancelled "
                          "task's child as soon as it is seen still running")
    return seconds


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """How a worker runs: processes, async slots per process, queues left out, recycling, lease and shutdown."""

    concurrency: int = attrs.field(converter=_processes)
    async_concurrency: int = attrs.field(converter=_async_slots)
    exclude_queues: tuple[str, ...] = attrs.field(converter=_queue_names)
    max_mem_percent: float | None = attrs.field(validator=number(0, 100, above_low=True, optional=True))
    max_tasks_per_worker: int | None = attrs.field(validator=whole(1, optional=True))
    lease_timeout: float = attrs.field(converter=_lease)
    shutdown_timeout: float = attrs.field(converter=_shutdown)
    # How long a running task may go on after its cancellation reached it before its child is killed.
    cancel_grace: float = attrs.field(converter=_cancel_grace, default=5.0)


def _signing_key(value: str | bytes | None) -> bytes | None:
    if value is None:
        return None
    # The key itself never goes into the message: it is a secret.
    if not isinstance(value, (str, bytes)) or len(value) < MIN_SIGNING_KEY_LENGTH:
        raise ConfigError(f"signing_key must be a str or bytes of at least {MIN_SIGNING_KEY_LENGTH} characters")
    return value.encode() if isinstance(value, str) else value


@attrs.frozen(kw_only=True)
class PayloadOptions:
    """How task payloads are signed and how big they may be."""

    signing_key: bytes | None = attrs.field(converter=_signing_key, repr=False)
    max_payload_bytes: int = attrs.field(validator=whole(1))

    def codec(self) -> Codec:
        return Codec(self.signing_key, self.max_payload_bytes)


def _log_level(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if is_int(value) and value >= 0:
        return
    # getLevelName maps a known name to its number, and anything else to a "Level ..." string.
    if isinstance(value, str) and isinstance(logging.getLevelName(value.upper()), int):
        return
    raise ConfigError(f"{attribute.name} must be a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL) "
                      f"or an int >= 0, got {value!r}")


def _flag(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be True or False, got {value!r}")


@attrs.frozen(kw_only=True)
class LogOptions:
    """Where workers and schedulers log (None: stderr), from which level, and whether each task that succeeds
    gets its INFO line (``log_tasks``; failures are logged either way)."""

    worker_log_file: str | None
    scheduler_log_file: str | None
    worker_log_level: str | int = attrs.field(validator=_log_level)
    scheduler_log_level: str | int = attrs.field(validator=_log_level)
    log_tasks: bool = attrs.field(validator=_flag)


def tracing_option(value: object) -> bool | Callable[[], Any]:
    """``HexQ(tracing=...)``: False (off), True (OpenTelemetry's global TracerProvider) or a function that makes
    the TracerProvider, called once in each process that traces (``adapters/otel``)."""
    if value is None or value is False:
        return False
    if value is not True and (isinstance(value, bool) or not callable(value)):
        raise ConfigError(f"tracing must be True, False or a function returning an OpenTelemetry TracerProvider, "
                          f"got {value!r}")
    if importlib.util.find_spec("opentelemetry.trace") is None:
        raise ConfigError("tracing needs the OpenTelemetry API, which is not installed: pip install 'hexq[otel]'")
    return value  # type: ignore[return-value]


def app_defaults(*, max_retries: int | None, soft_timeout: Seconds | None, hard_timeout: Seconds | None,
                 max_deliveries: int, keep_result: Seconds | None = None) -> AppDefaults:
    """The app-wide task limits; a task's decorator, then its queue, override them."""
    soft = to_seconds(soft_timeout, "soft_timeout")
    hard = to_seconds(hard_timeout, "hard_timeout")
    check_timeouts(soft, hard, "HexQ")
    return AppDefaults(optional_whole_number(max_retries, "max_retries"), soft, hard,
                       whole_number(max_deliveries, "max_deliveries", 1),
                       keep_result_seconds(keep_result, "keep_result"))


def _is_exception_class(kind: object) -> TypeGuard[type[BaseException]]:
    return isinstance(kind, type) and issubclass(kind, BaseException)


def _exception_classes(retry_on: object, owner: str) -> tuple[type[BaseException], ...]:
    # One class may be given bare; a str is one (wrong) item, not a sequence of letters.
    kinds: tuple[object, ...] = (retry_on,)
    if isinstance(retry_on, Iterable) and not isinstance(retry_on, (type, str)):
        kinds = tuple(retry_on)
    classes: list[type[BaseException]] = []
    for kind in kinds:
        if not _is_exception_class(kind):
            raise ConfigError(f"{owner}: retry_on takes exception classes, got {kind!r}")
        classes.append(kind)
    return tuple(classes)


def task_options(name: str, *, queue: str | None, max_retries: int | None, soft_timeout: Seconds | None,
                 hard_timeout: Seconds | None, retry_on: object, backoff: float, backoff_max: float,
                 expires: Seconds | None = None, unique: Seconds | None = None,
                 rate_limit: object = None, keep_result: Seconds | None = None) -> TaskOptions:
    """What ``@app.task(...)`` said about task ``name``, checked; the queue is checked when it is registered."""
    owner = f"task {name!r}"
    soft = to_seconds(soft_timeout, f"{owner} soft_timeout")
    hard = to_seconds(hard_timeout, f"{owner} hard_timeout")
    check_timeouts(soft, hard, owner)
    return TaskOptions(queue, optional_whole_number(max_retries, f"{owner} max_retries"), soft, hard,
                       _exception_classes(retry_on, owner),
                       number_between(backoff, f"{owner} backoff", 0, unit="seconds"),
                       number_between(backoff_max, f"{owner} backoff_max", 0, unit="seconds"),
                       expires_after(expires, f"{owner} expires"), window_ms(unique, owner),
                       rate_limit_of(rate_limit, owner),
                       keep_result=keep_result_seconds(keep_result, f"{owner} keep_result"))


def schedules_for(specs: Iterable[Any], queues: QueueSet) -> list[CronTask]:
    """The app's cron entries; one naming an undeclared queue fails now rather than when it first fires."""
    schedules = [CronTask.create(spec) for spec in specs]
    for schedule in schedules:
        if schedule.queue is not None:
            queues.get(schedule.queue)
    return schedules


class OptionViews:
    """WakaQ's flat attribute names, read-only over the grouped options (HexQ sets the groups)."""

    worker_options: WorkerOptions
    log_options: LogOptions

    @property
    def concurrency(self) -> int:
        return self.worker_options.concurrency

    @property
    def async_concurrency(self) -> int:
        return self.worker_options.async_concurrency

    @property
    def exclude_queues(self) -> list[str]:
        return list(self.worker_options.exclude_queues)

    @property
    def max_mem_percent(self) -> float | None:
        return self.worker_options.max_mem_percent

    @property
    def max_tasks_per_worker(self) -> int | None:
        return self.worker_options.max_tasks_per_worker

    @property
    def lease_timeout(self) -> float:
        return self.worker_options.lease_timeout

    @property
    def shutdown_timeout(self) -> float:
        return self.worker_options.shutdown_timeout

    @property
    def cancel_grace(self) -> float:
        return self.worker_options.cancel_grace

    @property
    def worker_log_file(self) -> str | None:
        return self.log_options.worker_log_file

    @property
    def scheduler_log_file(self) -> str | None:
        return self.log_options.scheduler_log_file

    @property
    def worker_log_level(self) -> str | int:
        return self.log_options.worker_log_level

    @property
    def scheduler_log_level(self) -> str | int:
        return self.log_options.scheduler_log_level

    @property
    def log_tasks(self) -> bool:
        return self.log_options.log_tasks
