"""``hexq migrate-from-wakaq``: move WakaQ's waiting tasks into a hexq app, each exactly once, resumable.

**WakaQ's formats** (WakaQ 4.0.4, read from its code; ``wakaq/__init__.py``, ``queue.py``, ``serializer.py``,
``worker.py``):

- A queue named ``q`` is the Redis list ``<prefix>:q`` (``Queue.broker_key``; the prefix is ``wakaq`` unless a
  ``Queue(prefix=...)`` says otherwise; names keep only ``[a-zA-Z0-9_.-]``, so they hold no ``:``). Priorities
  live in the app only, never in a key. ``.delay()`` RPUSHes ``{"name", "args", "kwargs", "retry": 0}``
  (``WakaQ._enqueue_at_end``; a soft-timeout retry pushes the same with ``retry`` = retries used so far);
  an eta task that came due is LPUSHed back without ``retry`` (``_enqueue_at_front``). Workers BLPOP.
- Eta tasks are the sorted set ``<prefix>:eta:q``: member ``{"name", "args", "kwargs"}``, score the due time
  in Unix seconds (``calendar.timegm(eta.utctimetuple())``: whole seconds, sub-second part dropped), added
  with ``ZADD NX`` (the same call twice keeps the first eta).
- Values are JSON with ``{"__class__": ...}`` objects for Decimal, datetime (naive UTC), date, timedelta and
  bytes (``serializer.py``); sets went as lists and anything else as ``str()``.
- Broadcasts are PUBLISHed on the channel ``wakaq-broadcast`` and never stored: nothing to migrate.

**What this command does** with each entry (its states are kept in WakaQ's Redis, under
``<prefix>:migrate:``), and why no entry is lost or duplicated, is in docs/MIGRATING_FROM_WAKAQ.md
("Crash safety"). In short: an entry is *claimed* (moved atomically from its list or sorted set into the
``claims`` hash, with a sequence number that names its hexq task id); then stored in hexq as an eta task
*held* decades ahead under a dedup key of its own (storing it again only replaces it, and nobody can run it);
that state is recorded; then it is *released* (stored again under the same dedup key with its real due time,
which replaces the held task, id kept) unless hexq shows it released already; then the claim is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import attrs
import redis

from hexq.core.errors import (
    ConfigError,
    HexqError,
    MalformedPayloadError,
    PayloadTooLargeError,
    SerializationError,
    UnknownTaskError,
)
from hexq.core.outgoing import TaskFactory, TaskIds
from hexq.core.ports import Clock, OutgoingTask, Producer
from hexq.core.services.sender import Send, Sender
from hexq.entrypoints.app import HexQ

HOLD_SECONDS = 90 * 365 * 24 * 3600  # a held task waits this long: nobody runs it meanwhile
LOCK_MS = 30_000
# Errors that mean "hexq refuses this entry" (nothing was stored): the entry is rejected.
REFUSALS = (ConfigError, UnknownTaskError, SerializationError, PayloadTooLargeError, MalformedPayloadError)
# For tests only: "<step>:<n>" SIGKILLs this process at the n-th time it reaches <step> (claimed, held_stored,
# held, released), so the integration test can stop a run in each window between two writes.
CRASH_ENV = "HEXQ_TEST_MIGRATE_CRASH_AT"

# -- scripts run in WakaQ's Redis; each write checks the run's lock token first (a fencing token) ------------
_LOCKED = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return redis.error_reply('HEXQ_LOST_LOCK') end
"""
# KEYS: lock, source, claims, seq. ARGV: token, "list" | "zset", hold epoch. Returns {seq, record} or nil.
_CLAIM = _LOCKED + """
local raw, score
if ARGV[2] == 'list' then
  raw = redis.call('lpop', KEYS[2])
  if not raw then return nil end
  score = ''
else
  local head = redis.call('zrange', KEYS[2], 0, 0, 'withscores')
  if #head == 0 then return nil end
  raw, score = head[1], head[2]
  redis.call('zrem', KEYS[2], raw)
end
local seq = redis.call('incr', KEYS[4])
local record = 'claimed\\n' .. KEYS[2] .. '\\n' .. score .. '\\n' .. ARGV[3] .. '\\n' .. raw
redis.call('hset', KEYS[3], seq, record)
return {seq, record}
"""
# KEYS: lock, claims. ARGV: token, seq, record (the claim in its new state).
_SET_STATE = _LOCKED + """
if redis.call('hexists', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('hset', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
# KEYS: lock, claims. ARGV: token, seq.
_FINISH = _LOCKED + "return redis.call('hdel', KEYS[2], ARGV[2])"
# KEYS: lock, claims, rejected. ARGV: token, seq, rejected record.
_REJECT = _LOCKED + """
if redis.call('hdel', KEYS[2], ARGV[2]) == 1 then redis.call('rpush', KEYS[3], ARGV[3]) end
return 1
"""
# KEYS: lock, rejected. ARGV: token. Puts every rejected entry back where it came from; returns how many.
_UNREJECT = _LOCKED + """
local n = 0
while true do
  local record = redis.call('lpop', KEYS[2])
  if not record then return n end
  local a = string.find(record, '\\n', 1, true)
  local b = string.find(record, '\\n', a + 1, true)
  local c = string.find(record, '\\n', b + 1, true)
  local source, score, raw = string.sub(record, 1, a - 1), string.sub(record, a + 1, b - 1), string.sub(record, c + 1)
  if score == '' then redis.call('rpush', source, raw) else redis.call('zadd', source, 'NX', score, raw) end
  n = n + 1
end
"""
# KEYS: lock. ARGV: token, ms. Renews only our own lock.
_RENEW = _LOCKED + "return redis.call('pexpire', KEYS[1], ARGV[2])"
# KEYS: lock. ARGV: expected holder, new token, ms. Takes over a lock whose holder is known to be dead.
_TAKE_OVER = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class MigrationLockError(HexqError):
    """Another migration holds the lock, or this one lost it."""


@attrs.frozen
class Claim:
    """An entry taken out of WakaQ, as kept in ``<prefix>:migrate:claims`` (field: its sequence number;
    value: ``state\\nsource key\\nscore or empty\\nhold epoch\\nraw entry``)."""

    seq: int
    state: str  # "claimed", then "held"
    source: str  # the WakaQ key it came from
    score: str  # its eta in Unix seconds, as Redis wrote it; "" for a pending (list) entry
    hold: float  # the far-future eta under which it is first stored in hexq
    raw: bytes

    @classmethod
    def parse(cls, seq: int, record: bytes) -> Claim:
        state, source, score, hold, raw = record.split(b"\n", 4)
        return cls(seq, state.decode(), source.decode(), score.decode(), float(hold), raw)

    def pack(self) -> bytes:
        head = f"{self.state}\n{self.source}\n{self.score}\n{self.hold!r}\n".encode()
        return head + self.raw

    @property
    def task_id(self) -> str:
        """32 hex digits, like hexq's own ids: the claim's sequence number (unique in this WakaQ Redis, so
        two identical entries, two calls of the same task, stay two tasks) and a hash of the raw entry."""
        return f"{self.seq:016x}{hashlib.sha256(self.raw).hexdigest()[:16]}"

    @property
    def dedup_key(self) -> str:
        return f"wakaq-migrate:{self.task_id}"


@attrs.frozen
class Parsed:
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    retry: int


def wakaq_object(obj: dict[str, Any]) -> Any:
    """WakaQ's tagged values, as ``wakaq.serializer.object_hook`` restores them (an unknown ``__class__``
    stays a dict there too)."""
    kind = obj.get("__class__")
    if kind == "Decimal":
        return Decimal(obj["value"])
    if kind == "datetime":
        return datetime(obj["year"], obj["month"], obj["day"], obj["hour"], obj["minute"], obj["second"],
                        obj["microsecond"], fold=obj["fold"])
    if kind == "date":
        return date(obj["year"], obj["month"], obj["day"])
    if kind == "timedelta":
        return timedelta(**obj["kwargs"])
    if kind == "bytes":
        return base64.b64decode(obj["value"])
    return obj


def parse_entry(raw: bytes) -> Parsed:
    """A WakaQ entry's task name, args, kwargs and retry count; MalformedPayloadError if it is not one."""
    try:
        document = json.loads(raw.decode(), object_hook=wakaq_object)
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
        raise MalformedPayloadError(f"not WakaQ JSON: {exc}") from None
    if not isinstance(document, dict):
        raise MalformedPayloadError(f"not a WakaQ task: a JSON {type(document).__name__}")
    name, args, kwargs = document.get("name"), document.get("args", []), document.get("kwargs", {})
    if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
        raise MalformedPayloadError("not a WakaQ task: needs a string 'name', a list 'args', an object 'kwargs'")
    retry = document.get("retry") or 0
    return Parsed(name, args, kwargs, retry if isinstance(retry, int) else 0)


def queue_of(prefix: str, key: str) -> tuple[str, bool]:
    """``wakaq:q`` -> ("q", False); ``wakaq:eta:q`` -> ("q", True)."""
    rest = key[len(prefix) + 1:]
    if rest.startswith("eta:"):
        return rest[4:], True
    return rest, False


# -- hexq's side: the app's own Sender, with fixed ids and the migration's dedup keys -------------------------
class _FixedIds(TaskIds):
    """The id of the task being migrated (``Claim.task_id``), instead of a new one."""

    def __init__(self) -> None:
        self.next = ""

    def new(self) -> str:
        return self.next


@attrs.define
class _Keyed:
    """A Producer that stores eta tasks under the migration's dedup key instead of the call's fingerprint
    (two WakaQ entries of the same call stay two tasks), or only records them (``store=False``: checking)."""

    broker: Producer
    key: str = ""
    store: bool = True
    seen: list[OutgoingTask] = attrs.field(factory=list)

    def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        keyed = [attrs.evolve(t, dedup_key=self.key) if t.eta_ms is not None else t for t in tasks]
        self.seen = keyed
        if self.store:
            self.broker.enqueue(keyed)
        return [task.id for task in keyed]

    def broadcast(self, task: OutgoingTask, now_ms: int) -> int:
        raise NotImplementedError("a migration never broadcasts")


@attrs.frozen
class _NotUnique(TaskFactory):
    """WakaQ had no unique tasks: entries of a task declared ``unique`` in hexq move as they are, each under its
    claim's id (which the migration looks up), none refused for a lock."""

    def new(self, name: str, queue: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any], now: float,
            eta: float | None = None, broadcast: bool = False, expires: float | None = None,
            unique_ms: int | None = None, unique_key: Any = None, *,
            trace: Mapping[str, str] | None = None) -> OutgoingTask:
        return super().new(name, queue, args, kwargs, now, eta, broadcast, expires, trace=trace)


class HexqSide:
    def __init__(self, app: HexQ) -> None:
        self.app = app
        self.ids = _FixedIds()
        self.producer = _Keyed(app.broker)
        clock: Clock = app.clock
        self.sender = Sender(app.registry, _NotUnique(app.codec, self.ids), self.producer, clock)

    def call(self, claim: Claim, queue: str, eta: Any) -> Send:
        parsed = parse_entry(claim.raw)
        return Send(parsed.name, parsed.args, parsed.kwargs, queue, eta)

    def check(self, send: Send) -> None:
        """Raises one of REFUSALS if hexq would refuse this call (its registry, queues, codec, eta rules)."""
        self.producer.store = False
        try:
            self.sender.send([send])
        finally:
            self.producer.store = True

    def store(self, claim: Claim, send: Send) -> None:
        self.ids.next, self.producer.key = claim.task_id, claim.dedup_key
        self.sender.send([send])

    def still_held(self, claim: Claim) -> bool:
        """Is the task stored and still waiting for its hold eta? No means released: waiting for its real
        eta, queued, running, or already finished (a held task cannot run, so a missing one was released)."""
        found = self.app.broker.lookup(claim.task_id)
        if found is None or found.payload is None:
            return False
        eta = self.app.codec.decode(found.payload).eta
        return eta is not None and abs(eta - claim.hold) < 1.0

    def is_stored(self, claim: Claim) -> bool:
        return self.app.broker.lookup(claim.task_id) is not None


# -- the run ------------------------------------------------------------------------------------------------
@attrs.define
class Report:
    moved: Counter[tuple[str, str]] = attrs.field(factory=Counter)  # (queue, "pending" | "eta") -> count
    rejected: list[tuple[str, str, bytes]] = attrs.field(factory=list)  # (source, reason, raw)
    retried: int = 0  # entries whose WakaQ retry count was above 0 (hexq starts them at attempt 1)


class Migration:
    def __init__(self, app: HexQ, client: redis.Redis, prefix: str,  # type: ignore[type-arg]
                 out: Callable[[str], None] = print, now: Callable[[], float] = time.time) -> None:
        self.hexq = HexqSide(app)
        self.client: Any = client  # a sync client: redis-py's stubs type every reply as possibly awaitable
        self.prefix = prefix
        self.out = out
        self.now = now
        base = f"{prefix}:migrate"
        self.lock_key, self.claims_key = f"{base}:lock", f"{base}:claims"
        self.seq_key, self.rejected_key = f"{base}:seq", f"{base}:rejected"
        self.token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
        self.report = Report()
        self._crash_at, self._reached = self._crash_plan()
        self._scripts = {name: client.register_script(text) for name, text in (
            ("claim", _CLAIM), ("set_state", _SET_STATE), ("finish", _FINISH), ("reject", _REJECT),
            ("unreject", _UNREJECT), ("renew", _RENEW), ("take_over", _TAKE_OVER), ("unlock", _UNLOCK))}

    # -- sources ------------------------------------------------------------------------------------------
    def sources(self) -> list[tuple[str, bool]]:
        """WakaQ's queue lists and eta sets under the prefix (key, is_eta), pending lists first."""
        found: list[tuple[str, bool]] = []
        for kind, eta in (("list", False), ("zset", True)):
            for key in sorted(self.client.scan_iter(match=f"{self.prefix}:*", count=1000, _type=kind)):
                name = key.decode() if isinstance(key, bytes) else key
                queue, is_eta = queue_of(self.prefix, name)
                if name.startswith(f"{self.prefix}:migrate:") or is_eta != eta or ":" in queue:
                    continue
                found.append((name, eta))
        return found

    # -- one entry ------------------------------------------------------------------------------------------
    def _send_for(self, claim: Claim, hold: bool) -> Send:
        queue, is_eta = queue_of(self.prefix, claim.source)
        if hold:
            eta: Any = datetime.fromtimestamp(claim.hold, timezone.utc)
        elif is_eta:
            eta = datetime.fromtimestamp(float(claim.score), timezone.utc)
        else:
            eta = 0  # due now: promoted by the next reservation, at the tail of its queue
        return self.hexq.call(claim, queue, eta)

    def process(self, claim: Claim) -> None:
        queue, is_eta = queue_of(self.prefix, claim.source)
        if claim.state == "claimed" and self.hexq.is_stored(claim):
            claim = self._set_state(claim, "held")  # stored before a crash, not yet recorded
        if claim.state == "claimed":
            try:
                release = self._send_for(claim, hold=False)
                self.hexq.check(release)
                hold = self._send_for(claim, hold=True)
            except REFUSALS as exc:
                self._reject(claim, str(exc))
                return
            self.hexq.store(claim, hold)  # again after a crash: replaces the held task (same key, same id)
            self._maybe_crash("held_stored")
            claim = self._set_state(claim, "held")
            self._maybe_crash("held")
        if self.hexq.still_held(claim):
            self.hexq.store(claim, self._send_for(claim, hold=False))
            self._maybe_crash("released")
        self._script("finish", [self.lock_key, self.claims_key], [self.token, claim.seq])
        self.report.moved[(queue, "eta" if is_eta else "pending")] += 1
        if parse_entry(claim.raw).retry > 0:
            self.report.retried += 1

    def _set_state(self, claim: Claim, state: str) -> Claim:
        claim = attrs.evolve(claim, state=state)
        self._script("set_state", [self.lock_key, self.claims_key], [self.token, claim.seq, claim.pack()])
        return claim

    def _reject(self, claim: Claim, reason: str) -> None:
        reason = " ".join(reason.split())
        record = f"{claim.source}\n{claim.score}\n{reason}\n".encode() + claim.raw
        self._script("reject", [self.lock_key, self.claims_key, self.rejected_key], [self.token, claim.seq, record])
        self.report.rejected.append((claim.source, reason, claim.raw))
        self.out(f"rejected ({claim.source}): {reason}: {_show(claim.raw)}")

    # -- the whole run ---------------------------------------------------------------------------------------
    def run(self, retry_rejected: bool = False) -> Report:
        self._lock()
        try:
            if retry_rejected:
                back = self._script("unreject", [self.lock_key, self.rejected_key], [self.token])
                self.out(f"put {back} rejected entr{'y' if back == 1 else 'ies'} back into WakaQ's keys")
            for claim in self._claims():  # what a killed run left half done, first
                self._renew()
                self.process(claim)
            for key, is_eta in self.sources():
                while True:
                    self._renew()
                    hold = self.now() + HOLD_SECONDS
                    got = self._script("claim", [self.lock_key, key, self.claims_key, self.seq_key],
                                       [self.token, "zset" if is_eta else "list", repr(hold)])
                    if got is None:
                        break
                    claim = Claim.parse(int(got[0]), got[1])
                    self._maybe_crash("claimed")
                    self.process(claim)
        finally:
            self._unlock()
        return self.report

    def plan(self) -> Report:
        """``--dry-run``: what a run would do now, without changing anything."""
        for claim in self._claims():
            self._plan_one(claim.source, claim.score, claim.raw, claim)
        for key, is_eta in self.sources():
            if is_eta:
                for raw, score in self.client.zrange(key, 0, -1, withscores=True):
                    self._plan_one(key, repr(score), raw, None)
            else:
                for raw in self.client.lrange(key, 0, -1):
                    self._plan_one(key, "", raw, None)
        return self.report

    def _plan_one(self, source: str, score: str, raw: bytes, claim: Claim | None) -> None:
        queue, is_eta = queue_of(self.prefix, source)
        probe = claim or Claim(0, "claimed", source, score, self.now() + HOLD_SECONDS, raw)
        if probe.state == "claimed":
            try:
                self.hexq.check(self._send_for(probe, hold=False))
            except REFUSALS as exc:
                reason = " ".join(str(exc).split())
                self.report.rejected.append((source, reason, raw))
                self.out(f"would reject ({source}): {reason}: {_show(raw)}")
                return
        self.report.moved[(queue, "eta" if is_eta else "pending")] += 1
        if parse_entry(raw).retry > 0:
            self.report.retried += 1

    def rejected_waiting(self) -> int:
        return int(self.client.llen(self.rejected_key))

    def _claims(self) -> Iterator[Claim]:
        records = self.client.hgetall(self.claims_key)
        for seq in sorted(records, key=int):
            yield Claim.parse(int(seq), records[seq])

    # -- the lock: one run at a time ---------------------------------------------------------------------------
    def _lock(self) -> None:
        if self.client.set(self.lock_key, self.token, nx=True, px=LOCK_MS):
            return
        holder = self.client.get(self.lock_key)
        if (holder is not None and _dead_here(holder.decode())
                and self._script("take_over", [self.lock_key], [holder, self.token, LOCK_MS])):
            self.out(f"taking over from a migration that died ({holder.decode()})")
            return
        if holder is None and self.client.set(self.lock_key, self.token, nx=True, px=LOCK_MS):
            return
        raise MigrationLockError(
            f"another migration is running ({self.lock_key} = {holder.decode() if holder else '?'}); if it was "
            f"killed on another host, wait {LOCK_MS // 1000} s for the lock to expire")

    def _renew(self) -> None:
        self._script("renew", [self.lock_key], [self.token, LOCK_MS])

    def _unlock(self) -> None:
        try:
            self._script("unlock", [self.lock_key], [self.token])
        except (redis.RedisError, MigrationLockError):
            pass

    def _script(self, name: str, keys: list[Any], args: list[Any]) -> Any:
        try:
            return self._scripts[name](keys=keys, args=args)
        except redis.ResponseError as exc:
            if "HEXQ_LOST_LOCK" in str(exc):
                raise MigrationLockError(f"this migration lost its lock ({self.lock_key}): another run took "
                                         "over; stopping") from None
            raise

    # -- the test hook -------------------------------------------------------------------------------------------
    @staticmethod
    def _crash_plan() -> tuple[tuple[str, int] | None, Counter[str]]:
        plan = os.environ.get(CRASH_ENV)
        if not plan:
            return None, Counter()
        step, _, count = plan.partition(":")
        return (step, int(count or "1")), Counter()

    def _maybe_crash(self, step: str) -> None:
        if self._crash_at is None:
            return
        self._reached[step] += 1
        if (step, self._reached[step]) == self._crash_at:
            import signal

            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _dead_here(holder: str) -> bool:
    """The lock holder ran on this host and its process is gone."""
    parts = holder.split(" ")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _show(raw: bytes, limit: int = 200) -> str:
    text = raw.decode(errors="replace")
    return text if len(text) <= limit else text[:limit] + "..."


def wakaq_client(app: HexQ, url: str | None) -> redis.Redis:  # type: ignore[type-arg]
    """A client of WakaQ's Redis: ``url``, else the app's own URL when it is a plain Redis one."""
    if url is None:
        if app.connection.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(f"the app's broker is {app.connection.redacted}, not a plain Redis URL: "
                              "give WakaQ's with --wakaq-url=redis://...")
        url = app.connection.url
    return redis.Redis.from_url(url, socket_timeout=15, socket_connect_timeout=15)


def print_report(report: Report, dry_run: bool, out: Callable[[str], None] = print) -> None:
    verb = "would move" if dry_run else "moved"
    queues = sorted({queue for queue, _ in report.moved})
    for queue in queues:
        out(f"{verb} {queue}: {report.moved[(queue, 'pending')]} pending, {report.moved[(queue, 'eta')]} eta")
    total = sum(report.moved.values())
    out(f"{verb} {total} task(s); {'would reject' if dry_run else 'rejected'} {len(report.rejected)}")
    if report.retried:
        out(f"{report.retried} of them had WakaQ soft-timeout retries used; in hexq they start again at attempt 1")
