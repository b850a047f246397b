"""The Broker port on Redis: every multi-step change is one Lua script (see ``keys.py`` for the layout).

Round trips: ``reserve`` is one EVALSHA (acks, eta promotion, expired-lease recovery and the take
together), or one pipelined BLPOP + EVALSHA when it waits; ``ack`` is one; ``enqueue`` is one per 250
tasks (or 4 MB of payloads), pipelined. redis-py's Script re-sends a script once after NOSCRIPT, so a
restarted server costs one extra round trip per script. The read-only views and operator actions live in
``inspection.py``.

Failover (Sentinel, or any primary that changes): every wait is bounded (a BLPOP's reply must come within its
timeout plus ``BLOCKING_READ_MARGIN``, else the connection counts as lost), and a consumer's reservations are
reconciled with what it actually received (``received.py``: after any lost connection, and every
``ORPHAN_CHECK_MS`` anyway, ``reserve`` hands back the tasks its consumer owns in Redis but never received).

Durable enqueue (``wait_replicas``, ``durable.py``): the enqueue and a ``WAIT replicas timeout`` go in one
round trip on the same connection; fewer acknowledgements than asked raise ``NotReplicatedError`` (the tasks
are stored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions
from redis.client import NEVER_DECODE

from hexq.adapters.redis.client import blocking_twin, clients_for, describe
from hexq.adapters.redis.codec import add_tally, chunks, dead_letter_record, in_flight_record, packed, used_ids
from hexq.adapters.redis.direct import DirectCommand
from hexq.adapters.redis.durable import DurableEnqueue
from hexq.adapters.redis.errors import translated
from hexq.adapters.redis.inspection import RedisInspection
from hexq.adapters.redis.keys import Keys
from hexq.adapters.redis.received import ORPHAN_CHECK_MS as ORPHAN_CHECK_MS  # re-exported: tests import it here
from hexq.adapters.redis.received import ReceivedTasks
from hexq.adapters.redis.scripts import Scripts
from hexq.adapters.redis.settings import DEFAULT_WAIT_TIMEOUT_MS
from hexq.adapters.redis.wire import QUEUED_THREE, PushFrame
from hexq.core.errors import BrokerUnavailableError
from hexq.core.message import stored_text as text
from hexq.core.ports import Cancelled, Delivery, MinuteTally, OutcomeRecord, OutgoingTask, Reservation, TaskState, Unrun
from hexq.core.queues import BROADCAST_QUEUE_PREFIX
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits
from hexq.core.rules import LeaseRules
from hexq.core.status import TaskStatus

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.sentinel_settings import SentinelSettings
    from hexq.adapters.redis.settings import RedisSettings

_DEFAULT_RULES = LeaseRules()
# How long after its BLPOP timeout the reply of a blocking wait may come before the connection counts as
# lost: long enough for the reservation that follows the BLPOP on a busy server, short enough that a primary
# that died without closing its sockets (a lost machine, a network cut) holds a worker only seconds.
BLOCKING_READ_MARGIN = 2.0
# A waiter's mark outlives its wait by this much, so that an outcome stored as the wait times out still finds
# the mark and pushes the wake-up (the next wait would then return at once).
OUTCOME_MARK_MARGIN_MS = 10_000


class RedisBroker(RedisInspection):
    """Nothing connects before the first command; all keys live under the ``{prefix}`` hash tag. ``rules``
    (the expiry grace, the stale-worker age) come from the composition root and reach the scripts as
    arguments."""

    def __init__(self, client: RedisClient, prefix: str = "hexq", *, rules: LeaseRules = _DEFAULT_RULES,
                 blocking_client: RedisClient | None = None, where: str | None = None, wait_replicas: int = 0,
                 wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS, tag: str | None = None) -> None:
        self._client = client
        self._blocking = blocking_client if blocking_client is not None else blocking_twin(client)
        self._keys = Keys(prefix, tag or prefix)  # tag: the partition's hash tag (partitions.py)
        self._rules = rules
        self._where = where or describe(client)
        # Read once: the hot paths would otherwise rebuild these names on every call.
        self._tasks_key = self._keys.tasks
        self._wake_key = self._keys.wake
        self._grace_ms = rules.expiry_grace_ms
        # Per consumer of this process: True when Redis holds its idle mark (its last reservation found
        # nothing), False when it may (a reply was lost); absent when it holds none. See wake() in _lib.lua.
        self._idle: dict[str, bool] = {}
        self._scripts = Scripts(client, self._tasks_key)
        self._enqueue_sha: str = self._scripts.script("enqueue").sha
        self._push_sha: str = self._scripts.script("push").sha
        self._push_frames: dict[str, PushFrame] = {}  # queue -> its .delay() MULTI, packed but for the task
        self._reserve_sha: str = self._scripts.script("reserve").sha
        self._reserve_rated_sha: str = self._scripts.script("reserve_rated").sha
        self._translator = translated(self._where)
        self._direct = DirectCommand(client.connection_pool)
        self._blocking_direct = DirectCommand(self._blocking.connection_pool)
        self._wait_replicas = wait_replicas  # read by every enqueue: 0 keeps it on the plain path
        self._wait_timeout_ms = wait_timeout_ms
        self._durable = DurableEnqueue(client, self._direct, self._scripts, self._tasks_key, self._translator,
                                       self._where, wait_replicas, wait_timeout_ms)
        self._received = ReceivedTasks(client, self._blocking, self._keys, self._scripts, self._translator)
        self._rate_args: dict[RateLimits, list[str | int]] = {}  # a worker has one RateLimits: built once

    @classmethod
    def from_connection(cls, connection: RedisSettings | SentinelSettings, prefix: str, *,
                        rules: LeaseRules = _DEFAULT_RULES) -> RedisBroker:
        client, blocking = clients_for(connection)
        return cls(client, prefix, rules=rules, blocking_client=blocking, where=connection.redacted,
                   wait_replicas=connection.wait_replicas, wait_timeout_ms=connection.wait_timeout_ms)

    # -- producing ---------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        # '@' queues are a worker's private copies of a broadcast (parent_events.broadcast_queue), not the
        # .delay() that durable enqueue is about.
        durable = self._wait_replicas and not all(task.queue.startswith("@") for task in tasks)
        # A single runnable task: a MULTI, unless it is unique (taking its lock needs the script).
        one = tasks[0] if len(tasks) == 1 and tasks[0].eta_ms is None and tasks[0].unique is None else None
        if one is not None and not durable:
            with self._translator:
                if self._pushed(one):
                    return [one.id]  # the hot path packs no script arguments it would not send
        batches = [[packed(tasks[0])]] if len(tasks) == 1 else list(chunks(tasks))
        if durable:
            return self._durable.enqueue(tasks, batches)
        with self._translator:
            if len(batches) == 1:
                # Straight to EVALSHA on this thread's own connection (see direct.py): the pool and
                # Script wrappers cost more CPU than the command itself on a single .delay(). A runnable
                # task the MULTI could not store goes through push, the cheaper script for one.
                name, sha = ("push", self._push_sha) if one else ("enqueue", self._enqueue_sha)
                args = [one.id, one.queue, one.payload] if one else batches[0]
                try:
                    reply = self._direct("EVALSHA", sha, 1, self._tasks_key, *args)
                except redis.exceptions.NoScriptError:
                    reply = self._scripts.run(name, args)
                return [one.id] if one else used_ids(tasks, batches, [reply])
            # Pipelined so Redis runs one chunk while we send the next. Plain EVALSHA: redis-py's Script
            # objects would add a SCRIPT EXISTS round trip to a pipeline. A chunk refused with NOSCRIPT
            # (a restarted server) stored nothing and is sent again through the self-loading Script.
            sha = self._enqueue_sha
            pipe = self._client.pipeline(transaction=False)
            for args in batches:
                pipe.execute_command("EVALSHA", sha, 1, self._tasks_key, *args)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            replies = []
            for args, result in zip(batches, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    result = self._scripts.run("enqueue", args)
                elif isinstance(result, Exception):
                    raise result
                replies.append(result)
            return used_ids(tasks, batches, replies)

    def _pushed(self, task: OutgoingTask) -> bool:
        """A single runnable .delay() as one MULTI on this thread's connection: the payload, the queue entry
        and the queue's armed wake token fired (wake() in _lib.lua). Redis spends about a third less CPU on
        it than on the push script doing the same: a script call and each redis.call() in it cost more than
        plain commands. Packed and checked by hand (wire.py), which spares the client redis-py's per-command
        packing and per-reply parsing. False on anything but a clean reply (a lost connection, a replica, a
        moved slot, a full server): the caller then sends the push script, the path with direct.py's retries
        and redirections, which stores nothing when this MULTI did store the task (its HSETNX finds it)."""
        frame = self._push_frames.get(task.queue)
        if frame is None:
            frame = self._push_frames[task.queue] = PushFrame.for_keys(
                self._tasks_key, self._keys.queue(task.queue), self._keys.armed(task.queue),
                self._keys.wake_list(task.queue))
        packed = frame.packed(task.id, task.payload)
        try:
            done = self._direct.exchange(packed, QUEUED_THREE)
        except (redis.exceptions.RedisError, OSError):
            return False
        return isinstance(done, list) and not any(isinstance(reply, Exception) for reply in done)

    def cancel(self, task_id: str, now_ms: int, queues: Sequence[str] = (),
               outcome: OutcomeRecord | None = None) -> Cancelled:
        kept: list[str | int] = ["", ""] if outcome is None else [outcome.ttl_ms, outcome.document]
        with self._translator:
            return Cancelled(self._scripts.run("cancel", [task_id, *kept, *queues]))

    def broadcast(self, task: OutgoingTask, now_ms: int) -> int:
        # One script: the live workers read from {p}:workers and every copy stored in the same step. Not
        # waited for by durable enqueue (wait_replicas): WAIT would need the script on a pinned connection.
        live_since = now_ms - self._rules.live_worker_ms
        with self._translator:
            return int(self._scripts.run("broadcast", [task.id, task.payload, live_since, BROADCAST_QUEUE_PREFIX]))

    # -- consuming ---------------------------------------------------------------------------------
    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0, rates: RateLimits = NO_RATE_LIMITS,
                outcomes: Sequence[OutcomeRecord] = ()) -> Reservation:
        waits = wait >= 0.001
        if waits and acks:
            self.ack(consumer, acks, outcomes)
            acks = outcomes = ()
        if waits and limit > 0 and not self._idle.get(consumer):
            # Only a marked consumer is woken (wake() in _lib.lua), and the mark comes from a reservation
            # that finds nothing: without one first, a task stored just before the BLPOP would wake nobody.
            first = self.reserve(consumer, queues, limit, now_ms, lease_ms, rates=rates)
            if first.deliveries:
                return first
        received = self._received
        received.before_reserve(consumer, now_ms)
        idle = 2 if waits else int(consumer in self._idle)
        if rates:
            rate_args = self._rate_args.get(rates) or self._rate_args.setdefault(rates, _rate_arguments(rates))
            args: list[str | int] = [consumer, limit, now_ms, lease_ms, self._grace_ms, idle,
                                     self._rules.stale_worker_ms, f"{len(queues)}+{len(rate_args)}", *queues,
                                     *rate_args, *(_with_outcomes(acks, outcomes) if outcomes else acks)]
            script = "reserve_rated"
        else:
            args = [consumer, limit, now_ms, lease_ms, self._grace_ms, idle, self._rules.stale_worker_ms,
                    len(queues), *queues, *(_with_outcomes(acks, outcomes) if outcomes else acks)]
            script = "reserve"
        try:
            with self._translator:
                reply = (self._wait_then_reserve(wait, queues, args, script) if waits
                         else self._raw_script(script, args))
        except BrokerUnavailableError:
            received.reply_lost(consumer)
            if limit > 0:
                self._idle[consumer] = False
            raise
        next_eta = None if reply[0] is None else int(reply[0])
        queue = reply[1].decode() if reply[1] is not None else ""
        deliveries = tuple(
            Delivery(reply[i].decode(), queue, text(reply[i + 1]), int(reply[i + 2]))
            for i in range(2, len(reply), 3)
        )
        received.handed(consumer, acks, deliveries)
        if limit > 0:  # the script marked the consumer idle, or cleared its mark
            if deliveries:
                self._idle.pop(consumer, None)
            else:
                self._idle[consumer] = True
        return Reservation(deliveries, next_eta)

    def _wait_then_reserve(self, wait: float, queues: Sequence[str], args: Sequence[str | int],
                           script: str = "reserve") -> Any:
        """BLPOP on the wake lists of ``queues`` (and the shared one that producers of earlier versions
        push to) and the reservation, sent together on this thread's blocking connection: Redis runs the
        reservation the moment the wake-up arrives, so an idle worker gets a new task in one round trip
        instead of two (wake, then reserve). Each reply must come within the
        wait plus ``BLOCKING_READ_MARGIN``: past that the connection is dropped and the call fails as if it
        had been lost (what it reserved, if anything, is handed back by the next reserve)."""
        _, reply = self._blocking_direct.pipelined(
            ("BLPOP", *[self._keys.wake_list(queue) for queue in queues], self._wake_key, wait),
            ("EVALSHA", self._reserve_rated_sha if script == "reserve_rated" else self._reserve_sha, 1,
             self._tasks_key, *args),
            raw=True, timeout=wait + BLOCKING_READ_MARGIN,
        )
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self._raw_script(script, args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _raw_script(self, name: str, args: Sequence[str | int]) -> Any:
        """Run a script and return its reply undecoded: a payload that is not UTF-8 (someone wrote bytes
        into Redis) must reach the core as data to dead-letter, not as an exception that kills a worker."""
        script = self._scripts.script(name)
        try:
            return self._raw("EVALSHA", script.sha, 1, self._tasks_key, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script.script)
            return self._raw("EVALSHA", script.sha, 1, self._tasks_key, *args)

    def _raw(self, *command: Any) -> Any:
        return self._client.execute_command(*command, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]

    def ack(self, consumer: str, ids: Sequence[str], outcomes: Sequence[OutcomeRecord] = ()) -> None:
        if not ids:
            return
        # An empty reserve is the cheapest atomic ack: it runs the same ack step and takes nothing (so it
        # marks nobody idle). Its now_ms of 0 finds no expired lease, so the grace it is given does not matter.
        try:
            with self._translator:
                self._scripts.run("reserve", [consumer, 0, 0, 0, 0, 0, 0, 0,
                                              *(_with_outcomes(ids, outcomes) if outcomes else ids)])
        except BrokerUnavailableError:
            self._received.unsure(consumer)
            raise
        self._received.settled(consumer, ids)

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        eta = "" if task.eta_ms is None else str(task.eta_ms)
        try:
            with self._translator:
                self._scripts.run("retry", [consumer, task.id, task.queue, task.payload, eta])
        except BrokerUnavailableError:
            self._received.unsure(consumer)
            raise
        self._received.settled(consumer, (task.id,))

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int, outcome: OutcomeRecord | None = None, *, traceback: str = "") -> None:
        record = dead_letter_record(task_id, queue, payload, reason, now_ms, traceback)
        kept: list[str | int] = [] if outcome is None else [outcome.ttl_ms, outcome.document]
        try:
            with self._translator:
                self._scripts.run("dead_letter", [consumer, task_id, record, *kept])
        except BrokerUnavailableError:
            self._received.unsure(consumer)
            raise
        self._received.settled(consumer, (task_id,))

    def discard(self, consumer: str, task_id: str, queue: str, why: Unrun,
                outcome: OutcomeRecord | None = None) -> None:
        kept: list[str | int] = [] if outcome is None else [outcome.ttl_ms, outcome.document]
        try:
            with self._translator:
                self._scripts.run("discard", [consumer, task_id, queue, why, *kept])
        except BrokerUnavailableError:
            self._received.unsure(consumer)
            raise
        self._received.settled(consumer, (task_id,))

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            with self._translator:
                released = int(self._scripts.run("release", [consumer, *ids]))
        except BrokerUnavailableError:
            self._received.unsure(consumer)
            raise
        self._received.settled(consumer, ids)
        return released

    # -- results -----------------------------------------------------------------------------------
    def record_outcome(self, outcome: OutcomeRecord) -> None:
        with self._translator:
            self._scripts.run("record_outcome", [outcome.task_id, outcome.ttl_ms, outcome.document])

    def task_state(self, task_id: str, now_ms: int) -> TaskState:
        with self._translator:
            reply = self._scripts.run("task_state", [task_id, now_ms])
        return TaskState(TaskStatus(reply[0]) if reply[0] else None, reply[1] if len(reply) > 1 else None)

    def wait_outcome(self, task_id: str, now_ms: int, timeout: float) -> str | None:
        """The kept outcome, or a waiter's mark in its place (``await_outcome.lua``), then a BLMOVE of the
        task's wake list onto itself on this thread's blocking connection: the script that keeps the outcome
        sees the mark in the same command that replaces it and pushes that list, so the wait ends as soon as
        the outcome is stored, without polling, and keeping an outcome nobody waits for stays one command."""
        arm_ms = 0 if timeout < 0.001 else int(timeout * 1000) + OUTCOME_MARK_MARGIN_MS
        with self._translator:
            found: Any = self._scripts.run("await_outcome", [task_id, arm_ms])
            if found is not None or arm_ms == 0:
                return _text(found)
            wake = self._keys.outcome_wake(task_id)
            (reply,) = self._blocking_direct.pipelined(
                ("BLMOVE", wake, wake, "LEFT", "LEFT", f"{timeout:.3f}"), timeout=timeout + BLOCKING_READ_MARGIN)
            if isinstance(reply, Exception):
                raise reply
            return _text(self._scripts.run("await_outcome", [task_id, 0]))

    # -- supervision -------------------------------------------------------------------------------
    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> dict[str, str]:
        if not consumers:
            return {}
        with self._translator:
            # One script: renewing also clears any suspicion raised while the lease looked expired, and
            # reads the cancellation requests for the consumers' tasks (one EXISTS when there are none).
            found = self._scripts.run("renew", [until_ms, *consumers])
        return {found[i]: found[i + 1] for i in range(0, len(found), 2)}

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        with self._translator:
            return int(self._scripts.run("recover_consumer", [consumer, *crashed_ids]))

    def lookup(self, task_id: str) -> Delivery | None:
        # One round trip, undecoded: a payload that is not UTF-8 must reach the caller as data. Not a
        # MULTI, whose reply redis-py decodes whole; a write landing between the three reads can at worst
        # show a task that was just reserved or settled with its previous owner.
        with self._translator:
            pipe = self._client.pipeline(transaction=False)
            for key in (self._tasks_key, self._keys.crashes, self._keys.inflight):
                pipe.execute_command("HGET", key, task_id, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]
            payload, crashes, record = pipe.execute()
        owner = None if record is None else in_flight_record(task_id, record.decode(errors="replace"))
        if payload is None and owner is None:
            return None
        return Delivery(task_id, owner.queue if owner else "", text(payload), int(crashes or 0))

    @property
    def keys(self) -> Keys:
        return self._keys

    def record_partitions(self, count: int) -> int:
        """Record ``count`` as the number of partitions of this app unless one is recorded already (in
        ``{p}:meta``, which only partition 0 holds); returns the recorded number."""
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.hsetnx(self._keys.meta, "partitions", str(count))
            pipe.hget(self._keys.meta, "partitions")
            return int(pipe.execute()[1])

    def heartbeat(self, worker_id: str, info: str, now_ms: int, tally: MinuteTally | None = None) -> None:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._keys.workers, {worker_id: now_ms})
            pipe.hset(self._keys.workerinfo, worker_id, info)
            pipe.zrangebyscore(self._keys.workers, "-inf", f"({now_ms - self._rules.stale_worker_ms}")
            if tally is not None and not tally.empty:
                # In the same MULTI: the counters cost no round trip of their own.
                add_tally(pipe, self._keys.tally(tally.minute_ms), tally, self._rules.tally_ttl_ms)
            stale = pipe.execute()[2]
            if stale:  # workers that died without a goodbye (SIGKILL, lost machine): their queues go too
                self._scripts.run("forget_workers", [now_ms - self._rules.stale_worker_ms, BROADCAST_QUEUE_PREFIX,
                                                     *stale])

    def forget_worker(self, worker_id: str) -> None:
        with self._translator:
            self._scripts.run("forget_workers", ["", BROADCAST_QUEUE_PREFIX, worker_id])

    # -- cron --------------------------------------------------------------------------------------
    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        with self._translator:
            return bool(self._scripts.run("claim_cron", [schedule_key, fire_ms, packed(task)]))

    def last_cron_tick(self, schedule_key: str) -> int | None:
        with self._translator:
            last: Any = self._client.hget(self._keys.cron, schedule_key)
        return None if last is None else int(last)

    def close(self) -> None:
        self._direct.close()
        self._blocking_direct.close()
        self._client.close()
        self._blocking.close()
        self._client.connection_pool.disconnect()
        self._blocking.connection_pool.disconnect()


def _text(reply: Any) -> str | None:
    return None if reply is None else reply.decode() if isinstance(reply, bytes) else str(reply)


def _rate_arguments(rates: RateLimits) -> list[str | int]:
    """The limits as reserve.lua reads them (rate_gate in _rate_limit.lua): five arguments each."""
    args: list[str | int] = []
    for task in rates.tasks:
        args += ["t", task.wire, task.key, task.limit.interval_us, task.limit.tolerance_us]
    for queue in rates.queues:
        args += ["q", queue.queue, queue.key, queue.limit.interval_us, queue.limit.tolerance_us]
    return args


def _with_outcomes(acks: Sequence[str], outcomes: Sequence[OutcomeRecord]) -> list[str]:
    """The acknowledgements as ``reserve.lua`` reads them (``acked_ids`` in _lib.lua): an acknowledged id whose
    outcome is kept travels as "id\\nttl_ms\\ndocument", in its place, so the order of ``acks`` is kept."""
    packed = {o.task_id: f"{o.task_id}\n{o.ttl_ms}\n{o.document}" for o in outcomes}
    return [packed.get(task_id, task_id) for task_id in acks]
