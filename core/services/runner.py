"""Running one reserved task: decode, check, run with its limits, then acknowledge, retry or dead-letter."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any, Literal, Protocol

import attrs

from hexq.core.errors import HexqError, MalformedPayloadError, SoftTimeout, TaskCancelled, UnknownTaskError
from hexq.core.message import MAX_TASK_ID_BYTES, Codec, TaskMessage
from hexq.core.policy import FailureKind, GiveUp, Limits, after_failure, on_redelivery, safe_str
from hexq.core.ports import (
    NO_SPAN,
    Clock,
    Consumer,
    Delivery,
    Metrics,
    NoMetrics,
    NoTracing,
    OutcomeRecord,
    OutgoingTask,
    RunSpan,
    Tracing,
    Unrun,
)
from hexq.core.registry import Registry, TaskDef, current_attempt, current_task
from hexq.core.services.cancellation import OwnCancellation, run_task_body
from hexq.core.services.invoke import call_hooks, call_task
from hexq.core.services.keeping import OutcomeKeeper
from hexq.core.services.soft_timeout import NoAlarm, SoftAlarm, run_async, run_sync
from hexq.core.services.stopping import CancelRequests, NoCancelRequests, Stopper
from hexq.core.services.task_log import CANCELLED, DEAD_LETTERED, SUCCEEDED, log_cancelled, log_failed, log_succeeded
from hexq.core.tracebacks import dead_letter_traceback

__all__ = ["NoAlarm", "NoReporter", "RunReporter", "SoftAlarm", "TaskRunner"]

log = logging.getLogger("hexq.worker")

# How a run failed, and with what (None when seen from outside the run, as a hard timeout is); or that it was
# stopped because its cancellation was requested.
Failure = tuple[FailureKind | Literal["cancelled"], BaseException | None]


class _Returned:
    """What a run that did not fail returned (kept only for ``keep_result``)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class RunReporter(Protocol):
    """Tells the worker parent which task runs in which slot, and until when (the RunningBoard)."""

    def started(self, slot: int, task_id: str, hard_deadline: float) -> None: ...

    def finished(self, slot: int) -> None: ...


class NoReporter:
    def started(self, slot: int, task_id: str, hard_deadline: float) -> None:
        return None

    def finished(self, slot: int) -> None:
        return None


@attrs.define
class TaskRunner:
    registry: Registry
    codec: Codec
    broker: Consumer
    clock: Clock
    consumer: str
    rand: Callable[[], float]
    alarm: SoftAlarm = attrs.field(factory=NoAlarm)
    reporter: RunReporter = attrs.field(factory=NoReporter)
    metrics: Metrics = attrs.field(factory=NoMetrics)
    cancels: CancelRequests = attrs.field(factory=NoCancelRequests)
    tracing: Tracing = attrs.field(factory=NoTracing)
    defer_acks: bool = True
    # One INFO line per task that succeeds (``HexQ(log_tasks=...)``); failures are logged either way.
    log_tasks: bool = True
    pending_acks: list[str] = attrs.field(factory=list)
    # The kept outcomes (keep_result) of tasks in pending_acks, sent with them.
    pending_outcomes: list[OutcomeRecord] = attrs.field(factory=list)
    # Retries and dead letters the broker could not take yet (see _settle); sent again by flush_settles.
    pending_settles: list[Callable[[], None]] = attrs.field(factory=list)
    _limits: dict[tuple[str, str], Limits] = attrs.field(factory=dict)
    keeper: OutcomeKeeper = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.keeper = OutcomeKeeper(self.registry, self.codec)

    def take_acks(self) -> list[str]:
        acks, self.pending_acks = self.pending_acks, []
        return acks

    def take_outcomes(self) -> list[OutcomeRecord]:
        """The kept outcomes of the acks just taken, to send with them (empty unless keep_result is used)."""
        if not self.pending_outcomes:
            return []
        outcomes, self.pending_outcomes = self.pending_outcomes, []
        return outcomes

    def give_back(self, acks: list[str], outcomes: list[OutcomeRecord]) -> None:
        """Acks (and their outcomes) taken but not sent: still ours, sent with the next call."""
        self.pending_acks[:0] = acks
        if outcomes:
            self.pending_outcomes[:0] = outcomes

    def flush_acks(self) -> None:
        if self.pending_acks:
            acks, outcomes = self.take_acks(), self.take_outcomes()
            try:
                if outcomes:
                    self.broker.ack(self.consumer, acks, outcomes)
                else:
                    self.broker.ack(self.consumer, acks)
            except BaseException:
                # Still ours: an unacknowledged task stays owned by this live consumer, so the acks must be
                # sent later rather than forgotten.
                self.give_back(acks, outcomes)
                raise

    def prepare(self, delivery: Delivery) -> tuple[TaskMessage, TaskDef] | None:
        """Decode and vet a delivery; dead-letter it (and return None) when it cannot run."""
        if delivery.payload is None:
            # Its payload is gone: a consumer whose lease had expired acknowledged it after it was put back.
            log.info("skipping task %s: no stored payload (already completed elsewhere, or an entry hexq "
                     "did not write)", delivery.id)
            self._ack(delivery.id)
            return None
        too_long = _untrackable_id(delivery.id)
        if too_long is not None:
            self._reject(delivery, too_long, keep=False)  # an id no handle could have been given
            return None
        prepared = self._decode(delivery, delivery.payload)
        if (prepared is None or self._expired(delivery, *prepared) or self._cancelled(delivery, *prepared)
                or not self._may_run_again(delivery, prepared[0])):
            return None
        return prepared

    def _cancelled(self, delivery: Delivery, message: TaskMessage, task: TaskDef) -> bool:
        """A task reserved and not started whose cancellation was requested meanwhile is never started."""
        if not self.cancels.requested(delivery.id):
            return False
        log_cancelled(message, message.retries + delivery.crashes + 1, None)
        self._discard_unrun(delivery.id, message, task, "cancelled", "cancelled before it started")
        return True

    def _expired(self, delivery: Delivery, message: TaskMessage, task: TaskDef) -> bool:
        """A task not started by its deadline never starts: it is dropped and counted, not run."""
        if message.expires is None:
            return False
        late = self.clock.now() - message.expires
        if late <= 0:
            return False
        log.warning("task %s %s[%s] expired: its deadline passed %.3fs before it could start; not run",
                    message.id, message.name, message.queue, late)
        self.metrics.expired(message.name, message.queue)
        self._discard_unrun(delivery.id, message, task, "expired",
                            f"its deadline passed {late:.3f} s before it could start")
        return True

    def _decode(self, delivery: Delivery, payload: str | bytes,
                owner: str | None = None) -> tuple[TaskMessage, TaskDef] | None:
        try:
            message = self.codec.decode(payload)
            return message, self.registry.get(message.name)
        except (MalformedPayloadError, UnknownTaskError) as exc:
            name = exc.name if isinstance(exc, UnknownTaskError) else ""
            self._reject(delivery, f"{type(exc).__name__}: {exc}", owner, name=name)
            return None

    def _may_run_again(self, delivery: Delivery, message: TaskMessage) -> bool:
        if not delivery.crashes:
            return True
        verdict = on_redelivery(delivery.crashes, self.registry.defaults.max_deliveries)
        if not verdict.run:
            self._reject(delivery, verdict.reason, name=message.name, limits=self.limits_for(
                message, self.registry.get(message.name)))
            return False
        log.warning("task %s %s[%s]: running again after %d worker crash(es)", message.id, message.name,
                    message.queue, delivery.crashes)
        return True

    def limits_for(self, message: TaskMessage, task: TaskDef) -> Limits:
        key = (task.name, message.queue)
        limits = self._limits.get(key)  # the registry does not change while a worker runs
        if limits is None:
            limits = self._limits[key] = self._resolve_limits(task, message.queue)
        return limits

    def _resolve_limits(self, task: TaskDef, queue: str) -> Limits:
        try:
            limits = self.registry.limits(task, queue)
        except HexqError:
            # A queue this app does not declare (a producer with another config): use the task's and the
            # app's limits rather than refusing to run it.
            limits = self.registry.limits(task, self.registry.queues.default.name)
        if limits.conflict is not None:
            # Resolved once per task and queue, so this is said once rather than on every run.
            log.warning("task %s on queue %s: %s; running it without a soft timeout", task.name, queue,
                        limits.conflict)
        return limits

    async def run(self, delivery: Delivery, slot: int = 0) -> None:
        prepared = self.prepare(delivery)
        if prepared is not None:
            await self.run_prepared(delivery, prepared[0], prepared[1], slot)

    async def run_prepared(self, delivery: Delivery, message: TaskMessage, task: TaskDef, slot: int) -> None:
        """Run a prepared delivery in ``slot`` and record how it went.

        When the asyncio task running this is cancelled (a shutdown), the CancelledError goes on up and
        nothing is recorded: the task is still owned, and comes back as it would after a crash.
        """
        limits = self.limits_for(message, task)
        attempt = message.retries + delivery.crashes + 1
        message_token = current_task.set(message)
        attempt_token = current_attempt.set(attempt)
        span = NO_SPAN if isinstance(self.tracing, NoTracing) else self.tracing.run(
            message.name, message.id, message.queue, attempt, message.trace)
        try:
            started = self.clock.monotonic()
            ended = await self._execute(delivery, message, task, limits, slot, started)
            duration = self.clock.monotonic() - started
            await self._after_task_finished()
            self._record(delivery, message, task, limits, ended, duration, span)
        finally:
            span.end(None)  # interrupted (a shutdown cancelled it); a run that was recorded has ended it already
            current_task.reset(message_token)
            current_attempt.reset(attempt_token)

    async def _execute(self, delivery: Delivery, message: TaskMessage, task: TaskDef, limits: Limits, slot: int,
                       started: float) -> Failure | _Returned:
        self._report_started(slot, delivery.id, limits, started)
        self.metrics.started(message.name, message.queue)
        stopper = Stopper(asyncio.current_task()) if task.is_async else None
        if stopper is not None:
            self.cancels.running(delivery.id, stopper.stop)
        try:
            value = await run_task_body(self._body(task, message, limits))
        except SoftTimeout as exc:
            return "soft_timeout", exc
        except TaskCancelled as exc:
            return "cancelled", exc
        except OwnCancellation as own:
            return "exception", own.original
        except asyncio.CancelledError:
            if stopper is not None and stopper.stopped:
                stopper.absorb()
                return "cancelled", None
            raise  # the asyncio task running this is being cancelled: the run has no outcome
        except BaseException as exc:
            return "exception", exc
        finally:
            if stopper is not None:
                stopper.active = False
                self.cancels.finished(delivery.id)
            self.reporter.finished(slot)
        return _Returned(value)

    def _report_started(self, slot: int, task_id: str, limits: Limits, started: float) -> None:
        # The Clock's monotonic time is the one every process of a worker shares, so the parent can compare it.
        hard_deadline = started + limits.hard_timeout if limits.hard_timeout is not None else 0.0  # 0.0: none
        self.reporter.started(slot, task_id, hard_deadline)

    async def _body(self, task: TaskDef, message: TaskMessage, limits: Limits) -> Any:
        hooks = self.registry.hooks
        if hooks.before_task_started:
            await call_hooks(hooks.before_task_started)
        if task.is_async:
            return await run_async(lambda: call_task(task, message, hooks.wrappers), limits.soft_timeout)
        # While the task runs (inside its wrappers, an async one included), and only then, a cancellation
        # request may raise TaskCancelled in it: the window the soft timeout's alarm is armed for.
        self.cancels.running(message.id, None)
        try:
            return await run_sync(lambda: call_task(task, message, hooks.wrappers), limits.soft_timeout, self.alarm)
        finally:
            self.cancels.finished(message.id)

    async def _after_task_finished(self) -> None:
        hooks = self.registry.hooks.after_task_finished
        if hooks:
            try:
                await run_task_body(call_hooks(hooks))
            except Exception:  # OwnCancellation too: a hook's own CancelledError is its failure, not a shutdown
                log.exception("after_task_finished hook failed")

    def _record(self, delivery: Delivery, message: TaskMessage, task: TaskDef, limits: Limits,
                ended: Failure | _Returned, duration: float, span: RunSpan = NO_SPAN) -> None:
        if isinstance(ended, _Returned):
            self.metrics.finished(message.name, message.queue, "succeeded", duration)
            if self.log_tasks:
                log_succeeded(message, message.retries + delivery.crashes + 1, duration)
            span.end(SUCCEEDED)
            keep_ms = limits.keep_result_ms
            if keep_ms is None or message.broadcast:
                self._ack(delivery.id)
            else:
                self._ack(delivery.id, self.keeper.succeeded(delivery.id, message.name, ended.value, keep_ms,
                                                             self._now_ms()))
            return
        kind, error = ended
        if kind == "cancelled":
            log_cancelled(message, message.retries + delivery.crashes + 1, duration)
            span.end(CANCELLED)
            self.metrics.finished(message.name, message.queue, "cancelled", duration)
            self._discard_unrun(delivery.id, message, task, "cancelled",
                                f"cancelled while it ran, after {duration:.3f} s")
            return
        try:
            self._failed(delivery, message, task, limits, kind, error, duration, span=span)
        except HexqError:
            raise  # the broker is unreachable: the outcome is kept (_settle) and sent when it is back
        except Exception as exc:
            # Recording the failure failed (say, the retry cannot be re-encoded): never let that kill the
            # worker and bring the task back in a loop; dead-letter it with the reason.
            log.exception("could not record the failure of task %s", message.id)
            span.end(DEAD_LETTERED, kind, error)
            self._dead(delivery.id, message.queue, delivery.payload,
                       f"failed, and its failure could not be recorded: {safe_str(exc)}",
                       traceback=dead_letter_traceback(error))

    def _failed(self, delivery: Delivery, message: TaskMessage, task: TaskDef, limits: Limits,
                kind: FailureKind, error: BaseException | None, duration: float, owner: str | None = None, *,
                span: RunSpan = NO_SPAN) -> None:
        # Each crash was an attempt too: the task ran, and its worker died under it.
        retries_used = message.retries + delivery.crashes
        decision = after_failure(kind, limits, task.options, retries_used, error, self.rand())
        if message.broadcast or isinstance(decision, GiveUp):
            reason = decision.reason if isinstance(decision, GiveUp) else "broadcast task failed"
            shown = reason if isinstance(decision, GiveUp) else f"{decision.reason}; a broadcast is not retried"
            span.end(log_failed(message, retries_used + 1, duration, kind, error, shown, None, limits.hard_timeout),
                     kind, error)
            keep_ms = None if message.broadcast else limits.keep_result_ms
            outcome = None if keep_ms is None else self.keeper.failed(
                delivery.id, message.name, kind, error, reason, keep_ms, self._now_ms())
            self._dead(delivery.id, message.queue, delivery.payload, reason, owner, outcome,
                       dead_letter_traceback(error))
            self.metrics.finished(message.name, message.queue, "dead_lettered", duration)
            return
        if message.expires is not None and self.clock.now() + decision.delay > message.expires:
            span.end(log_failed(message, retries_used + 1, duration, kind, error, decision.reason, None,
                                limits.hard_timeout, expired=True), kind, error)
            self.metrics.finished(message.name, message.queue, "expired", duration)
            self.metrics.expired(message.name, message.queue)
            self._discard_unrun(delivery.id, message, task, "expired",
                                f"{decision.reason}; its retry would start after its deadline", owner)
            return
        span.end(log_failed(message, retries_used + 1, duration, kind, error, decision.reason, decision.delay,
                            limits.hard_timeout), kind, error)
        self.metrics.finished(message.name, message.queue, "retried", duration)
        self.retry(delivery.id, message, retries_used + 1, decision.delay, owner=owner)

    def fail_outside(self, delivery: Delivery, kind: FailureKind, *, consumer: str | None = None) -> None:
        """Record a failure seen from outside the run: the worker parent killed the child at its hard timeout.

        ``delivery`` is the task as the broker holds it now, its crash count included, so the attempt is
        counted as a run inside the child counts it. ``consumer`` is the one that owns it (the dead child's),
        for whom it is retried or dead-lettered; this runner's own by default.

        The write is sent once and never kept: if the broker refuses it, the error goes up and the caller
        records the failure again from a fresh ``lookup`` (the parent driver retries its whole ``Settle``).
        A kept copy would be sent as well, storing the retry twice.
        """
        if delivery.payload is None:
            return  # settled meanwhile: acknowledged late by a consumer whose lease had expired
        owner = consumer or self.consumer
        prepared = self._decode(delivery, delivery.payload, owner)
        if prepared is not None:
            message, task = prepared
            limits = self.limits_for(message, task)
            # The run's own span died with its process: this one stands for it, over the time it ran.
            span = NO_SPAN if isinstance(self.tracing, NoTracing) else self.tracing.run(
                message.name, message.id, message.queue, message.retries + delivery.crashes + 1, message.trace,
                current=False, ran_for=limits.hard_timeout or 0.0)
            self._failed(delivery, message, task, limits, kind, None, 0.0, owner, span=span)

    def retry(self, task_id: str, message: TaskMessage, retries: int, delay: float, *,
              owner: str | None = None) -> None:
        """Replace the owned task ``task_id`` by the next attempt of ``message``; ``owner`` as in ``_settle``."""
        now = self.clock.now()
        retried = attrs.evolve(message, retries=retries, eta=now + delay if delay > 0 else None)
        eta_ms = math.ceil((now + delay) * 1000) if delay > 0 else None
        outgoing = OutgoingTask(task_id, message.queue, self.codec.encode(retried), eta_ms)
        self._settle(lambda consumer: self.broker.retry(consumer, outgoing), owner)

    def _reject(self, delivery: Delivery, reason: str, owner: str | None = None, *, name: str = "",
                limits: Limits | None = None, keep: bool = True) -> None:
        """Dead-letter a delivery that does not run; its outcome ("dead") is kept by the task's ``keep_result``
        (``limits``) or, when the task is not known, its queue's or the app's."""
        log.error("task %s from queue %s sent to the dead-letter list: %s", delivery.id, delivery.queue, reason)
        keep_ms = self.keeper.keep_ms(limits, delivery.queue) if keep else None
        outcome = None if keep_ms is None else self.keeper.rejected(delivery.id, name, reason, keep_ms,
                                                                   self._now_ms())
        self._dead(delivery.id, delivery.queue, delivery.payload, reason, owner, outcome)

    def _now_ms(self) -> int:
        return int(self.clock.now() * 1000)

    def _dead(self, task_id: str, queue: str, payload: str | bytes | None, reason: str,
              owner: str | None = None, outcome: OutcomeRecord | None = None, traceback: str = "") -> None:
        """Dead-letter an owned task; ``traceback`` is its failure's (``dead_letter_traceback``), "" when the
        task did not raise (a hard timeout, a crash loop, a payload that could not run)."""
        if isinstance(payload, bytes):  # kept for the operator, readable, with the bad bytes escaped
            payload = payload.decode("utf-8", "backslashreplace")
        text, now_ms = payload, self._now_ms()
        self._settle(lambda consumer: self.broker.dead_letter(consumer, task_id, queue, text, reason, now_ms,
                                                              outcome, traceback=traceback), owner)

    def _discard_unrun(self, task_id: str, message: TaskMessage, task: TaskDef, why: Unrun, detail: str,
                       owner: str | None = None) -> None:
        """End a task that will not run (again), its outcome ("cancelled", "expired") kept: always, for its
        status to read so (``OutcomeKeeper.unrun``)."""
        outcome = self.keeper.unrun(task_id, message.name, why, detail, self.limits_for(message, task),
                                    message.queue, self._now_ms())
        self._settle(lambda consumer: self.broker.discard(consumer, task_id, message.queue, why, outcome), owner)

    def _settle(self, write: Callable[[str], None], owner: str | None = None) -> None:
        """Send a write that settles an owned task (a retry, a dead letter) for the consumer that owns it.

        ``owner`` None: this runner's consumer, after its pending acks (acks first, as they were taken).
        If the broker is unreachable, the write is kept and sent again by ``flush_settles``: the task stays
        owned by this live consumer, whose lease its worker parent keeps renewing, so nobody else would ever
        settle it. Sending it twice (a reply lost, then sent again) can store a retry twice, which
        at-least-once delivery allows. Kept before anything is sent, so that no failure (of the acks
        either) can leave the task owned with no write to settle it.

        ``owner`` given (``fail_outside``): sent once, and a refusal goes up to the caller, who records the
        failure again; nothing is kept, and this runner's own acks are not involved.
        """
        if owner is not None:
            write(owner)
            return
        self.pending_settles.append(lambda: write(self.consumer))
        self.flush_settles()

    def flush_settles(self) -> None:
        """Send the kept settling writes, oldest first; raises the broker's error and keeps the rest."""
        self.flush_acks()
        while self.pending_settles:
            self.pending_settles[0]()
            del self.pending_settles[0]

    def _ack(self, task_id: str, outcome: OutcomeRecord | None = None) -> None:
        self.pending_acks.append(task_id)
        if outcome is not None:
            self.pending_outcomes.append(outcome)
        if not self.defer_acks:
            self.flush_acks()


def _untrackable_id(task_id: str) -> str | None:
    """Why the worker parent could not be told that this task runs (its id does not fit the board), or None."""
    if len(task_id) * 4 <= MAX_TASK_ID_BYTES:  # a character takes at most 4 bytes: most ids need no encoding
        return None
    size = len(task_id.encode("utf-8", "surrogatepass"))
    if size <= MAX_TASK_ID_BYTES:
        return None
    return f"task id is {size} bytes long in UTF-8, over the {MAX_TASK_ID_BYTES} a worker can track"
