"""The Broker port on Redis: every multi-step change is one Lua script (see ``keys.py`` for the layout).

Round trips: ``reserve`` is one EVALSHA (acks, eta promotion, expired-lease recovery and the take
together); ``ack`` is one; ``enqueue`` is one per 1,000 tasks (or 4 MB of payloads). redis-py's Script
re-sends a script once after NOSCRIPT, so a restarted server costs one extra round trip per script.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions
from redis.client import NEVER_DECODE

from hexq.adapters.redis.broadcast import RedisSubscription
from hexq.adapters.redis.client import ConnectionSettings, blocking_twin, bytes_twin, clients_for, describe
from hexq.adapters.redis.direct import DirectCommand
from hexq.adapters.redis.errors import translated
from hexq.adapters.redis.keys import Keys
from hexq.adapters.redis.scripts import Scripts
from hexq.core.ports import (
    DeadLetter,
    Delivery,
    InFlight,
    OutgoingTask,
    QueueStats,
    Reservation,
    WorkerBeat,
)

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient

ENQUEUE_CHUNK_TASKS = 250  # bounds one script call, so a huge batch never blocks Redis for long
ENQUEUE_CHUNK_BYTES = 4 << 20
RECOVER_BATCH = 100
STALE_WORKER_MS = 10 * 60 * 1000  # a heartbeat older than this is a dead worker's: forget it


def _record(task: OutgoingTask) -> str:
    """One script argument per task: id, queue, eta, dedup key and payload joined by newlines. Packing one
    argument instead of five roughly halves the client's cost of a batch; only the payload (last) may
    contain newlines."""
    eta = "" if task.eta_ms is None else str(task.eta_ms)
    return f"{task.id}\n{task.queue}\n{eta}\n{task.dedup_key or ''}\n{task.payload}"


def _text(raw: bytes | None) -> str | bytes | None:
    """UTF-8 text, or the raw bytes when they are not UTF-8 (the codec reports those as malformed)."""
    if raw is None:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw


def _chunks(tasks: Sequence[OutgoingTask]) -> Iterator[list[str]]:
    args: list[str] = []
    size = 0
    for task in tasks:
        args.append(_record(task))
        size += len(task.payload)
        if len(args) >= ENQUEUE_CHUNK_TASKS or size >= ENQUEUE_CHUNK_BYTES:
            yield args
            args, size = [], 0
    if args:
        yield args


def _in_flight_record(task_id: str, record: str) -> InFlight | None:
    since, sep, rest = record.partition("|")
    queue, sep2, consumer = rest.partition("|")
    if not (sep and sep2 and since.isdigit()):
        return None
    return InFlight(task_id, queue, consumer, int(since))


def _dead_letter(raw: str) -> DeadLetter:
    try:
        data = json.loads(raw)
        return DeadLetter(str(data["id"]), str(data["queue"]), data["payload"], str(data["reason"]),
                          int(data["failed_at_ms"]))
    except (ValueError, KeyError, TypeError):
        # Not written by hexq: show it rather than hide it.
        return DeadLetter("", "", raw, "malformed dead letter record", 0)


class RedisBroker:
    """Nothing connects before the first command; all keys live under the ``{prefix}`` hash tag."""

    def __init__(self, client: RedisClient, prefix: str = "hexq", *,
                 blocking_client: RedisClient | None = None, where: str | None = None) -> None:
        self._client = client
        self._blocking = blocking_client if blocking_client is not None else blocking_twin(client)
        self._keys = Keys(prefix)
        self._where = where or describe(client)
        self._scripts = Scripts(client, self._keys.tasks)
        self._enqueue_sha: str = self._scripts.script("enqueue").sha
        self._reserve_sha: str = self._scripts.script("reserve").sha
        self._translator = translated(self._where)
        self._direct = DirectCommand(client.connection_pool)
        self._blocking_direct = DirectCommand(self._blocking.connection_pool)
        timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
        self._confirm_timeout = float(timeout) if timeout else 15.0

    @classmethod
    def from_connection(cls, connection: ConnectionSettings, prefix: str) -> RedisBroker:
        client, blocking = clients_for(connection)
        return cls(client, prefix, blocking_client=blocking, where=connection.redacted)

    def _translated(self) -> Any:
        return self._translator

    # -- producing ---------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[OutgoingTask]) -> None:
        chunks = [[_record(tasks[0])]] if len(tasks) == 1 else list(_chunks(tasks))
        with self._translated():
            if len(chunks) == 1:
                # Straight to EVALSHA on this thread's own connection (see direct.py): the pool and
                # Script wrappers cost more CPU than the command itself on a single .delay().
                try:
                    self._direct("EVALSHA", self._enqueue_sha, 1, self._keys.tasks, *chunks[0])
                except redis.exceptions.NoScriptError:
                    self._scripts.run("enqueue", chunks[0])
                return
            # Pipelined so Redis runs one chunk while we send the next. Plain EVALSHA: redis-py's Script
            # objects would add a SCRIPT EXISTS round trip to a pipeline. A chunk refused with NOSCRIPT
            # (a restarted server) stored nothing and is sent again through the self-loading Script.
            sha = self._enqueue_sha
            pipe = self._client.pipeline(transaction=False)
            for args in chunks:
                pipe.execute_command("EVALSHA", sha, 1, self._keys.tasks, *args)  # type: ignore[no-untyped-call]
            results = pipe.execute(raise_on_error=False)
            for args, result in zip(chunks, results, strict=True):
                if isinstance(result, redis.exceptions.NoScriptError):
                    self._scripts.run("enqueue", args)
                elif isinstance(result, Exception):
                    raise result

    # -- consuming ---------------------------------------------------------------------------------
    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0) -> Reservation:
        if wait >= 0.001 and acks:
            self.ack(consumer, acks)
            acks = ()
        args: list[str | int] = [consumer, limit, now_ms, lease_ms, len(queues), *queues, *acks]
        with self._translated():
            reply = self._wait_then_reserve(wait, args) if wait >= 0.001 else self._raw_script("reserve", args)
        next_eta = None if reply[0] is None else int(reply[0])
        queue = reply[1].decode() if reply[1] is not None else ""
        deliveries = tuple(
            Delivery(reply[i].decode(), queue, _text(reply[i + 1]), int(reply[i + 2]))
            for i in range(2, len(reply), 3)
        )
        return Reservation(deliveries, next_eta)

    def _wait_then_reserve(self, wait: float, args: Sequence[str | int]) -> Any:
        """BLPOP on the wake list and the reservation, sent together on this thread's blocking
        connection: Redis runs the reservation the moment the wake-up arrives, so an idle worker gets a
        new task in one round trip instead of two (wake, then reserve)."""
        _, reply = self._blocking_direct.pipelined(
            ("BLPOP", self._keys.wake, wait),
            ("EVALSHA", self._reserve_sha, 1, self._keys.tasks, *args),
            raw=True,
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
            return self._raw("EVALSHA", script.sha, 1, self._keys.tasks, *args)
        except redis.exceptions.NoScriptError:
            self._client.script_load(script.script)
            return self._raw("EVALSHA", script.sha, 1, self._keys.tasks, *args)

    def _raw(self, *command: Any) -> Any:
        return self._client.execute_command(*command, **{NEVER_DECODE: True})  # type: ignore[no-untyped-call]

    def wait_for_work(self, timeout: float) -> bool:
        with self._translated():
            if timeout < 0.001:  # BLPOP's 0 would mean "forever"
                return self._client.lpop(self._keys.wake) is not None
            return self._blocking.blpop([self._keys.wake], timeout) is not None

    def ack(self, consumer: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        # An empty reserve is the cheapest atomic ack: it runs the same ack step and takes nothing.
        with self._translated():
            self._scripts.run("reserve", [consumer, 0, 0, 0, 0, *ids])

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        eta = "" if task.eta_ms is None else str(task.eta_ms)
        with self._translated():
            self._scripts.run("retry", [consumer, task.id, task.queue, task.payload, eta])

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int) -> None:
        record = json.dumps({"id": task_id, "queue": queue, "payload": payload, "reason": reason,
                             "failed_at_ms": now_ms})
        with self._translated():
            self._scripts.run("dead_letter", [consumer, task_id, record])

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._translated():
            return int(self._scripts.run("release", [consumer, *ids]))

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        with self._translated():
            return int(self._scripts.run("recover_consumer", [consumer, *crashed_ids]))

    def recover_expired(self, now_ms: int) -> int:
        total = 0
        with self._translated():
            while True:
                consumers, tasks = self._scripts.run("recover_expired", [now_ms, RECOVER_BATCH])
                total += int(tasks)
                if int(consumers) < RECOVER_BATCH:
                    return total

    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> None:
        if not consumers:
            return
        with self._translated():
            # One MULTI: renewing also clears any suspicion raised while the lease looked expired.
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._keys.leases, dict.fromkeys(consumers, until_ms))
            pipe.hdel(self._keys.base + "suspects", *consumers)
            pipe.execute()

    def fetch_payload(self, task_id: str) -> str | bytes | None:
        with self._translated():
            payload: Any = self._raw("HGET", self._keys.tasks, task_id)
        return _text(payload)

    # -- broadcast, cron, workers ------------------------------------------------------------------
    def publish_broadcast(self, payload: str) -> int:
        with self._translated():
            return int(self._client.publish(self._keys.broadcast, payload))

    def subscribe_broadcast(self) -> RedisSubscription:
        # Bytes, decoded by the subscription: a message that is not UTF-8 (anyone can PUBLISH) must be
        # dropped, not break the connection's parser for every message after it.
        return RedisSubscription(bytes_twin(self._client), self._keys.broadcast, self._where,
                                 self._confirm_timeout)

    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        with self._translated():
            return bool(self._scripts.run("claim_cron", [schedule_key, fire_ms, _record(task)]))

    def last_cron_tick(self, schedule_key: str) -> int | None:
        with self._translated():
            last: Any = self._client.hget(self._keys.cron, schedule_key)
        return None if last is None else int(last)

    def heartbeat(self, worker_id: str, info: str, now_ms: int) -> None:
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._keys.workers, {worker_id: now_ms})
            pipe.hset(self._keys.workerinfo, worker_id, info)
            pipe.zrangebyscore(self._keys.workers, "-inf", f"({now_ms - STALE_WORKER_MS}")
            stale = pipe.execute()[2]
            if stale:  # workers that died without a goodbye (SIGKILL, lost machine)
                pipe = self._client.pipeline(transaction=True)
                pipe.zrem(self._keys.workers, *stale)
                pipe.hdel(self._keys.workerinfo, *stale)
                pipe.execute()

    def forget_worker(self, worker_id: str) -> None:
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.zrem(self._keys.workers, worker_id)
            pipe.hdel(self._keys.workerinfo, worker_id)
            pipe.execute()

    def workers(self) -> list[WorkerBeat]:
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.zrevrange(self._keys.workers, 0, -1, withscores=True)
            pipe.hgetall(self._keys.workerinfo)
            beats, infos = pipe.execute()
        return [WorkerBeat(worker, int(score), infos.get(worker, "")) for worker, score in beats]

    # -- inspection and operations -----------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            for queue in queues:
                pipe.llen(self._keys.queue(queue))
                pipe.zcard(self._keys.eta(queue))
            pipe.hvals(self._keys.inflight)
            *counts, records = pipe.execute()
        flying: dict[str, int] = {}
        for record in records:
            queue = record.split("|", 2)[1] if record.count("|") >= 2 else ""
            flying[queue] = flying.get(queue, 0) + 1
        return [QueueStats(q, int(counts[2 * i]), int(counts[2 * i + 1]), flying.get(q, 0))
                for i, q in enumerate(queues)]

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        with self._translated():
            records: Any = self._client.hgetall(self._keys.inflight)
        rows = [row for task_id, record in records.items() if (row := _in_flight_record(task_id, record))]
        return sorted(rows, key=lambda r: r.since_ms)[:limit]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._translated():
            raw: Any = self._client.lrange(self._keys.dead, 0, limit - 1)
        return [_dead_letter(r) for r in raw]

    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        args = ["all"] if ids is None else ["ids", *ids]
        with self._translated():
            return int(self._scripts.run("requeue_dead", args))

    def purge_dead(self) -> int:
        with self._translated():
            pipe = self._client.pipeline(transaction=True)
            pipe.llen(self._keys.dead)
            pipe.delete(self._keys.dead)
            count, _ = pipe.execute()
        return int(count)

    def purge_queue(self, queue: str) -> tuple[int, int]:
        with self._translated():
            pending, waiting = self._scripts.run("purge_queue", [queue])
        return int(pending), int(waiting)

    def close(self) -> None:
        self._direct.close()
        self._blocking_direct.close()
        self._client.close()
        self._blocking.close()
        self._client.connection_pool.disconnect()
        self._blocking.connection_pool.disconnect()
