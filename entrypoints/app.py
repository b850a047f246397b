"""The HexQ application object: WakaQ's API, composed from the core and the adapters."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeAlias, TypeVar, cast, overload

import attrs

from hexq.core.message import DEFAULT_MAX_PAYLOAD_BYTES
from hexq.core.ports import Broker, Cancelled, Clock, Metrics, NoMetrics
from hexq.core.queues import QueueSet
from hexq.core.rate_limit import RateLimit
from hexq.core.registry import Hook, Registry, TaskDef, Wrapper
from hexq.core.services.sender import ArgumentCheck, Send, Sender
from hexq.core.unique import check_key_allowed
from hexq.core.validation import check_prefix, optional_whole_number
from hexq.entrypoints import bootstrap
from hexq.entrypoints.handle import TaskHandle
from hexq.entrypoints.options import (
    LogOptions,
    OptionViews,
    PayloadOptions,
    WorkerOptions,
    app_defaults,
    schedules_for,
    task_options,
    tracing_option,
)
from hexq.entrypoints.settings import BrokerConnection, build_connection, partition_count

if TYPE_CHECKING:
    from hexq.entrypoints.inline import InlineRunner

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])
# An eta: a timedelta, a datetime (naive = UTC) or seconds from now.
Eta: TypeAlias = "timedelta | datetime | float"
# A deadline (expires): a timedelta or seconds from now, or a datetime (naive = UTC).
Expires: TypeAlias = "timedelta | datetime | float"


@attrs.frozen
class Call:
    """One bound invocation of a task, for batch enqueueing: ``mytask.bind(1, 2)``."""

    task: Task[Any, Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    queue: str | None = None
    eta: Any = None
    expires: Any = None
    unique_key: Any = None


class Task(Generic[P, R]):
    """What ``@app.task`` returns: call it to run inline, ``.delay()`` to run it on a worker.

    ``Task[P, R]`` carries the function's parameters ``P`` and return type ``R``, so a type checker checks
    ``.delay()``, ``.options(...).delay()``, ``.bind()`` and ``.broadcast()`` against the function; every way of
    sending also checks the call at run time (``TaskArgumentsError``, a ``TypeError``) before anything is sent.
    """

    def __init__(self, app: HexQ, definition: TaskDef) -> None:
        self.app = app
        self.definition = definition
        self.name = definition.name
        self.fn: Callable[P, R] = definition.fn
        self.check = ArgumentCheck(definition.name, definition.fn)  # the signature, read once per task
        functools.update_wrapper(self, definition.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function here and now (an ``async def`` task returns its coroutine)."""
        return self.fn(*args, **kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueue a run; returns its handle (a ``str``, the task id). Typed: the arguments are the function's.

        WakaQ's spelling ``.delay(*args, queue=Q, eta=...)`` still works at run time: ``queue`` and ``eta`` are
        taken as hexq's options, never passed to the task, even if the task has parameters of those names (a
        type checker reads them as the task's arguments and flags them). The typed spelling is
        ``.options(queue=Q, eta=...).delay(*args, **kwargs)``, where every keyword is the task's."""
        options = cast("dict[str, Any]", kwargs)
        queue: str | None = options.pop("queue", None)
        eta: Eta | None = options.pop("eta", None)
        self.check(args, options, _given(queue, eta))
        return self.app.enqueue_many([Call(self, args, options, queue, eta)])[0]

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """``.delay()`` for ``async def`` code: the same store, awaited without blocking the event loop (see the
        README, "Async producers"); returns the task's handle. ``queue=``/``eta=`` are taken as ``.delay()`` takes
        them."""
        options = cast("dict[str, Any]", kwargs)
        queue: str | None = options.pop("queue", None)
        eta: Eta | None = options.pop("eta", None)
        self.check(args, options, _given(queue, eta))
        return (await self.app.aenqueue_many([Call(self, args, options, queue, eta)]))[0]

    async def aapply(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                     queue: str | None = None, eta: Eta | None = None, expires: Expires | None = None
                     ) -> TaskHandle:
        """``.apply()``, awaited."""
        return (await self.app.aenqueue_many([self._call(tuple(args), dict(kwargs or {}), queue, eta, expires)]))[0]

    def options(self, *, queue: str | None = None, eta: Eta | None = None,
                expires: Expires | None = None, unique_key: Any = None) -> TaskWithOptions[P, R]:
        """The typed way to pass options: ``task.options(queue=Q, eta=timedelta(seconds=10)).delay(1, y=2)``.
        ``expires``: the deadline of this run (overrides the task's), a duration from now or a datetime.
        ``unique_key`` (a task declared ``unique``): the call's identity instead of its arguments, any JSON value."""
        check_key_allowed(self.name, self.definition.options.unique_ms, unique_key)
        return TaskWithOptions(self, queue, eta, expires, unique_key)

    def apply(self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
              queue: str | None = None, eta: Eta | None = None, expires: Expires | None = None) -> TaskHandle:
        """Enqueue a run from an argument list and dict (not checked by a type checker; checked at run time);
        returns its handle."""
        return self.app.enqueue_many([self._call(tuple(args), dict(kwargs or {}), queue, eta, expires)])[0]

    def bind(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """One run for ``delay_many``, checked now; ``task.options(...).bind(...)`` gives it its own options."""
        return self._call(args, kwargs, None, None)

    def delay_many(self, calls: Iterable[Call | Sequence[Any]], *, queue: str | None = None,
                   eta: Eta | None = None) -> list[TaskHandle]:
        """Enqueue many runs in pipelined round trips; each item is ``task.bind(...)`` or a tuple of args. One
        wrong tuple refuses the whole batch, before anything is sent."""
        bound = [
            self._call(tuple(c), {}, queue, eta) if not isinstance(c, Call)
            else c if (c.queue or not queue) and (c.eta is not None or eta is None)
            else attrs.evolve(c, queue=c.queue or queue, eta=c.eta if c.eta is not None else eta)
            for c in calls
        ]
        return self.app.enqueue_many(bound)

    def broadcast(self, *args: P.args, **kwargs: P.kwargs) -> int:
        """Run once on every running worker; returns how many workers received it."""
        self.check(args, kwargs)
        return self.app.broadcast(self, args, kwargs)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any], queue: str | None, eta: Any,
              expires: Any = None, unique_key: Any = None) -> Call:
        self.check(args, kwargs)
        return Call(self, args, kwargs, queue, eta, expires, unique_key)

    def __repr__(self) -> str:
        return f"<hexq task {self.name}>"


@attrs.frozen
class TaskWithOptions(Generic[P, R]):
    """``task.options(queue=..., eta=...)``: hexq's options set apart from the task's arguments, so that
    ``.delay()`` and ``.bind()`` take exactly the function's parameters (a ParamSpec cannot hold extra keywords)."""

    task: Task[P, R]
    queue: str | None = None
    eta: Eta | None = None
    expires: Expires | None = None
    unique_key: Any = None

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """Enqueue a run with these options; returns its handle. Every keyword is the task's own argument."""
        return self.task.app.enqueue_many([self.bind(*args, **kwargs)])[0]

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> TaskHandle:
        """``.delay()`` with these options, awaited (``task.adelay``)."""
        return (await self.task.app.aenqueue_many([self.bind(*args, **kwargs)]))[0]

    def bind(self, *args: P.args, **kwargs: P.kwargs) -> Call:
        """One run for ``delay_many``, with these options."""
        return self.task._call(args, kwargs, self.queue, self.eta, self.expires, self.unique_key)


def _sends(calls: Sequence[Call]) -> list[Send]:
    return [Send(call.task.name, call.args, call.kwargs, call.queue, call.eta, call.expires, call.unique_key)
            for call in calls]


def _given(queue: str | None, eta: Any) -> tuple[str, ...]:
    return ("queue",) * (queue is not None) + ("eta",) * (eta is not None)


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
        keep_result: float | int | timedelta | None = None,
        max_mem_percent: float | None = None,
        max_tasks_per_worker: int | None = None,
        lease_timeout: float | int | timedelta = 10.0,
        shutdown_timeout: float | int | timedelta = 30.0,
        cancel_grace: float | int | timedelta = 5.0,
        signing_key: str | bytes | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        worker_log_file: str | None = None,
        scheduler_log_file: str | None = None,
        worker_log_level: str | int = "INFO",
        scheduler_log_level: str | int = "INFO",
        log_tasks: bool = True,
        tracing: bool | Callable[[], Any] = False,
        metrics: Metrics | None = None,
        metrics_port: int | None = None,
        broker: Broker | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.queues = QueueSet.build(queues)
        self.registry = Registry(self.queues, app_defaults(
            max_retries=max_retries, soft_timeout=soft_timeout, hard_timeout=hard_timeout,
            max_deliveries=max_deliveries, keep_result=keep_result))
        self.worker_options = WorkerOptions(
            concurrency=concurrency, async_concurrency=async_concurrency, exclude_queues=exclude_queues,
            max_mem_percent=max_mem_percent, max_tasks_per_worker=max_tasks_per_worker,
            lease_timeout=lease_timeout, shutdown_timeout=shutdown_timeout, cancel_grace=cancel_grace)
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
            worker_log_level=worker_log_level, scheduler_log_level=scheduler_log_level, log_tasks=log_tasks)
        self.schedules = schedules_for(schedules, self.queues)
        # False, True (OpenTelemetry's global provider) or a function making the provider in each process.
        self.tracing = tracing_option(tracing)
        self.metrics_port = optional_whole_number(metrics_port, "metrics_port (a TCP port)", 1, 65535)
        # What this process records into; a worker started with --metrics-port gives its processes their own
        # (the app object itself is never changed by a worker).
        self.metrics: Metrics = metrics or NoMetrics()
        from hexq.adapters.system.clock import SystemClock

        self.clock: Clock = clock or SystemClock()
        self._broker = broker
        self._broker_given = broker is not None  # then adelay sends through it too (bootstrap.make_async_producer)
        self._inline_mode = self.connection.scheme == "memory"
        self._inline: InlineRunner | None = None
        self._sender: Sender | None = None
        self._async_sender: bootstrap.AsyncSending | None = None

    # -- declaring ---------------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], *, name: str | None = None, queue: str | None = None,
             max_retries: int | None = None, soft_timeout: float | int | timedelta | None = None,
             hard_timeout: float | int | timedelta | None = None,
             retry_on: Sequence[type[BaseException]] | type[BaseException] = (), backoff: float = 1.0,
             backoff_max: float = 600.0, expires: float | int | timedelta | None = None,
             unique: float | int | timedelta | None = None,
             rate_limit: str | RateLimit | None = None,
             keep_result: float | int | timedelta | None = None) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, *, name: str | None = None, queue: str | None = None,
             max_retries: int | None = None, soft_timeout: float | int | timedelta | None = None,
             hard_timeout: float | int | timedelta | None = None,
             retry_on: Sequence[type[BaseException]] | type[BaseException] = (), backoff: float = 1.0,
             backoff_max: float = 600.0, expires: float | int | timedelta | None = None,
             unique: float | int | timedelta | None = None,
             rate_limit: str | RateLimit | None = None,
             keep_result: float | int | timedelta | None = None,
             ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, *, name: str | None = None, queue: str | None = None,
             max_retries: int | None = None, soft_timeout: float | int | timedelta | None = None,
             hard_timeout: float | int | timedelta | None = None,
             retry_on: Sequence[type[BaseException]] | type[BaseException] = (), backoff: float = 1.0,
             backoff_max: float = 600.0, expires: float | int | timedelta | None = None,
             unique: float | int | timedelta | None = None,
             rate_limit: str | RateLimit | None = None,
             keep_result: float | int | timedelta | None = None) -> Any:
        """Register a task; usable bare (``@app.task``) or with options (``@app.task(queue=...)``).
        ``expires``: each run's deadline, counted from its ``.delay()``; a run not started by then never runs.
        ``unique``: a window (timedelta or seconds); while an identical call waits or runs, sending it again
        stores nothing and returns that task's id (see the README, "Unique tasks").
        ``rate_limit`` ("100/m", see ``hexq.core.rate_limit``) caps how often it starts, across every worker.
        ``keep_result``: how long its outcome is kept for ``handle.result()`` (see the README, "Results and
        status"); unset, its queue's or the app's applies, 0 keeps none."""

        def register(function: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or function.__name__
            options = task_options(task_name, queue=queue, max_retries=max_retries, soft_timeout=soft_timeout,
                                   hard_timeout=hard_timeout, retry_on=retry_on, backoff=backoff,
                                   backoff_max=backoff_max, expires=expires, unique=unique,
                                   rate_limit=rate_limit, keep_result=keep_result)
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

    def enqueue_many(self, calls: Sequence[Call]) -> list[TaskHandle]:
        """Encode and store many task runs, pipelined; returns their handles in order."""
        return [TaskHandle(task_id, self) for task_id in bootstrap.sender_for(self).send(_sends(calls))]

    async def aenqueue_many(self, calls: Sequence[Call]) -> list[TaskHandle]:
        """``enqueue_many`` for ``async def`` code: awaited, never blocking the event loop."""
        return [TaskHandle(task_id, self) for task_id in await bootstrap.async_sender_for(self).send(_sends(calls))]

    async def aclose(self) -> None:
        """Close the connections ``adelay`` opened in this event loop (they are also dropped with the loop)."""
        if self._async_sender is not None:
            await self._async_sender.aclose()

    def handle(self, task_id: str) -> TaskHandle:
        """The handle of a task sent by any process (its id, from ``.delay()``): status and result."""
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"a task id is a non-empty str (what .delay() returned), got {task_id!r}")
        return TaskHandle(str(task_id), self)

    def broadcast(self, task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        return bootstrap.sender_for(self).broadcast(task.name, args, kwargs)

    def cancel(self, task_id: str) -> Cancelled:
        """Cancel one task by id and say what it was (``Cancelled``): removed before it ran, being stopped by
        its worker, already finished, or unknown (the last two change nothing). Its status then reads
        cancelled: the outcome is kept even without ``keep_result`` (for a day, else for ``keep_result``)."""
        return bootstrap.cancelling(self).cancel(task_id)

    async def acancel(self, task_id: str) -> Cancelled:
        """``cancel()`` for ``async def`` code: the broker's cancel (an operator's action, not a hot path) runs in
        a thread, so the event loop is never blocked."""
        return await asyncio.to_thread(self.cancel, task_id)

    def run_pending(self) -> int:
        """In-process mode: run every task that is due now (including eta tasks whose time has come)."""
        return bootstrap.inline_runner(self).run_pending()

    def _own_async_sender(self) -> bootstrap.AsyncSending:
        """What ``adelay`` uses in this app's own process (built on first use, as the sync sender)."""
        if self._async_sender is None:
            self._async_sender = bootstrap.build_async_sender(self, self._own_sender())
        return self._async_sender

    def _own_sender(self) -> Sender:
        """The sender of this app's own process (a worker child has its own: see bootstrap.sender_for)."""
        if self._sender is None:
            self._sender = bootstrap.build_sender(self, self.broker, self.metrics)
        return self._sender

    def __repr__(self) -> str:
        return f"<HexQ {self.connection.redacted} queues={self.queues.names} tasks={len(self.registry.tasks)}>"
