"""The HexQ application object: WakaQ's API, composed from the core and the adapters."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

import attrs

from hexq.core.message import DEFAULT_MAX_PAYLOAD_BYTES
from hexq.core.ports import Broker, Clock, Metrics, NoMetrics
from hexq.core.queues import QueueSet
from hexq.core.registry import Hook, Registry, TaskDef, Wrapper
from hexq.core.services.sender import Send, Sender
from hexq.core.validation import check_prefix, optional_whole_number
from hexq.entrypoints import bootstrap
from hexq.entrypoints.options import (
    LogOptions,
    OptionViews,
    PayloadOptions,
    WorkerOptions,
    app_defaults,
    schedules_for,
    task_options,
)
from hexq.entrypoints.settings import BrokerConnection, build_connection, partition_count

if TYPE_CHECKING:
    from hexq.entrypoints.inline import InlineRunner

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


class HexQ(OptionViews):
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
        partitions: int = 1,
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
        self.registry = Registry(self.queues, app_defaults(
            max_retries=max_retries, soft_timeout=soft_timeout, hard_timeout=hard_timeout,
            max_deliveries=max_deliveries))
        self.worker_options = WorkerOptions(
            concurrency=concurrency, async_concurrency=async_concurrency, exclude_queues=exclude_queues,
            max_mem_percent=max_mem_percent, max_tasks_per_worker=max_tasks_per_worker,
            lease_timeout=lease_timeout, shutdown_timeout=shutdown_timeout)
        self.queues.select(None, self.worker_options.exclude_queues)  # unknown names fail here, not in a worker
        self.prefix = check_prefix(prefix)
        self.connection: BrokerConnection = build_connection(
            url, host, port, db, username, password,
            socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout,
            ssl_ca_certs=ssl_ca_certs, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
        )
        self.partitions = partition_count(partitions, self.connection.scheme)
        self.payload_options = PayloadOptions(signing_key=signing_key, max_payload_bytes=max_payload_bytes)
        self.codec = self.payload_options.codec()
        self.log_options = LogOptions(
            worker_log_file=worker_log_file, scheduler_log_file=scheduler_log_file,
            worker_log_level=worker_log_level, scheduler_log_level=scheduler_log_level)
        self.schedules = schedules_for(schedules, self.queues)
        self.metrics_port = optional_whole_number(metrics_port, "metrics_port (a TCP port)", 1, 65535)
        # What this process records into; a worker started with --metrics-port gives its processes their own
        # (the app object itself is never changed by a worker).
        self.metrics: Metrics = metrics or NoMetrics()
        from hexq.adapters.system.clock import SystemClock

        self.clock: Clock = clock or SystemClock()
        self._broker = broker
        self._inline_mode = self.connection.scheme == "memory"
        self._inline: InlineRunner | None = None
        self._sender: Sender | None = None

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
            task_name = name or function.__name__
            options = task_options(task_name, queue=queue, max_retries=max_retries, soft_timeout=soft_timeout,
                                   hard_timeout=hard_timeout, retry_on=retry_on, backoff=backoff,
                                   backoff_max=backoff_max)
            definition = TaskDef(task_name, function, options)
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
        """This process's broker for the app (built on first use by the composition root)."""
        if self._broker is None:
            self._broker = bootstrap.make_broker(self)
        return self._broker

    @property
    def is_inline(self) -> bool:
        """True for ``memory://``: ``.delay()`` runs tasks in this process, no worker needed."""
        return self._inline_mode

    def enqueue_many(self, calls: Sequence[Call]) -> list[str]:
        """Encode and store many task runs, pipelined; returns their ids in order."""
        sends = [Send(call.task.name, call.args, call.kwargs, call.queue, call.eta) for call in calls]
        return bootstrap.sender_for(self).send(sends)

    def broadcast(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        return bootstrap.sender_for(self).broadcast(task.name, args, kwargs)

    def run_pending(self) -> int:
        """In-process mode: run every task that is due now (including eta tasks whose time has come)."""
        return bootstrap.inline_runner(self).run_pending()

    def _own_sender(self) -> Sender:
        """The sender of this app's own process (a worker child has its own: see bootstrap.sender_for)."""
        if self._sender is None:
            self._sender = bootstrap.build_sender(self, self.broker, self.metrics)
        return self._sender

    def __repr__(self) -> str:
        return f"<HexQ {self.connection.redacted} queues={self.queues.names} tasks={len(self.registry.tasks)}>"
