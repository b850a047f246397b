"""Global rate limits: their spelling, and the arithmetic every broker runs inside its reservation.

A limit (``"20/s"``: at most 20 task starts per second, across every worker) is enforced with GCRA, the
generic cell rate algorithm: each limit keeps one *theoretical arrival time* (TAT). A start at ``now``
conforms when ``max(TAT, now) - tolerance <= now``; taking it moves TAT to ``max(TAT, now) + interval``.
``interval`` is the period divided by the count (rounded up, so the rate is never exceeded) and
``tolerance`` is ``(burst - 1) * interval``: with the default burst of 1 starts are spaced evenly, and no
window of the period holds more than ``count + burst`` starts.

All times here are integer microseconds since the epoch, passed in (``now_ms * 1000``), so the Redis script
(``adapters/redis/_rate_limit.lua``) and the SQLite broker (which calls ``RateGate`` itself) compute the
same results; the unit tests pin the arithmetic on literal times.

A task over its own limit is *deferred*: moved to its queue's eta set at the time the limit will allow it
(its id, payload and crash count kept, no attempt counted). So that a backlog of one limited task is moved
once rather than again and again, each limit also keeps a *cursor*, the latest time it handed to a deferred
task: the next deferred task gets ``max(when the limit allows, cursor + interval)``. A deferred task is
checked again when it is taken, so the limit holds even when it is taken late. A queue over its own limit
is skipped: its tasks stay where they are and lower queues are served meanwhile.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from hexq.core import payload
from hexq.core.errors import ConfigError
from hexq.core.validation import is_int

_UNITS_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SPELLING = re.compile(r"\s*([0-9]+)\s*/\s*([0-9]*)\s*([smhd])\s*")
ACCEPTED_FORMS = ('"<count>/<unit>" or "<count>/<n><unit>", with a whole count >= 1 and a unit of s, m, h or d '
                  '(for example "20/s", "100/m", "1000/h", "5/10s"), or hexq.RateLimit.parse("20/s", burst=5)')
# Below one start per microsecond: the arithmetic counts in whole microseconds.
MAX_PER_SECOND = 1_000_000
MAX_BURST = 1_000_000


@attrs.frozen
class RateLimit:
    """At most ``count`` task starts per ``period_ms``, across every worker; ``burst`` starts may come at
    once (after a quiet spell), the rest are spaced evenly."""

    count: int
    period_ms: int
    burst: int = 1

    def __attrs_post_init__(self) -> None:
        for name, value in (("count", self.count), ("period_ms", self.period_ms), ("burst", self.burst)):
            if not is_int(value) or value < 1:
                raise ConfigError(f"rate limit {name} must be an int >= 1, got {value!r}")
        if self.count * 1000 > self.period_ms * MAX_PER_SECOND:
            raise ConfigError(f"rate limit {self}: at most {MAX_PER_SECOND} starts per second")
        if self.burst > MAX_BURST:
            raise ConfigError(f"rate limit burst must be at most {MAX_BURST}, got {self.burst!r}")

    @classmethod
    def parse(cls, spec: str, burst: int = 1) -> RateLimit:
        """``"20/s"``, ``"100/m"``, ``"1000/h"``, ``"5/10s"`` (5 per 10 seconds), ``"100/d"``."""
        match = _SPELLING.fullmatch(spec) if isinstance(spec, str) else None
        if match is None:
            raise ConfigError(f"invalid rate limit {spec!r}: use {ACCEPTED_FORMS}")
        count, times, unit = int(match[1]), int(match[2] or 1), match[3]
        if count < 1 or times < 1:
            raise ConfigError(f"invalid rate limit {spec!r}: the count and the period must be at least 1; "
                              f"use {ACCEPTED_FORMS}")
        return cls(count, times * _UNITS_MS[unit], burst)

    @property
    def interval_us(self) -> int:
        """Microseconds between two starts at the steady rate, rounded up (the rate is never exceeded)."""
        return -(-self.period_ms * 1000 // self.count)

    @property
    def tolerance_us(self) -> int:
        return (self.burst - 1) * self.interval_us

    def split(self, ways: int) -> RateLimit:
        """The share of one of ``ways`` partitions that each enforce it alone: the rate divided, the burst
        divided (at least 1 each), so the partitions together never exceed the whole."""
        return RateLimit(self.count, self.period_ms * ways, max(1, -(-self.burst // ways)))

    def __str__(self) -> str:
        text = f"{self.count}/{self.period_ms}ms"
        return text if self.burst == 1 else f"{text} (burst {self.burst})"


def rate_limit_of(value: Any, owner: str) -> RateLimit | None:
    """What ``rate_limit=`` accepts: None (no limit), a spelling, or a RateLimit. ConfigError names
    ``owner`` (the task or queue) and the accepted forms."""
    if value is None or isinstance(value, RateLimit):
        return value
    if isinstance(value, str):
        try:
            return RateLimit.parse(value)
        except ConfigError as exc:
            raise ConfigError(f"{owner}: {exc}") from None
    raise ConfigError(f"{owner}: invalid rate limit {value!r} ({type(value).__name__}): use {ACCEPTED_FORMS}")


# -- the arithmetic (GCRA), in microseconds ------------------------------------------------------------
def quota(tat: int, now: int, limit: RateLimit, wanted: int) -> int:
    """How many of ``wanted`` starts conform at ``now``."""
    start = max(tat, now)
    if start - limit.tolerance_us > now:
        return 0
    return min(wanted, (now + limit.tolerance_us - start) // limit.interval_us + 1)


def charge(tat: int, now: int, limit: RateLimit, count: int) -> int:
    """The TAT after ``count`` starts at ``now`` (which must conform: see ``quota``)."""
    return max(tat, now) + count * limit.interval_us


def allowed_at(tat: int, now: int, limit: RateLimit) -> int:
    """When the next start conforms (``now`` if it does already)."""
    return max(now, max(tat, now) - limit.tolerance_us)


def deferral(tat: int, cursor: int, now: int, limit: RateLimit) -> int:
    """When a task that does not conform at ``now`` is tried again: when the limit allows, or one interval
    after the last task deferred before it, whichever is later. The caller stores it as the new cursor."""
    return max(allowed_at(tat, now, limit), cursor + limit.interval_us)


def ms_at_or_after(us: int) -> int:
    """An eta in milliseconds that is never before ``us``: a task promoted at it conforms."""
    return -(-us // 1000)


# -- what a worker passes to the broker ---------------------------------------------------------------
def task_key(name: str) -> str:
    return "t:" + name


def queue_key(name: str) -> str:
    return "q:" + name


def wire_name(name: str, signed: bool) -> str:
    """How the name of a task appears between the quotes of the envelope's ``"task"`` field, as stored:
    JSON-escaped once, twice in a signed envelope (whose body is itself a JSON string)."""
    once = payload.dumps(name)[1:-1]
    return payload.dumps(once)[1:-1] if signed else once


# The envelope starts {"v":1,"id":"...","task":"...","queue":"..." (core/message.py writes these fields first
# and in this order); a signed one is {"sig":"...","body":"<that envelope as a JSON string>"}. Quotes inside a
# JSON string are escaped, so the first of these separators after the id is the envelope's own.
_PLAIN = ('{"v":', '","task":"', '","queue":"')
_SIGNED = ('{"sig":"', '\\",\\"task\\":\\"', '\\",\\"queue\\":\\"')


def task_name_on_wire(stored: str | bytes | None) -> str | None:
    """The task name of a stored envelope as ``wire_name`` spells it, without decoding the JSON; None when
    it is not an envelope hexq wrote (the worker dead-letters those). ``_rate_limit.lua`` does the same."""
    if isinstance(stored, bytes):
        try:
            stored = stored.decode()
        except UnicodeDecodeError:
            return None
    if stored is None:
        return None
    for head, before, after in (_PLAIN, _SIGNED):
        if stored.startswith(head):
            start = stored.find(before)
            if start < 0:
                return None
            start += len(before)
            end = stored.find(after, start)
            return None if end < 0 else stored[start:end]
    return None


@attrs.frozen
class TaskRate:
    name: str  # the task's name
    wire: str  # its name as stored in the envelope (``wire_name``)
    limit: RateLimit

    @property
    def key(self) -> str:
        return task_key(self.name)


@attrs.frozen
class QueueRate:
    queue: str
    limit: RateLimit

    @property
    def key(self) -> str:
        return queue_key(self.queue)


@attrs.frozen(cache_hash=True)  # adapters key their encoded arguments by it, once per reservation
class RateLimits:
    """The limits a worker enforces when it reserves: those of its registry's tasks and of the queues it
    serves. Empty (false) for an app without rate limits, whose reservations then do no rate work at all."""

    tasks: tuple[TaskRate, ...] = ()
    queues: tuple[QueueRate, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.tasks or self.queues)

    @classmethod
    def build(cls, tasks: Iterable[tuple[str, RateLimit | None]], queues: Iterable[tuple[str, RateLimit | None]],
              *, signed: bool) -> RateLimits:
        return cls(tuple(TaskRate(name, wire_name(name, signed), limit) for name, limit in tasks if limit),
                   tuple(QueueRate(name, limit) for name, limit in queues if limit))

    def split(self, ways: int) -> RateLimits:
        """Each limit divided among ``ways`` partitions that enforce their share alone (``RateLimit.split``)."""
        if ways == 1:
            return self
        return RateLimits(tuple(attrs.evolve(t, limit=t.limit.split(ways)) for t in self.tasks),
                          tuple(attrs.evolve(q, limit=q.limit.split(ways)) for q in self.queues))

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tasks] + [q.key for q in self.queues]


NO_RATE_LIMITS = RateLimits()
State = tuple[int, int]  # (TAT, cursor) in microseconds


@attrs.define
class RateGate:
    """One reservation's view of the limits: the stored state of each in, decisions out, the changed state
    to store back. Worker broadcast queues ('@...') are never limited. ``next_us`` is the earliest time a
    task held back (deferred, or left in a skipped queue) may be taken: it bounds the idle wait."""

    rates: RateLimits
    now_us: int
    states: dict[str, State]
    changed: set[str] = attrs.field(factory=set)
    next_us: int | None = None
    blocked: set[str] = attrs.field(factory=set)  # queues skipped while over their limit
    _tasks: dict[str, TaskRate] = attrs.field(init=False)
    _queues: dict[str, QueueRate] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._tasks = {t.wire: t for t in self.rates.tasks}
        self._queues = {q.queue: q for q in self.rates.queues}

    @classmethod
    def load(cls, rates: RateLimits, now_ms: int, stored: Mapping[str, State]) -> RateGate:
        return cls(rates, now_ms * 1000, {key: stored.get(key, (0, 0)) for key in rates.keys})

    @property
    def limits_tasks(self) -> bool:
        return bool(self._tasks)

    def queue_quota(self, queue: str, wanted: int) -> int:
        """How many tasks ``queue``'s own limit lets this reservation take (``wanted`` when it has none)."""
        rate = self._queues.get(queue)
        if rate is None:
            return wanted
        tat, _ = self.states[rate.key]
        granted = quota(tat, self.now_us, rate.limit, wanted)
        if granted == 0:
            self.blocked.add(queue)
            self._bound(allowed_at(tat, self.now_us, rate.limit))
        return granted

    def charge_queue(self, queue: str, count: int) -> None:
        rate = self._queues.get(queue)
        if rate is not None and count > 0:
            tat, cursor = self.states[rate.key]
            self._store(rate.key, charge(tat, self.now_us, rate.limit, count), cursor)

    def admit(self, queue: str, wire: str | None) -> int | None:
        """A task of ``queue`` named ``wire`` (``task_name_on_wire``) was taken: None if it may start now
        (its limit is charged), else the eta in ms it is deferred to."""
        rate = self._tasks.get(wire) if wire is not None and not queue.startswith("@") else None
        if rate is None:
            return None
        tat, cursor = self.states[rate.key]
        if quota(tat, self.now_us, rate.limit, 1):
            self._store(rate.key, charge(tat, self.now_us, rate.limit, 1), cursor)
            return None
        slot = deferral(tat, cursor, self.now_us, rate.limit)
        self._store(rate.key, tat, slot)
        self._bound(slot)
        return ms_at_or_after(slot)

    def _store(self, key: str, tat: int, cursor: int) -> None:
        self.states[key] = (tat, cursor)
        self.changed.add(key)

    def _bound(self, us: int) -> None:
        if self.next_us is None or us < self.next_us:
            self.next_us = us

    @property
    def next_ms(self) -> int | None:
        return None if self.next_us is None else ms_at_or_after(self.next_us)

    def changed_states(self) -> Sequence[tuple[str, int, int]]:
        return [(key, *self.states[key]) for key in sorted(self.changed)]


def encode_state(tat: int, cursor: int) -> str:
    return f"{tat} {cursor}"


def decode_state(text: str | bytes | None) -> State:
    """A stored state; anything unreadable counts as a fresh limit (it costs at most one burst)."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    parts = (text or "").split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return 0, 0
