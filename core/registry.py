"""Registered tasks and hooks: the application's definition, independent of any broker."""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from hexq.core.errors import ConfigError, UnknownTaskError
from hexq.core.message import TaskMessage
from hexq.core.policy import AppDefaults, Limits, TaskOptions, check_limits, resolve_limits
from hexq.core.queues import QueueSet
from hexq.core.rate_limit import RateLimits

# The task a worker is running right now; per asyncio task, so async concurrency never mixes them up.
current_task: contextvars.ContextVar[TaskMessage | None] = contextvars.ContextVar(
    "hexq_current_task", default=None
)
# The attempt number (1 on the first run) of the current task, for tasks that care.
current_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("hexq_current_attempt", default=0)


@attrs.frozen
class TaskDef:
    name: str
    fn: Callable[..., Any]
    options: TaskOptions
    # Known once: asked several times per task run on the worker's hot path.
    is_async: bool = attrs.field(init=False)

    @is_async.default
    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn)


Wrapper = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
Hook = Callable[[], Any]


@attrs.define
class Hooks:
    wrappers: list[Wrapper] = attrs.field(factory=list)
    after_worker_started: list[Hook] = attrs.field(factory=list)
    before_task_started: list[Hook] = attrs.field(factory=list)
    after_task_finished: list[Hook] = attrs.field(factory=list)


@attrs.define
class Registry:
    """Tasks by name, the queues, the app defaults and the hooks."""

    queues: QueueSet
    defaults: AppDefaults
    tasks: dict[str, TaskDef] = attrs.field(factory=dict)
    hooks: Hooks = attrs.field(factory=Hooks)

    def add(self, task: TaskDef) -> None:
        existing = self.tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigError(
                f"duplicate task name {task.name!r}: already registered by "
                f"{existing.fn.__module__}.{existing.fn.__qualname__}; pass @app.task(name=...) to rename"
            )
        queue = self.queues.get(task.options.queue or self.queues.default.name)
        # A task soft timeout at or above the hard one that applies (its queue's or the app's) would never
        # fire: refuse it now rather than drop it at run time.
        check_limits(task.options, queue, self.defaults, f"task {task.name!r}")
        self.tasks[task.name] = task

    def get(self, name: str) -> TaskDef:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTaskError(name, sorted(self.tasks)) from None

    def queue_for(self, task: TaskDef, override: str | None) -> str:
        name = override or task.options.queue or self.queues.default.name
        return self.queues.get(name).name

    def limits(self, task: TaskDef, queue: str) -> Limits:
        return resolve_limits(task.options, self.queues.get(queue), self.defaults)

    def rate_limits(self, served: Sequence[str], *, signed: bool) -> RateLimits:
        """The rate limits a consumer of ``served`` enforces: every task's (a task may be sent to any queue)
        and those of the served queues. Empty when the app declares none."""
        return RateLimits.build(
            [(task.name, task.options.rate_limit) for task in self.tasks.values()],
            [(queue.name, queue.rate_limit) for queue in self.queues.ordered if queue.name in served],
            signed=signed)
