"""How the Redis adapter packs records into script arguments and reads stored values back."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from hexq.core.message import stored_text as text  # noqa: F401  (the broker imports it from here)
from hexq.core.ports import DeadLetter, InFlight, MinuteTally, OutgoingTask
from hexq.core.unique import lock_of

ENQUEUE_CHUNK_TASKS = 250  # bounds one script call, so a huge batch never blocks Redis for long
ENQUEUE_CHUNK_BYTES = 4 << 20


def packed(task: OutgoingTask) -> str:
    """One script argument per task: id, queue, eta, dedup key and payload joined by newlines. Packing one
    argument instead of five roughly halves the client's cost of a batch; only the payload (last) may
    contain newlines. A unique task's id (``lock_of``) is followed by its window (ms) before the payload:
    store_record in _lib.lua reads that field for those ids only."""
    eta = "" if task.eta_ms is None else str(task.eta_ms)
    head = f"{task.id}\n{task.queue}\n{eta}\n{task.dedup_key or ''}\n"
    if lock_of(task.id) is not None:
        head += f"{task.unique.window_ms if task.unique else 0}\n"
    return head + task.payload


def used_ids(tasks: Sequence[OutgoingTask], batches: Sequence[Sequence[str]], replies: Sequence[Any]) -> list[str]:
    """The id each task is stored under, from the ``enqueue`` script's replies (one per batch, in order): its
    own, or for a unique task the id of the task holding its lock (the script returns those as index, id)."""
    used = [task.id for task in tasks]
    offset = 0
    for args, reply in zip(batches, replies, strict=True):
        if isinstance(reply, list):
            for i in range(0, len(reply) - 1, 2):
                holder = reply[i + 1]
                used[offset + int(reply[i]) - 1] = holder.decode() if isinstance(holder, bytes) else str(holder)
        offset += len(args)
    return used


def chunks(tasks: Sequence[OutgoingTask]) -> Iterator[list[str]]:
    args: list[str] = []
    size = 0
    for task in tasks:
        args.append(packed(task))
        size += len(task.payload)
        if len(args) >= ENQUEUE_CHUNK_TASKS or size >= ENQUEUE_CHUNK_BYTES:
            yield args
            args, size = [], 0
    if args:
        yield args


def in_flight_record(task_id: str, record: str) -> InFlight | None:
    """An ``inflight`` hash value, ``since_ms|queue|consumer``; None when hexq did not write it."""
    since, sep, rest = record.partition("|")
    queue, sep2, consumer = rest.partition("|")
    if not (sep and sep2 and since.isdigit()):
        return None
    return InFlight(task_id, queue, consumer, int(since))


def dead_letter_record(task_id: str, queue: str, payload: str | None, reason: str, now_ms: int,
                       traceback: str = "") -> str:
    """A ``dead`` list entry; ``traceback`` is written only when there is one (records written before hexq kept
    it have none, and read as "")."""
    record: dict[str, object] = {"id": task_id, "queue": queue, "payload": payload, "reason": reason,
                                 "failed_at_ms": now_ms}
    if traceback:
        record["traceback"] = traceback
    return json.dumps(record)


def dead_letter(raw: str) -> DeadLetter:
    try:
        data = json.loads(raw)
        return DeadLetter(str(data["id"]), str(data["queue"]), data["payload"], str(data["reason"]),
                          int(data["failed_at_ms"]), str(data.get("traceback") or ""))
    except (ValueError, KeyError, TypeError):
        # Not written by hexq: show it rather than hide it.
        return DeadLetter("", "", raw, "malformed dead letter record", 0)


def add_tally(pipe: Any, key: str, tally: MinuteTally, ttl_ms: int) -> None:
    """Queue the commands that add a worker's counts (HINCRBY) and set its depth samples (HSET) in the hash
    of one minute, and renew that hash's expiry; ``pipe`` is a MULTI the caller executes."""
    for kind, counts in (("done", tally.done), ("failed", tally.failed)):
        for queue, count in counts.items():
            if count:
                pipe.hincrby(key, f"{kind}:{queue}", count)
    samples = {f"{kind}:{queue}": depth for kind, depths in (("pending", tally.pending), ("eta", tally.eta))
               for queue, depth in depths.items()}
    if samples:
        pipe.hset(key, mapping=samples)
    pipe.pexpire(key, ttl_ms)


def tally_of(minute_ms: int, fields: dict[str, str]) -> MinuteTally:
    """A minute's hash (``<kind>:<queue>`` -> count) as a MinuteTally; fields hexq did not write are skipped."""
    kinds: dict[str, dict[str, int]] = {"done": {}, "failed": {}, "pending": {}, "eta": {}}
    for field, value in fields.items():
        kind, _, queue = field.partition(":")
        if kind in kinds and queue and value.lstrip("-").isdigit():
            kinds[kind][queue] = int(value)
    return MinuteTally(minute_ms, **kinds)
