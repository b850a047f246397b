"""The Broker port on Redis: every multi-step change is one Lua script (see ``keys.py`` for the layout).

Round trips: ``reserve`` is one EVALSHA (acks, eta promotion, expired-lease recovery and the take
together), or one pipelined BLPOP + EVALSHA when it waits; ``ack`` is one; ``enqueue`` is one per 250
tasks (or 4 MB of payloads), pipelined. redis-py's Script re-sends a script once after NOSCRIPT, so a
restarted server costs one extra round trip per script. The read-only views and operator actions live in
``inspection.py``.

Failover (Sentinel, or any primary that changes): every wait is bounded (a BLPOP's reply must come within its
timeout plus ``BLOCKING_READ_MARGIN``, else the connection counts as lost), and a consumer's reservations are
reconciled with what it actually received: a reply lost with its connection (or a timed-out one) may have
reserved tasks that nobody will run or acknowledge, and an acknowledgement the old primary took but never
replicated leaves tasks owned on the new one. So after any lost connection, and every ``ORPHAN_CHECK_MS``
anyway, ``reserve`` hands back to the head of their queues the tasks its consumer owns in Redis but never
received (or already settled): they run again, which at-least-once delivery allows, instead of staying owned
by a live consumer forever.

Durable enqueue (``wait_replicas``): the enqueue and a ``WAIT replicas timeout`` go in one round trip on the
same connection; fewer acknowledgements than asked raise ``NotReplicatedError`` (the tasks are stored).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions
from redis.client import NEVER_DECODE

from hexq.adapters.redis.broadcast import RedisSubscription
from hexq.adapters.redis.client import blocking_twin, bytes_twin, clients_for, describe
from hexq.adapters.redis.codec import chunks, dead_letter_record, in_flight_record, packed
from hexq.adapters.redis.direct import DirectCommand
from hexq.adapters.redis.errors import NotReplicatedError, translated
from hexq.adapters.redis.inspection import RedisInspection
from hexq.adapters.redis.keys import Keys
from hexq.adapters.redis.scripts import Scripts
from hexq.adapters.redis.settings import DEFAULT_WAIT_TIMEOUT_MS
from hexq.core.errors import BrokerUnavailableError
from hexq.core.message import stored_text as text
from hexq.core.ports import Delivery, OutgoingTask, Reservation
from hexq.core.rules import LeaseRules

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.settings import RedisSettings, SentinelSettings

log = logging.getLogger("hexq.redis")
_DEFAULT_RULES = LeaseRules()
# How long after its BLPOP timeout the reply of a blocking wait may come before the connection counts as
# lost: long enough for the reservation that follows the BLPOP on a busy server, short enough that a primary
# that died without closing its sockets (a lost machine, a network cut) holds a worker only seconds.
BLOCKING_READ_MARGIN = 2.0
# How often (ms, in the caller's clock) a consumer's owned tasks are compared with those it received.
ORPHAN_CHECK_MS = 5_000


class RedisBroker(RedisInspection):
    """Nothing connects before the first command; all keys live under the ``{prefix}`` hash tag. ``rules``
    (the expiry grace, the stale-worker age) come from the composition root and reach the scripts as
    arguments."""

    def __init__(self, client: RedisClient, prefix: str = "hexq", *, rules: LeaseRules = _DEFAULT_RULES,
                 blocking_client: RedisClient | None = None, where: str | None = None, wait_replicas: int = 0,
                 wait_timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS) -> None:
        self._client = client
        self._blocking = blocking_client if blocking_client is not None else blocking_twin(client)
        self._keys = Keys(prefix)
        self._rules = rules
        self._where = where or describe(client)
        # Read once: the hot paths would otherwise rebuild these names on every call.
        self._tasks_key = self._keys.tasks
        self._wake_key = self._keys.wake
        self._grace_ms = rules.expiry_grace_ms
        self._scripts = Scripts(client, self._tasks_key)
        self._enqueue_sha: str = self._scripts.script("enqueue").sha
        self._reserve_sha: str = self._scripts.script("reserve").sha
        self._translator = translated(self._where)
        self._direct = DirectCommand(client.connection_pool)
        self._blocking_direct = DirectCommand(self._blocking.connection_pool)
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._confirm_timeout = float(timeout) if timeout else 15.0
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms
        # Per consumer of this process: the ids it received from reserve and has not settled, and when
        # (now_ms) to compare them with what Redis says it owns (0: at the next reserve, after a lost reply).
        self._handed: dict[str, set[str]] = {}
        self._check_due: dict[str, int] = {}

    @classmethod
    def from_connection(cls, connection: RedisSettings | SentinelSettings, prefix: str, *,
                        rules: LeaseRules = _DEFAULT_RULES) -> RedisBroker:
        client, blocking = clients_for(connection)
        return cls(client, prefix, rules=rules, blocking_client=blocking, where=connection.redacted,
                   wait_replicas=connection.wait_replicas, wait_timeout_ms=connection.wait_timeout_ms)

    # -- producing ---------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[OutgoingTask]) -> None:
        batches = [[packed(tasks[0])]] if len(tasks) == 1 else list(chunks(tasks))
        # '@' queues are a worker's private copies of a broadcast (parent_events.broadcast_queue), not the
        # .delay() that durable enqueue is about.
        if self._wait_replicas and not all(task.queue.startswith("@") for task in tasks):
            with self._translator:
                acknowledged = self._enqueue_durably(batches)
            if acknowledged < self._wait_replicas:
                raise NotReplicatedError([task.id for task in tasks], self._wait_replicas, acknowledged,
                                         self._wait_timeout_ms, self._where)
            return
        with self._translator:
            if len(batches) == 1:
                # Straight to EVALSHA on this thread's own connection (see direct.py): the pool and
                # Script wrappers cost more CPU than the command itself on a single .delay().
                try:
                    self._direct("EVALSHA", self._enqueue_sha, 1, self._tasks_key, *batches[0])
                except redis.exceptions.NoScriptError:
                    self._scripts.run("enqueue", batches[0])
                return
            # Pipelined so Redis runs one chunk while we send the next. Plain EVALSHA: redis-py's Script
            # objects would add a SCRIPT EXISTS round trip to a pipeline. A chunk refused with NOSCRIPT
            # (a restarted server) stored nothing and is sent again through the self-loading Script.
            sha = self._enqueue_sha
            pipe = self._client.pipeline(transaction=False)
            for args in batches:
                pipe.execute_command("EVALSHA", sha, 1, self._tasks_key, *args)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            for args, result in zip(batches, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    self._scripts.run("enqueue", args)
                elif isinstance(result, Exception):
                    raise result

    def _enqueue_durably(self, batches: Sequence[Sequence[str]]) -> int:
        """Send the batches, then WAIT on the same connection; returns how many replicas acknowledged
        them all. A chunk refused with NOSCRIPT stored nothing: the script is loaded and the refused chunks
        sent again, with their own WAIT (WAIT covers the writes of the connection it is sent on)."""
        sha = self._enqueue_sha
        wait = ("WAIT", self._wait_replicas, self._wait_timeout_ms)
        pending = list(batches)
        acknowledged = self._wait_replicas
        for attempt in (1, 2, 3):
            if len(pending) == 1:
                replies = self._durable_direct(("EVALSHA", sha, 1, self._tasks_key, *pending[0]), wait)
            else:
                pipe = self._client.pipeline(transaction=False)
                for args in pending:
                    pipe.execute_command("EVALSHA", sha, 1, self._tasks_key, *args)  # type: ignore[no-untyped-call]
                pipe.execute_command(*wait)  # type: ignore[no-untyped-call]
                replies = pipe.execute(raise_on_error=False)
            *stored, acked = replies
            refused = [args for args, reply in zip(pending, stored, strict=True)
                       if isinstance(reply, redis.exceptions.NoScriptError)]
            for reply in stored:
                if isinstance(reply, Exception) and not isinstance(reply, redis.exceptions.NoScriptError):
                    raise reply
            if isinstance(acked, Exception):
                raise acked
            if len(refused) < len(pending):  # some chunk was stored by this round: its WAIT counts
                acknowledged = min(acknowledged, int(acked))
            if not refused:
                return acknowledged
            if attempt == 3:
                break
            self._client.script_load(self._scripts.script("enqueue").script)
            pending = refused
        raise redis.exceptions.NoScriptError("the enqueue script could not be loaded")

    def _durable_direct(self, command: tuple[Any, ...], wait: tuple[Any, ...]) -> list[Any]:
        """``command`` and ``wait`` in one round trip on this thread's connection; once more on a fresh
        connection if that one was lost (as ``DirectCommand`` does for a plain enqueue: a lost reply may mean
        the task is stored twice, which at-least-once delivery allows)."""
        try:
            replies = self._direct.pipelined(command, wait)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            return self._direct.pipelined(command, wait)
        if isinstance(replies[0], redis.exceptions.ReadOnlyError):  # refused by a replica: nothing stored
            return self._direct.pipelined(command, wait)  # on a new connection (pipelined dropped that one)
        return replies

    def publish_broadcast(self, payload: str) -> int:
        with self._translator:
            return int(self._client.publish(self._keys.broadcast, payload))

    # -- consuming ---------------------------------------------------------------------------------
    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0) -> Reservation:
        if wait >= 0.001 and acks:
            self.ack(consumer, acks)
            acks = ()
        due = self._check_due.get(consumer)
        if due is None:
            self._check_due[consumer] = now_ms + ORPHAN_CHECK_MS
        elif now_ms >= due:
            self._release_orphans(consumer, now_ms)
        args: list[str | int] = [consumer, limit, now_ms, lease_ms, self._grace_ms, len(queues), *queues, *acks]
        try:
            with self._translator:
                reply = self._wait_then_reserve(wait, args) if wait >= 0.001 else self._raw_script("reserve", args)
        except BrokerUnavailableError:
            self._check_due[consumer] = 0  # the reply may be lost with tasks in it: reconcile next time
            self._drop_idle_connections()
            raise
        next_eta = None if reply[0] is None else int(reply[0])
        queue = reply[1].decode() if reply[1] is not None else ""
        deliveries = tuple(
            Delivery(reply[i].decode(), queue, text(reply[i + 1]), int(reply[i + 2]))
            for i in range(2, len(reply), 3)
        )
        handed = self._handed.setdefault(consumer, set())
        handed.difference_update(acks)
        handed.update(delivery.id for delivery in deliveries)
        return Reservation(deliveries, next_eta)

    def _release_orphans(self, consumer: str, now_ms: int) -> None:
        """Hand back the tasks ``consumer`` owns in Redis but never received or already settled (see the
        module docstring). Only this process reserves for ``consumer``, one call at a time, so what it
        received is exactly ``_handed``; read before the owned list, so that a task settled meanwhile on
        another thread is never taken for an orphan."""
        handed = frozenset(self._handed.get(consumer, ()))
        with self._translator:
            owned: list[str] = self._client.lrange(self._keys.owned(consumer), 0, -1)  # type: ignore[assignment]
            orphans = [task_id for task_id in owned if task_id not in handed]
            released = int(self._scripts.run("release", [consumer, *orphans])) if orphans else 0
        held = self._handed.get(consumer)
        if held:
            held.difference_update(handed.difference(owned))  # settled through another broker, or recovered
        self._check_due[consumer] = now_ms + ORPHAN_CHECK_MS
        if released:
            log.warning("consumer %s owned %d task(s) it never received (a reply lost with its connection, or "
                        "an acknowledgement lost in a failover); they went back to the head of their queues",
                        consumer, released)

    def _settled(self, consumer: str, ids: Iterable[str]) -> None:
        held = self._handed.get(consumer)
        if held:
            held.difference_update(ids)

    def _drop_idle_connections(self) -> None:
        """After a lost connection, the idle pooled ones are suspect too (the same dead or frozen primary):
        close them, so the next command opens a new connection, which asks the sentinels (if any) anew."""
        for pool in (self._client.connection_pool, self._blocking.connection_pool):
            try:
                pool.disconnect(inuse_connections=False)
            except Exception:  # best effort: a connection that cannot be closed is gone anyway
                pass

    def _unsure(self, consumer: str) -> None:
        """A write for ``consumer`` failed with its connection: the next reserve reconciles."""
        if consumer in self._check_due:
            self._check_due[consumer] = 0

    def _wait_then_reserve(self, wait: float, args: Sequence[str | int]) -> Any:
        """BLPOP on the wake list and the reservation, sent together on this thread's blocking
        connection: Redis runs the reservation the moment the wake-up arrives, so an idle worker gets a
        new task in one round trip instead of two (wake, then reserve). Each reply must come within the
        wait plus ``BLOCKING_READ_MARGIN``: past that the connection is dropped and the call fails as if it
        had been lost (what it reserved, if anything, is handed back by the next reserve)."""
        _, reply = self._blocking_direct.pipelined(
            ("BLPOP", self._wake_key, wait),
            ("EVALSHA", self._reserve_sha, 1, self._tasks_key, *args),
            raw=True, timeout=wait + BLOCKING_READ_MARGIN,
        )
        if isinstance(reply, redis.exceptions.NoScriptError):
            return self._raw_script("reserve", args)
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

    def ack(self, consumer: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        # An empty reserve is the cheapest atomic ack: it runs the same ack step and takes nothing. Its
        # now_ms of 0 finds no expired lease, so the grace it is given does not matter.
        try:
            with self._translator:
                self._scripts.run("reserve", [consumer, 0, 0, 0, 0, 0, *ids])
        except BrokerUnavailableError:
            self._unsure(consumer)
            raise
        self._settled(consumer, ids)

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        eta = "" if task.eta_ms is None else str(task.eta_ms)
        try:
            with self._translator:
                self._scripts.run("retry", [consumer, task.id, task.queue, task.payload, eta])
        except BrokerUnavailableError:
            self._unsure(consumer)
            raise
        self._settled(consumer, (task.id,))

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int) -> None:
        record = dead_letter_record(task_id, queue, payload, reason, now_ms)
        try:
            with self._translator:
                self._scripts.run("dead_letter", [consumer, task_id, record])
        except BrokerUnavailableError:
            self._unsure(consumer)
            raise
        self._settled(consumer, (task_id,))

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        try:
            with self._translator:
                released = int(self._scripts.run("release", [consumer, *ids]))
        except BrokerUnavailableError:
            self._unsure(consumer)
            raise
        self._settled(consumer, ids)
        return released

    # -- supervision -------------------------------------------------------------------------------
    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> None:
        if not consumers:
            return
        with self._translator:
            # One MULTI: renewing also clears any suspicion raised while the lease looked expired.
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._keys.leases, dict.fromkeys(consumers, until_ms))
            pipe.hdel(self._keys.suspects, *consumers)
            pipe.execute()

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

    def heartbeat(self, worker_id: str, info: str, now_ms: int) -> None:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._keys.workers, {worker_id: now_ms})
            pipe.hset(self._keys.workerinfo, worker_id, info)
            pipe.zrangebyscore(self._keys.workers, "-inf", f"({now_ms - self._rules.stale_worker_ms}")
            stale = pipe.execute()[2]
            if stale:  # workers that died without a goodbye (SIGKILL, lost machine)
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(self._keys.workers, *stale)
                pipe.hdel(self._keys.workerinfo, *stale)
                pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._keys.workers, worker_id)
            pipe.hdel(self._keys.workerinfo, worker_id)
            pipe.execute()

    def subscribe_broadcast(self) -> RedisSubscription:
        # Bytes, decoded by the subscription: a message that is not UTF-8 (anyone can PUBLISH) must be
        # dropped, not break the connection's parser for every message after it.
        return RedisSubscription(bytes_twin(self._client), self._keys.broadcast, self._where,
                                 self._confirm_timeout)

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
