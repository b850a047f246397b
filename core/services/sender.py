"""Sending tasks: ``.delay()``, batches and broadcasts, from any process (an app, a task inside a worker)."""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs

from hexq.core.durations import deadline_to_epoch, eta_to_epoch
from hexq.core.errors import DeadlineError, HexqError
from hexq.core.outgoing import TaskFactory
from hexq.core.ports import NO_SPAN, Clock, Metrics, NoMetrics, NoTracing, OutgoingTask, Producer, SendSpan, Tracing
from hexq.core.registry import Registry
from hexq.core.unique import check_key_allowed


@attrs.frozen
class Send:
    """One run of a task to send: its name, arguments, and the per-call options."""

    name: str
    args: tuple[Any, ...] | list[Any]
    kwargs: dict[str, Any]
    queue: str | None = None
    eta: Any = None  # a timedelta, a datetime (naive = UTC) or seconds from now
    expires: Any = None  # the deadline: a timedelta or seconds from now, or a datetime (naive = UTC)
    unique_key: Any = None  # a unique task's identity instead of its arguments (None: the arguments)


class TaskArgumentsError(HexqError, TypeError):
    """A call's arguments do not fit the task's function: refused at ``.delay()`` (and the other ways of sending
    from a ``Task``) before anything is encoded or sent, instead of becoming a worker's dead letter."""

    def __init__(self, task: str, reason: str, message: str) -> None:
        self.task = task
        self.reason = reason
        super().__init__(message)


_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class ArgumentCheck:
    """Checks a call against a task function's signature, read once per task (``inspect.signature`` costs tens
    of microseconds, ``Signature.bind`` about two): what Python would refuse when the worker calls the function.

    A function whose parameters are all named (positional-or-keyword or keyword-only: no ``*args``, ``**kwargs``
    or positional-only) is checked by counting and set lookups, in well under a microsecond; any other by
    ``Signature.bind``. A callable whose signature Python cannot read is not checked.
    """

    __slots__ = ("_allowed", "_display", "_named", "_needed", "_signature", "task")

    def __init__(self, task: str, fn: Callable[..., Any]) -> None:
        self.task = task
        self._display = getattr(fn, "__name__", task)
        try:
            signature: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):  # some builtins and C callables
            signature = None
        self._signature = signature
        parameters = list(signature.parameters.values()) if signature else []
        positional = [p for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = [p for p in parameters if p.kind is p.KEYWORD_ONLY]
        self._named = signature is not None and len(positional) + len(keywords) == len(parameters)
        # For each number of positional arguments a call may give (0 to all of them): the keywords it may
        # pass, and those it must (the required parameters not filled by position).
        self._allowed = [frozenset(p.name for p in positional[given:] + keywords) for given in
                         range(len(positional) + 1)]
        self._needed = [frozenset(p.name for p in positional[given:] + keywords if p.default is p.empty)
                        for given in range(len(positional) + 1)]

    def __call__(self, args: Sequence[Any], kwargs: Mapping[str, Any], options: Collection[str] = ()) -> None:
        """Returns if the function accepts ``(*args, **kwargs)``, else raises ``TaskArgumentsError``. ``options``
        names the keywords that ``.delay()`` took as hexq's options (queue, eta), for the hint."""
        if self._named and len(args) < len(self._allowed):
            keys = kwargs.keys()
            if self._needed[len(args)] <= keys <= self._allowed[len(args)]:
                return
        if self._signature is None:
            return
        try:
            self._signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise self._error(str(exc), len(args), kwargs, options) from None

    def _error(self, reason: str, given: int, kwargs: Mapping[str, Any],
               options: Collection[str]) -> TaskArgumentsError:
        assert self._signature is not None
        parameters = self._signature.parameters.values()
        named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = [key for key in kwargs if key not in named]
        if reason.startswith("missing") and unknown and all(p.kind is not p.VAR_KEYWORD for p in parameters):
            reason = f"got an unexpected keyword argument {unknown[0]!r}"  # before "missing", as Python says it
        elif reason.startswith("multiple values"):
            reason = f"got {reason}"
        elif reason == "too many positional arguments":
            most = sum(1 for p in parameters if p.kind in _POSITIONAL)
            were = "was" if given == 1 else "were"
            reason = f"takes {most} positional argument{'s' * (most != 1)} but {given} {were} given"
        bare = self._signature.replace(
            parameters=[p.replace(annotation=p.empty) for p in parameters], return_annotation=self._signature.empty)
        message = (f"{self._display}() {reason} (hexq checked the call to task {self.task!r} against its "
                   f"signature {self._display}{bare}; nothing was enqueued)")
        clashing = [name for name in options if name in self._signature.parameters]
        if clashing:
            message += (f"; .delay() took {', '.join(f'{n}=' for n in clashing)} as hexq's option, WakaQ's spelling:"
                        f" pass the task's own argument with .options().delay({clashing[0]}=...) or "
                        f".apply(kwargs={{{clashing[0]!r}: ...}})")
        return TaskArgumentsError(self.task, reason, message)


@attrs.define
class Sender:
    registry: Registry
    factory: TaskFactory
    broker: Producer
    clock: Clock
    metrics: Metrics = attrs.field(factory=NoMetrics)
    tracing: Tracing = attrs.field(factory=NoTracing)

    def send(self, calls: Sequence[Send]) -> list[str]:
        """Encode and store task runs, in order and pipelined; returns their ids (for a unique task whose
        identical task is still waiting or running, that task's id: nothing was stored for it). When tracing,
        all of them in one span, whose context each envelope carries."""
        span = self.send_span(calls)
        try:
            outgoing = self.prepare(calls, span.carrier)
            used = self.sent(calls, outgoing, self.broker.enqueue(outgoing)) if outgoing else []
        except BaseException as exc:
            span.end((), exc)
            raise
        if span is not NO_SPAN:
            span.end(stored(outgoing, used))
        return used

    def send_span(self, calls: Sequence[Send]) -> SendSpan:
        """The span of sending ``calls`` (NO_SPAN when not tracing), started before they are encoded."""
        if isinstance(self.tracing, NoTracing) or not calls:
            return NO_SPAN
        return self.tracing.send(calls[0].name, len(calls))

    def prepare(self, calls: Sequence[Send], trace: Mapping[str, str] | None = None) -> list[OutgoingTask]:
        """The tasks to store for ``calls``, encoded and checked (what ``send`` does before the broker), each
        carrying the ``trace`` context when one is given."""
        now = self.clock.now()
        return [self._outgoing(call, now, trace) for call in calls]

    def sent(self, calls: Sequence[Send], outgoing: Sequence[OutgoingTask], used: list[str]) -> list[str]:
        """After the broker stored ``outgoing`` under ``used``: counted, and ``used`` returned."""
        if not isinstance(self.metrics, NoMetrics):
            self._count(calls, outgoing, used)
        return used

    def broadcast(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """Run once on every live worker; returns how many workers got a copy to run (see
        ``Producer.broadcast``). Every copy carries the context of one span, when tracing."""
        now = self.clock.now()
        return self._broadcast(name, args, kwargs, now, lambda task: self.broker.broadcast(task, int(now * 1000)))

    def _broadcast(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], now: float,
                   store: Callable[[OutgoingTask], int]) -> int:
        if isinstance(self.tracing, NoTracing):
            return store(self._broadcast_task(name, args, kwargs, now))
        span = self.tracing.send(name, 1, broadcast=True)
        try:
            task = self._broadcast_task(name, args, kwargs, now, span.carrier)
            copies = store(task)
        except BaseException as exc:
            span.end((), exc)
            raise
        span.end((task,))
        return copies

    def _outgoing(self, call: Send, now: float, trace: Mapping[str, str] | None = None) -> OutgoingTask:
        definition = self.registry.get(call.name)
        queue = self.registry.queue_for(definition, call.queue)
        eta = None if call.eta is None else eta_to_epoch(call.eta, now)
        unique_ms = definition.options.unique_ms
        if call.unique_key is not None:
            check_key_allowed(definition.name, unique_ms, call.unique_key)
        expires = definition.options.expires if call.expires is None else call.expires
        if expires is None:
            return self.factory.new(definition.name, queue, call.args, call.kwargs, now, eta, unique_ms=unique_ms,
                                    unique_key=call.unique_key, trace=trace)
        deadline = deadline_to_epoch(expires, now)
        _check_deadline(definition.name, deadline, now, eta)
        return self.factory.new(definition.name, queue, call.args, call.kwargs, now, eta, expires=deadline,
                                unique_ms=unique_ms, unique_key=call.unique_key, trace=trace)

    def _broadcast_task(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], now: float,
                        trace: Mapping[str, str] | None = None) -> OutgoingTask:
        definition = self.registry.get(name)
        queue = self.registry.queues.default.name
        return self.factory.new(definition.name, queue, args, kwargs, now, broadcast=True, trace=trace)

    def _count(self, calls: Sequence[Send], outgoing: Sequence[OutgoingTask], used: Sequence[str]) -> None:
        counts = Counter((call.name, task.queue) for call, task, stored in zip(calls, outgoing, used, strict=True)
                         if stored == task.id)
        for (name, queue), count in counts.items():
            self.metrics.enqueued(name, queue, count)


def stored(outgoing: Sequence[OutgoingTask], used: Sequence[str]) -> list[OutgoingTask]:
    """The tasks a send stored: a unique task whose twin was still waiting stored nothing (its twin's id came
    back instead of its own)."""
    return [task for task, kept in zip(outgoing, used, strict=True) if kept == task.id]


def _check_deadline(task: str, deadline: float, now: float, eta: float | None) -> None:
    """A deadline that leaves the task no moment to start is the caller's mistake: say so now, not later."""
    if deadline <= now:
        raise DeadlineError(task, deadline, f"its deadline {_moment(deadline)} has already passed "
                                            f"({now - deadline:.3f}s ago)")
    if eta is not None and eta > deadline:
        raise DeadlineError(task, deadline, f"its eta {_moment(eta)} is after its deadline {_moment(deadline)}, "
                                            "so it would never run")


def _moment(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds")


@attrs.define
class InlineSender(Sender):
    """The in-process mode: what is sent runs here and now (``run_pending``), no worker needed. A broadcast
    reaches the one "worker" there is: this process."""

    run_pending: Callable[[], int] = lambda: 0

    def send(self, calls: Sequence[Send]) -> list[str]:
        ids = super().send(calls)
        self.run_pending()
        return ids

    def broadcast(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        def store(task: OutgoingTask) -> int:
            self.broker.enqueue([task])
            return 1

        copies = self._broadcast(name, args, kwargs, self.clock.now(), store)
        self.run_pending()
        return copies
