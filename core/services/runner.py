"""Running one reserved task: decode, check, run with its limits, then acknowledge, retry or dead-letter."""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
from collections.abc import Callable
from typing import Any, Protocol

import attrs

from hexq.core.errors import HexqError, MalformedPayloadError, SoftTimeout, UnknownTaskError
from hexq.core.message import Codec, TaskMessage
from hexq.core.policy import FailureKind, GiveUp, Limits, after_failure, on_redelivery, safe_str
from hexq.core.ports import Broker, Clock, Delivery, Metrics, NoMetrics, OutgoingTask
from hexq.core.registry import Registry, TaskDef, current_attempt, current_task

log = logging.getLogger("hexq.worker")


class SoftAlarm(Protocol):
    """Interrupts a running sync task with SoftTimeout after a delay (SIGALRM in a worker child)."""

    def arm(self, seconds: float) -> None: ...

    def disarm(self) -> None: ...


class NoAlarm:
    """Used where a sync task cannot be interrupted (in-process runs): the soft timeout is not enforced."""

    def arm(self, seconds: float) -> None:
        return None

    def disarm(self) -> None:
        return None


class RunReporter(Protocol):
    """Tells the worker parent which task runs in which slot, and until when (the RunningBoard)."""

    def started(self, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None: ...

    def finished(self, slot: int) -> None: ...


class NoReporter:
    def started(self, slot: int, task_id: str, soft_deadline: float, hard_deadline: float) -> None:
        return None

    def finished(self, slot: int) -> None:
        return None


@attrs.define
class RunStats:
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    dead: int = 0


@attrs.define
class TaskRunner:
    registry: Registry
    codec: Codec
    broker: Broker
    clock: Clock
    consumer: str
    rand: Callable[[], float]
    alarm: SoftAlarm = attrs.field(factory=NoAlarm)
    reporter: RunReporter = attrs.field(factory=NoReporter)
    monotonic: Callable[[], float] | None = None
    metrics: Metrics = attrs.field(factory=NoMetrics)
    defer_acks: bool = True
    pending_acks: list[str] = attrs.field(factory=list)
    stats: RunStats = attrs.field(factory=RunStats)
    _limits: dict[tuple[str, str], Limits] = attrs.field(factory=dict)

    def take_acks(self) -> list[str]:
        acks, self.pending_acks = self.pending_acks, []
        return acks

    def flush_acks(self) -> None:
        if self.pending_acks:
            acks = self.take_acks()
            try:
                self.broker.ack(self.consumer, acks)
            except BaseException:
                # Still ours: an unacknowledged task stays owned by this live consumer, so the acks must be
                # sent later rather than forgotten.
                self.pending_acks[:0] = acks
                raise

    def prepare(self, delivery: Delivery) -> tuple[TaskMessage, TaskDef] | None:
        """Decode and vet a delivery; dead-letter it (and return None) when it cannot run."""
        if delivery.payload is None:
            # Its payload is gone: a consumer whose lease had expired acknowledged it after it was put back.
            log.info("skipping task %s: no stored payload (already completed elsewhere, or an entry hexq "
                     "did not write)", delivery.id)
            self._ack(delivery.id)
            return None
        try:
            message = self.codec.decode(delivery.payload)
            task = self.registry.get(message.name)
        except (MalformedPayloadError, UnknownTaskError) as exc:
            self._reject(delivery, f"{type(exc).__name__}: {exc}")
            return None
        if delivery.crashes:
            verdict = on_redelivery(delivery.crashes, self.registry.defaults.max_deliveries)
            if not verdict.run:
                self._reject(delivery, verdict.reason)
                return None
            log.warning("task %s %s[%s]: running again after %d worker crash(es)", message.id,
                        message.name, message.queue, delivery.crashes)
        return message, task

    def limits_for(self, message: TaskMessage, task: TaskDef) -> Limits:
        key = (task.name, message.queue)
        limits = self._limits.get(key)  # the registry does not change while a worker runs
        if limits is None:
            try:
                limits = self.registry.limits(task, message.queue)
            except HexqError:
                # A queue this app does not declare (a producer with another config): use the task's and
                # the app's limits rather than refusing to run it.
                limits = self.registry.limits(task, self.registry.queues.default.name)
            self._limits[key] = limits
        return limits

    async def run(self, delivery: Delivery, slot: int = 0) -> None:
        prepared = self.prepare(delivery)
        if prepared is not None:
            await self.run_prepared(delivery, prepared[0], prepared[1], slot)

    async def run_prepared(self, delivery: Delivery, message: TaskMessage, task: TaskDef, slot: int) -> None:
        limits = self.limits_for(message, task)
        token = current_task.set(message)
        attempt_token = current_attempt.set(message.retries + delivery.crashes + 1)
        started = self.clock.monotonic()
        now = self.monotonic() if self.monotonic else started
        self.reporter.started(
            slot,
            delivery.id,
            now + limits.soft_timeout if limits.soft_timeout else 0.0,
            now + limits.hard_timeout if limits.hard_timeout else 0.0,
        )
        failure: FailureKind | None = None
        error: BaseException | None = None
        self.metrics.started(message.name, message.queue)
        try:
            if self.registry.hooks.before_task_started:
                await self._call_hooks(self.registry.hooks.before_task_started)
            if task.is_async:
                await self._run_async(task, message, limits)
            else:
                await self._run_sync(task, message, limits)
        except SoftTimeout as exc:
            failure, error = "soft_timeout", exc
        except asyncio.CancelledError as exc:
            # Only our own soft timeout cancels a task coroutine; a shutdown cancels the loop, not tasks.
            failure, error = "soft_timeout", exc
        except BaseException as exc:
            failure, error = "exception", exc
        finally:
            self.reporter.finished(slot)
        duration = self.clock.monotonic() - started
        try:
            if self.registry.hooks.after_task_finished:
                await self._call_hooks(self.registry.hooks.after_task_finished)
        except Exception:
            log.exception("after_task_finished hook failed")
        try:
            if failure is None:
                self.stats.succeeded += 1
                self.metrics.finished(message.name, message.queue, "succeeded", duration)
                log.debug("task %s %s[%s] succeeded in %.4fs", message.id, message.name, message.queue,
                          duration)
                self._ack(delivery.id)
            else:
                try:
                    self._failed(delivery, message, task, limits, failure, error, duration)
                except HexqError:
                    raise  # the broker is unreachable: the task stays owned and comes back with the lease
                except Exception as exc:
                    # Recording the failure failed (say, the retry cannot be re-encoded): never let that
                    # kill the worker and bring the task back in a loop; dead-letter it with the reason.
                    log.exception("could not record the failure of task %s", message.id)
                    self._dead(delivery.id, message.queue, delivery.payload,
                               f"failed, and its failure could not be recorded: {safe_str(exc)}")
        finally:
            current_task.reset(token)
            current_attempt.reset(attempt_token)

    async def _run_sync(self, task: TaskDef, message: TaskMessage, limits: Limits) -> None:
        if limits.soft_timeout:
            self.alarm.arm(limits.soft_timeout)
        try:
            result = self._wrapped(task, message)
            if inspect.isawaitable(result):
                await result
        finally:
            if limits.soft_timeout:
                self.alarm.disarm()

    async def _run_async(self, task: TaskDef, message: TaskMessage, limits: Limits) -> None:
        result = self._wrapped(task, message)
        if not inspect.isawaitable(result):
            return
        if limits.soft_timeout:
            try:
                await asyncio.wait_for(_contained(result), limits.soft_timeout)
            except asyncio.TimeoutError:
                raise SoftTimeout(f"ran past its soft timeout of {limits.soft_timeout}s") from None
            except _Escaped as escaped:
                raise escaped.original from None
        else:
            await result

    def _wrapped(self, task: TaskDef, message: TaskMessage) -> Any:
        fn: Callable[..., Any] = task.fn if task.is_async else _outside_loop(task.fn)
        for wrapper in reversed(self.registry.hooks.wrappers):
            fn = _bind(wrapper, fn)
        return fn(*message.args, **message.kwargs)

    async def _call_hooks(self, hooks: list[Callable[[], Any]]) -> None:
        for hook in hooks:
            result = hook()
            if inspect.isawaitable(result):
                await result

    def _failed(self, delivery: Delivery, message: TaskMessage, task: TaskDef, limits: Limits,
                kind: FailureKind, error: BaseException | None, duration: float) -> None:
        self.stats.failed += 1
        retries_used = message.retries + delivery.crashes
        decision = after_failure(kind, limits, task.options, retries_used, error, self.rand())
        if kind == "exception" and error is not None:
            log.error("task %s %s[%s] failed after %.4fs (attempt %d)", message.id, message.name,
                      message.queue, duration, retries_used + 1, exc_info=error)
        else:
            log.warning("task %s %s[%s] hit its %s after %.4fs (attempt %d)", message.id, message.name,
                        message.queue, kind.replace("_", " "), duration, retries_used + 1)
        if message.broadcast or isinstance(decision, GiveUp):
            reason = decision.reason if isinstance(decision, GiveUp) else "broadcast task failed"
            self._dead(delivery.id, message.queue, delivery.payload, reason)
            self.metrics.finished(message.name, message.queue, "dead_lettered", duration)
            return
        self.metrics.finished(message.name, message.queue, "retried", duration)
        self.retry(delivery.id, message, retries_used + 1, decision.delay)
        log.info("task %s %s[%s] will retry in %.3fs (%s)", message.id, message.name, message.queue,
                 decision.delay, decision.reason)

    def fail_outside(self, task_id: str, payload: str | bytes | None, kind: FailureKind) -> None:
        """Record a failure seen from outside the run (the parent killed the child at its hard timeout)."""
        delivery = Delivery(task_id, "?", payload)
        if payload is None:
            return
        try:
            message = self.codec.decode(payload)
            task = self.registry.get(message.name)
        except (MalformedPayloadError, UnknownTaskError) as exc:
            self._reject(delivery, f"{type(exc).__name__}: {exc}")
            return
        delivery = attrs.evolve(delivery, queue=message.queue)
        self._failed(delivery, message, task, self.limits_for(message, task), kind, None, 0.0)

    def retry(self, task_id: str, message: TaskMessage, retries: int, delay: float) -> None:
        """Replace the owned task ``task_id`` by the next attempt of ``message``."""
        self.flush_acks()
        now = self.clock.now()
        retried = attrs.evolve(message, retries=retries, eta=now + delay if delay > 0 else None)
        eta_ms = math.ceil((now + delay) * 1000) if delay > 0 else None
        self.broker.retry(self.consumer, OutgoingTask(task_id, message.queue, self.codec.encode(retried), eta_ms))
        self.stats.retried += 1

    def _reject(self, delivery: Delivery, reason: str) -> None:
        log.error("task %s from queue %s sent to the dead-letter list: %s", delivery.id, delivery.queue, reason)
        self._dead(delivery.id, delivery.queue, delivery.payload, reason)

    def _dead(self, task_id: str, queue: str, payload: str | bytes | None, reason: str) -> None:
        self.flush_acks()
        if isinstance(payload, bytes):  # kept for the operator, readable, with the bad bytes escaped
            payload = payload.decode("utf-8", "backslashreplace")
        self.broker.dead_letter(self.consumer, task_id, queue, payload, reason, int(self.clock.now() * 1000))
        self.stats.dead += 1

    def _ack(self, task_id: str) -> None:
        self.pending_acks.append(task_id)
        if not self.defer_acks:
            self.flush_acks()


def _outside_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Call a sync task as if no event loop were running in this thread.

    The child's loop is running while a sync task executes inline, so a task that itself calls
    ``asyncio.run()`` (or asgiref's ``async_to_sync``) would be refused. Nothing awaits during a sync call,
    so hiding the running loop for its duration is safe.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        running = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(None)
        try:
            return fn(*args, **kwargs)
        finally:
            asyncio.events._set_running_loop(running)

    return call


class _Escaped(Exception):
    """Carries SystemExit/KeyboardInterrupt out of a wait_for, which would otherwise re-raise them into the
    event loop itself and stop the worker child."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(repr(original))
        self.original = original


async def _contained(awaitable: Any) -> Any:
    try:
        return await awaitable
    except (SystemExit, KeyboardInterrupt) as exc:
        raise _Escaped(exc) from None


def _bind(wrapper: Callable[..., Any], inner: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return wrapper(inner, args, kwargs)

    # Keep the coroutine-ness visible so an outer wrapper written like WakaQ's example awaits us.
    if inspect.iscoroutinefunction(wrapper) or inspect.iscoroutinefunction(inner):
        async def acall(*args: Any, **kwargs: Any) -> Any:
            result = wrapper(inner, args, kwargs)
            return await result if inspect.isawaitable(result) else result

        return acall
    return call
