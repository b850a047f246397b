"""The read-only views and operator actions of ``RedisBroker`` (the Inspection and Administration roles),
kept apart from the delivery paths; ``RedisBroker`` is still the one class implementing ``Broker``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hexq.adapters.redis.codec import dead_letter, in_flight_record, tally_of
from hexq.core.ports import DeadLetter, InFlight, MinuteTally, QueueStats, WorkerBeat
from hexq.core.rules import tally_minutes

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.errors import Translated
    from hexq.adapters.redis.keys import Keys
    from hexq.adapters.redis.scripts import Scripts


class RedisInspection:
    """A mixin of ``RedisBroker``, which sets these attributes."""

    _client: RedisClient
    _keys: Keys
    _scripts: Scripts
    _translator: Translated

    # -- inspection --------------------------------------------------------------------------------
    def queue_stats(self, queues: Sequence[str]) -> list[QueueStats]:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            for queue in queues:
                pipe.llen(self._keys.queue(queue))
                pipe.zcard(self._keys.eta(queue))
            pipe.hvals(self._keys.inflight)
            pipe.hmget(self._keys.expired, ["", *queues])  # "": HMGET needs a field even for no queue
            *counts, records, expired = pipe.execute()
        flying: dict[str, int] = {}
        for record in records:
            queue = record.split("|", 2)[1] if record.count("|") >= 2 else ""
            flying[queue] = flying.get(queue, 0) + 1
        return [QueueStats(q, int(counts[2 * i]), int(counts[2 * i + 1]), flying.get(q, 0), int(expired[i + 1] or 0))
                for i, q in enumerate(queues)]

    def in_flight(self, limit: int = 1000) -> list[InFlight]:
        with self._translator:
            records: Any = self._client.hgetall(self._keys.inflight)
        rows = [row for task_id, record in records.items() if (row := in_flight_record(task_id, record))]
        return sorted(rows, key=lambda r: r.since_ms)[:limit]

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._translator:
            raw: Any = self._client.lrange(self._keys.dead, 0, limit - 1)
        return [dead_letter(r) for r in raw]

    def dead_count(self) -> int:
        with self._translator:
            return int(self._client.llen(self._keys.dead))

    def find_dead(self, task_id: str) -> list[DeadLetter]:
        with self._translator:
            raw: Any = self._scripts.run("find_dead", [task_id])
        return [dead_letter(r) for r in raw]

    def workers(self) -> list[WorkerBeat]:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.zrevrange(self._keys.workers, 0, -1, withscores=True)
            pipe.hgetall(self._keys.workerinfo)
            beats, infos = pipe.execute()
        return [WorkerBeat(worker, int(score), infos.get(worker, "")) for worker, score in beats]

    def tallies(self, from_ms: int, to_ms: int) -> list[MinuteTally]:
        minutes = tally_minutes(from_ms, to_ms)
        if not minutes:
            return []
        with self._translator:
            pipe = self._client.pipeline(transaction=False)
            for minute in minutes:
                pipe.hgetall(self._keys.tally(minute))
            found: list[Any] = pipe.execute()
        return [tally_of(minute, fields) for minute, fields in zip(minutes, found, strict=True) if fields]

    # -- administration ----------------------------------------------------------------------------
    def requeue_dead(self, ids: Sequence[str] | None = None) -> int:
        args = ["all"] if ids is None else ["ids", *ids]
        with self._translator:
            return int(self._scripts.run("requeue_dead", args))

    def purge_dead(self) -> int:
        with self._translator:
            pipe = self._client.pipeline(transaction=True)
            pipe.llen(self._keys.dead)
            pipe.delete(self._keys.dead)
            count, _ = pipe.execute()
        return int(count)

    def delete_dead(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self._translator:
            return int(self._scripts.run("delete_dead", list(ids)))

    def purge_queue(self, queue: str) -> tuple[int, int]:
        with self._translator:
            pending, waiting = self._scripts.run("purge_queue", [queue])
        return int(pending), int(waiting)
