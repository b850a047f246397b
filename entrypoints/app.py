"""The HexQ application object: WakaQ's API, composed from the core and the adapters."""

from __future__ import annotations

import functools
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar, overload

import attrs

from hexq.core.concurrency import evaluate
from hexq.core.cron import CronTask
from hexq.core.durations import eta_to_epoch, to_seconds
from hexq.core.errors import ConfigError
from hexq.core.message import DEFAULT_MAX_PAYLOAD_BYTES, Codec, TaskMessage
from hexq.core.policy import AppDefaults, TaskOptions
from hexq.core.ports import Broker, Clock, Metrics, NoMetrics, OutgoingTask
from hexq.core.queues import QueueSet, check_timeouts
from hexq.core.registry import Hook, Registry, TaskDef, Wrapper
from hexq.entrypoints.ids import new_task_id
from hexq.entrypoints.settings import Connection, build_connection

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class Call:
    """One bound invocation of a task, for batch enqueueing: ``mytask.bind(1, 2)``."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str | None = None
    eta: Any = None


class Task(Generic[P, R]):
    """What ``@app.task`` returns: call it to run inline, ``.delay()`` to run it on a worker."""

    def __init__(self, app: HexQ, definition: TaskDef) -> None:
        self.app = app
        self.definition = definition
        self.name = definition.name
        self.fn = definition.fn
        functools.update_wrapper(self, definition.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)  # type: ignore[no-any-return]

    def delay(self, *args: Any, queue: str | None = None, eta: Any = None, **kwargs: Any) -> str:
        """Enqueue a run; returns the task id. ``queue`` and ``eta`` are options, not task arguments: use
        ``apply(args=..., kwargs=...)`` for a task whose own parameters have those names."""
        return self.apply(args, kwargs, queue=queue, eta=eta)

    def apply(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
              queue: str | None = None, eta: Any = None) -> str:
        return self.app.enqueue_many([Call(self, tuple(args), dict(kwargs or {}), queue, eta)])[0]

    def bind(self, *args: Any, **kwargs: Any) -> Call:
        return Call(self, args, kwargs)

    def delay_many(self, calls: Iterable[Call | Sequence[Any]], *, queue: str | None = None,
                   eta: Any = None) -> list[str]:
        """Enqueue many runs in pipelined round trips; each item is ``task.bind(...)`` or a tuple of args."""
        bound = [
            Call(self, tuple(c), {}, queue, eta) if not isinstance(c, Call)
            else c if (c.queue or not queue) and (c.eta is not None or eta is None)
            else attrs.evolve(c, queue=c.queue or queue, eta=c.eta if c.eta is not None else eta)
            for c in calls
        ]
        return self.app.enqueue_many(bound)

    def broadcast(self, *args: Any, **kwargs: Any) -> int:
        """Run once on every running worker; returns how many workers received it."""
        return self.app.broadcast(self, args, kwargs)

    def __repr__(self) -> str:
        return f"<hexq task {self.name}>"


class HexQ:
    """A task queue application. See the README for every option; names and defaults follow WakaQ."""

    def __init__(
        self,
        queues: Sequence[Any] = (),
        schedules: Sequence[Any] = (),
        *,
        url: str | None = None,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        socket_timeout: float | None = 15.0,
        socket_connect_timeout: float | None = 5.0,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        prefix: str = "hexq",
        concurrency: int | str = "cores",
        async_concurrency: int | str = 0,
        exclude_queues: Sequence[str] = (),
        soft_timeout: float | int | timedelta | None = None,
        hard_timeout: float | int | timedelta | None = None,
        max_retries: int | None = None,
        max_deliveries: int = 5,
        max_mem_percent: float | None = None,
        max_tasks_per_worker: int | None = None,
        lease_timeout: float | int | timedelta = 10.0,
        shutdown_timeout: float | int | timedelta = 30.0,
        signing_key: str | bytes | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        worker_log_file: str | None = None,
        scheduler_log_file: str | None = None,
        worker_log_level: str | int = "INFO",
        scheduler_log_level: str | int = "INFO",
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
        broker: Broker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.queues = QueueSet.build(queues)
        soft = to_seconds(soft_timeout, "soft_timeout")
        hard = to_seconds(hard_timeout, "hard_timeout")
        check_timeouts(soft, hard, "HexQ")
        if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                        or max_retries < 0):
            raise ConfigError(f"max_retries must be a non-negative int or None, got {max_retries!r}")
        if isinstance(max_deliveries, bool) or not isinstance(max_deliveries, int) or max_deliveries < 1:
            raise ConfigError(f"max_deliveries must be an int >= 1, got {max_deliveries!r}")
        self.registry = Registry(self.queues, AppDefaults(max_retries, soft, hard, max_deliveries))
        cores = os.cpu_count() or 1
        self.concurrency = evaluate(concurrency, cores, "concurrency")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency {concurrency!r} gives {self.concurrency} worker processes; "
                              "a worker needs at least 1")
        self.async_concurrency = evaluate(async_concurrency, cores, "async_concurrency")
        self.exclude_queues = list(exclude_queues)
        self.queues.select(None, self.exclude_queues)
        if max_mem_percent is not None and (isinstance(max_mem_percent, bool)
                                            or not isinstance(max_mem_percent, (int, float))
                                            or not 0 < max_mem_percent <= 100):
            raise ConfigError(f"max_mem_percent must be in (0, 100], got {max_mem_percent!r}")
        self.max_mem_percent = max_mem_percent
        if max_tasks_per_worker is not None and (isinstance(max_tasks_per_worker, bool)
                                                 or not isinstance(max_tasks_per_worker, int)
                                                 or max_tasks_per_worker < 1):
            raise ConfigError(f"max_tasks_per_worker must be an int >= 1 or None, got {max_tasks_per_worker!r}")
        self.max_tasks_per_worker = max_tasks_per_worker
        self.lease_timeout = to_seconds(lease_timeout, "lease_timeout") or 0.0
        if self.lease_timeout < 1:
            raise ConfigError("lease_timeout must be at least 1 second")
        self.shutdown_timeout = to_seconds(shutdown_timeout, "shutdown_timeout") or 0.0
        if not prefix or any(c in prefix for c in "{}: \n"):
            raise ConfigError(f"invalid prefix {prefix!r}: use letters, digits, '_', '.', '-'")
        self.prefix = prefix
        self.connection: Connection = build_connection(
            url, host, port, db, username, password,
            socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout,
            ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        )
        if isinstance(max_payload_bytes, bool) or not isinstance(max_payload_bytes, int) or max_payload_bytes < 1:
            raise ConfigError(f"max_payload_bytes must be a positive int, got {max_payload_bytes!r}")
        if signing_key is not None and (not isinstance(signing_key, (str, bytes)) or len(signing_key) < 16):
            raise ConfigError("signing_key must be a str or bytes of at least 16 characters")
        key = signing_key.encode() if isinstance(signing_key, str) else signing_key
        self.codec = Codec(key, max_payload_bytes)
        self.worker_log_file = worker_log_file
        self.scheduler_log_file = scheduler_log_file
        self.worker_log_level = worker_log_level
        self.scheduler_log_level = scheduler_log_level
        self.schedules = [CronTask.create(s) for s in schedules]
        for schedule in self.schedules:
            if schedule.queue is not None:
                self.queues.get(schedule.queue)
        if metrics_port is not None and (isinstance(metrics_port, bool) or not isinstance(metrics_port, int)
                                         or not 0 < metrics_port < 65536):
            raise ConfigError(f"metrics_port must be a TCP port (1-65535) or None, got {metrics_port!r}")
        self.metrics_port = metrics_port
        # A worker started with a metrics port replaces this with its own (see entrypoints/worker.py).
        self.metrics: Metrics = metrics or NoMetrics()
        self._broker = broker
        self._inline_mode = self.connection.scheme == "memory"
        from hexq.adapters.system.clock import SystemClock

        self.clock: Clock = clock or SystemClock()
        self._inline: Any = None
        self._rng = random.Random()

    # -- declaring ---------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R]) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, *, name: str | None = None, queue: str | None = None,
             max_retries: int | None = None, soft_timeout: float | int | timedelta | None = None,
             hard_timeout: float | int | timedelta | None = None,
             retry_on: Sequence[type[BaseException]] = (), backoff: float = 1.0,
             backoff_max: float = 600.0) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, queue: str | None = None,
             max_retries: int | None = None, soft_timeout: float | int | timedelta | None = None,
             hard_timeout: float | int | timedelta | None = None,
             retry_on: Sequence[type[BaseException]] | type[BaseException] = (), backoff: float = 1.0,
             backoff_max: float = 600.0) -> Any:
        """Register a task; usable bare (``@app.task``) or with options (``@app.task(queue=...)``)."""

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            soft = to_seconds(soft_timeout, f"task {function.__name__} soft_timeout")
            hard = to_seconds(hard_timeout, f"task {function.__name__} hard_timeout")
            check_timeouts(soft, hard, f"task {function.__name__!r}")
            owner = f"task {function.__name__!r}"
            if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int)
                                            or max_retries < 0):
                raise ConfigError(f"{owner}: max_retries must be an int >= 0, got {max_retries!r}")
            for label, value in (("backoff", backoff), ("backoff_max", backoff_max)):
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                    raise ConfigError(f"{owner}: {label} must be a finite number of seconds >= 0, got {value!r}")
            kinds = (retry_on,) if isinstance(retry_on, type) else tuple(retry_on)
            for kind in kinds:
                if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                    raise ConfigError(f"task {function.__name__!r}: retry_on takes exception classes, "
                                      f"got {kind!r}")
            options = TaskOptions(queue, max_retries, soft, hard, kinds, float(backoff), float(backoff_max))
            definition = TaskDef(name or function.__name__, function, options)
            self.registry.add(definition)
            return Task(self, definition)

        return register(fn) if fn is not None else register

    def wrap_tasks_with(self, wrapper: Wrapper) -> Wrapper:
        """Register ``wrapper(fn, args, kwargs)`` around every task run; the first registered is outermost."""
        self.registry.hooks.wrappers.append(wrapper)
        return wrapper

    def after_worker_started(self, hook: Hook) -> Hook:
        self.registry.hooks.after_worker_started.append(hook)
        return hook

    def before_task_started(self, hook: Hook) -> Hook:
        self.registry.hooks.before_task_started.append(hook)
        return hook

    def after_task_finished(self, hook: Hook) -> Hook:
        self.registry.hooks.after_task_finished.append(hook)
        return hook

    # -- producing ---------------------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        if self._broker is None:
            from hexq.entrypoints.bootstrap import make_broker

            self._broker = make_broker(self)
        return self._broker

    @property
    def is_inline(self) -> bool:
        """True for ``memory://``: ``.delay()`` runs tasks in this process, no worker needed."""
        return self._inline_mode

    def enqueue_many(self, calls: Sequence[Call]) -> list[str]:
        """Encode and store many task runs, pipelined; returns their ids in order."""
        now = self.clock.now()
        outgoing = [self._outgoing(call, now) for call in calls]
        if outgoing:
            self.broker.enqueue(outgoing)
            if not isinstance(self.metrics, NoMetrics):
                counts = Counter((call.task.name, task.queue) for call, task in zip(calls, outgoing, strict=True))
                for (name, queue), count in counts.items():
                    self.metrics.enqueued(name, queue, count)
        if self.is_inline:
            self.run_pending()
        return [task.id for task in outgoing]

    def _outgoing(self, call: Call, now: float) -> OutgoingTask:
        definition = self.registry.get(call.task.name)
        queue = self.registry.queue_for(definition, call.queue)
        task_id = new_task_id()
        if call.eta is None:
            payload = self.codec.encode_fields(task_id, definition.name, queue, call.args, call.kwargs, 0, now)
            return OutgoingTask(task_id, queue, payload)
        eta = eta_to_epoch(call.eta, now)
        message = TaskMessage(task_id, definition.name, queue, call.args, call.kwargs, 0, now, eta)
        # Rounded up: a task due at 12.3456 s must not become visible at 12.345 s (eta is never early).
        return OutgoingTask(task_id, queue, self.codec.encode(message), math.ceil(eta * 1000), message.fingerprint())

    def broadcast(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        definition = self.registry.get(task.name)
        message = TaskMessage(new_task_id(), definition.name, self.queues.default.name, args, kwargs, 0,
                              self.clock.now(), None, True)
        payload = self.codec.encode(message)
        if self.is_inline:
            self.broker.enqueue([OutgoingTask(message.id, message.queue, payload)])
            self.run_pending()
            return 1
        return self.broker.publish_broadcast(payload)

    def run_pending(self) -> int:
        """In-process mode: run every task that is due now (including eta tasks whose time has come)."""
        if self._inline is None:
            from hexq.entrypoints.inline import InlineRunner

            self._inline = InlineRunner(self)
        return int(self._inline.run_pending())

    def random(self) -> float:
        return self._rng.random()

    def __repr__(self) -> str:
        return f"<HexQ {self.connection.redacted} queues={self.queues.names} tasks={len(self.registry.tasks)}>"
