"""The queue rules, written once as SQL over a connection: the SQLite broker runs each public function in
one transaction (the job one Lua script does for Redis), on a database file or, for ``memory://``, on an
in-memory database. See ``schema.py`` for the layout and ``hexq.core.ports.broker`` for the contract.

Each function expects to run inside a transaction its caller opened; none commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from functools import lru_cache

from hexq.adapters.sqlite.schema import OWNED, QUEUED, WAITING
from hexq.core.ports import MinuteTally, OutcomeRecord, OutgoingTask
from hexq.core.queues import broadcast_queue
from hexq.core.rate_limit import NO_RATE_LIMITS, RateGate, RateLimits, task_name_on_wire
from hexq.core.unique import lock_of

CHUNK = 1000  # at most this many tasks taken or promoted per call, as the Redis scripts do
# Each reservation recovers at most this many expired consumers, so one call never holds the write lock
# for long; the next reservations recover the rest.
RECOVER_PER_RESERVE = 10

# The tail and the head of a queue, read from the index the statement writes anyway. Inside executemany
# each row sees the rows before it, so a batch keeps its order.
_TAIL_OF = f"(SELECT coalesce(max(pos), 0) + 1 FROM tasks WHERE state = {QUEUED} AND queue = ?2)"
_HEAD_OF_ROW = (f"(SELECT coalesce(min(h.pos), 1) - 1 FROM tasks AS h "
                f"WHERE h.state = {QUEUED} AND h.queue = tasks.queue)")
_TAIL = f"SELECT coalesce(max(pos), 0) FROM tasks WHERE state = {QUEUED} AND queue = ?"
_INSERT_AT = f"INSERT OR REPLACE INTO tasks (id, queue, state, pos, payload) VALUES (?, ?, {QUEUED}, ?, ?)"
_INSERT_QUEUED = (f"INSERT OR REPLACE INTO tasks (id, queue, state, pos, payload) "
                  f"VALUES (?1, ?2, {QUEUED}, {_TAIL_OF}, ?3)")
# One waiting task per (queue, dedup key): a second one updates the first's eta and payload. An id stored
# again replaces what was stored under it, as a runnable one does (INSERT OR REPLACE).
_UPSERT_WAITING = f"""
INSERT INTO tasks (id, queue, state, pos, payload, eta_ms, dedup_key) VALUES (?, ?, {WAITING}, 0, ?, ?, ?)
ON CONFLICT (queue, dedup_key) WHERE state = {WAITING} AND dedup_key IS NOT NULL
    DO UPDATE SET payload = excluded.payload, eta_ms = excluded.eta_ms
ON CONFLICT (id) DO UPDATE SET queue = excluded.queue, state = {WAITING}, pos = 0, payload = excluded.payload,
    crashes = 0, eta_ms = excluded.eta_ms, dedup_key = excluded.dedup_key, consumer = NULL, since_ms = NULL"""
_DELETE_OWNED = f"DELETE FROM tasks WHERE id = ? AND state = {OWNED} AND consumer = ?"
_FORGET_PAYLOAD = "UPDATE tasks SET payload = NULL, crashes = 0 WHERE id = ?"
_ETA_MIN = f"(SELECT min(eta_ms) FROM tasks WHERE state = {WAITING} AND queue = ?)"
_DUE = (f"SELECT rowid FROM tasks WHERE state = {WAITING} AND queue = ? AND eta_ms <= ? "
        f"ORDER BY eta_ms, id LIMIT {CHUNK}")
_PROMOTE = f"UPDATE tasks SET state = {QUEUED}, pos = {_TAIL_OF}, eta_ms = NULL, dedup_key = NULL WHERE rowid = ?1"
_EXPIRED = ("SELECT consumer, suspected_ms FROM leases WHERE until_ms < ? "
            f"ORDER BY until_ms, consumer LIMIT {RECOVER_PER_RESERVE * 10}")
_SUSPECT = "UPDATE leases SET suspected_ms = ? WHERE consumer = ?"
_OWNED_BY = f"SELECT rowid, id FROM tasks WHERE state = {OWNED} AND consumer = ? ORDER BY since_ms, pos"
_OWNED_ONE = f"SELECT rowid FROM tasks WHERE id = ? AND state = {OWNED} AND consumer = ?"
# Run for the last task first: each goes in front of the one before, so the first given ends at the head.
_PUT_BACK = (f"UPDATE tasks SET state = {QUEUED}, pos = {_HEAD_OF_ROW}, consumer = NULL, since_ms = NULL, "
             "crashes = crashes + ? WHERE rowid = ?")
_FIRST = (f"SELECT rowid, id, CAST(payload AS BLOB), crashes FROM tasks WHERE state = {QUEUED} AND queue = ? "
          "ORDER BY pos LIMIT ?")
_OWN = f"UPDATE tasks SET state = {OWNED}, consumer = ?, since_ms = ? WHERE rowid = ?"
# A consumer that reserves is alive: a suspicion raised while its lease looked expired no longer holds.
_LEASE = ("INSERT INTO leases (consumer, until_ms) VALUES (?, ?) "
          "ON CONFLICT (consumer) DO UPDATE SET until_ms = excluded.until_ms, suspected_ms = NULL")
_RENEW = ("INSERT INTO leases (consumer, until_ms) VALUES (?, ?) "
          "ON CONFLICT (consumer) DO UPDATE SET until_ms = excluded.until_ms, suspected_ms = NULL")
_LIVE_WORKERS = "SELECT worker_id FROM workers WHERE last_beat_ms >= ? ORDER BY last_beat_ms, worker_id"
_CLAIM = ("INSERT INTO cron (schedule_key, last_fire_ms) VALUES (?, ?) ON CONFLICT (schedule_key) "
          "DO UPDATE SET last_fire_ms = excluded.last_fire_ms WHERE excluded.last_fire_ms > cron.last_fire_ms")

# Unique tasks (hexq.core.unique): the lock's holder, if it is still held: not expired (by the producer's clock)
# and its task still stored, or it is this very task (sent again after a lost reply).
_LOCK_HOLDER = ("SELECT u.task_id FROM uniques AS u WHERE u.lock = ?1 AND u.until_ms > ?2 AND (u.task_id = ?3 "
                "OR EXISTS (SELECT 1 FROM tasks AS t WHERE t.id = u.task_id AND t.payload IS NOT NULL))")
_TAKE_LOCK = "INSERT OR REPLACE INTO uniques (lock, task_id, until_ms) VALUES (?, ?, ?)"
_UNLOCK = "DELETE FROM uniques WHERE lock = ? AND task_id = ?"
_KEEP_OUTCOME = ("INSERT INTO results (id, document, expires_ms) VALUES (?, ?, ?) ON CONFLICT (id) "
                 "DO UPDATE SET document = excluded.document, expires_ms = excluded.expires_ms")
# Expired outcomes are never read; each write of new ones (and each heartbeat) deletes a bounded batch.
_DROP_EXPIRED = ("DELETE FROM results WHERE id IN "
                 "(SELECT id FROM results WHERE expires_ms <= ? ORDER BY expires_ms LIMIT ?)")
EXPIRED_PER_WRITE = 100
_OUTCOME = "SELECT document FROM results WHERE id = ? AND expires_ms > ?"

Row = tuple[str, bytes | None, int]  # id, payload, crashes


# -- producing -------------------------------------------------------------------------------------------
def store(conn: sqlite3.Connection, tasks: Sequence[OutgoingTask]) -> int:
    """Runnable tasks to the tail of their queue in order, eta tasks to the waiting set (deduplicated by
    key). Returns how many became runnable."""
    runnable = [t for t in tasks if t.eta_ms is None]
    if len(runnable) == 1:
        task = runnable[0]
        conn.execute(_INSERT_QUEUED, (task.id, task.queue, task.payload))
    elif runnable:
        # A batch reads each queue's tail once and numbers its tasks here: cheaper than a subquery per row.
        tails: dict[str, int] = {}
        rows = []
        for t in runnable:
            last = tails.get(t.queue)
            if last is None:
                last = conn.execute(_TAIL, (t.queue,)).fetchone()[0]
            tails[t.queue] = last = last + 1
            rows.append((t.id, t.queue, last, t.payload))
        conn.executemany(_INSERT_AT, rows)
    if len(runnable) < len(tasks):
        conn.executemany(_UPSERT_WAITING, [(t.id, t.queue, t.payload, t.eta_ms, t.dedup_key)
                                           for t in tasks if t.eta_ms is not None])
    return len(runnable)


def enqueue(conn: sqlite3.Connection, tasks: Sequence[OutgoingTask]) -> tuple[int, list[str] | None]:
    """``store``, each unique task only if it takes its lock (see ``Producer.enqueue``). Returns how many
    became runnable, and the ids the tasks are stored under (None: each under its own, as when no task is
    unique and no eta task has a dedup key)."""
    if all(t.unique is None and t.dedup_key is None for t in tasks):
        return store(conn, tasks), None
    used: list[str] = []
    kept: list[OutgoingTask] = []
    taken: dict[str, str] = {}  # locks taken by this call: its tasks are stored after the loop
    # An eta task with a dedup key updates the waiting one of that key (or one earlier in this call), which
    # keeps its id (_UPSERT_WAITING).
    waiting = _waiting_by_key(conn, [t for t in tasks if t.dedup_key is not None])
    for t in tasks:
        lock = t.unique
        if lock is not None:
            holder = taken.get(lock.key)
            if holder is None:
                row = conn.execute(_LOCK_HOLDER, (lock.key, lock.since_ms, t.id)).fetchone()
                holder = None if row is None else row[0]
            if holder is not None:
                used.append(holder)
                continue
            conn.execute(_TAKE_LOCK, (lock.key, t.id, lock.until_ms))
            taken[lock.key] = t.id
        if t.dedup_key is not None and t.eta_ms is not None:
            used.append(waiting.setdefault((t.queue, t.dedup_key), t.id))
        else:
            used.append(t.id)
        kept.append(t)
    return store(conn, kept), used


def _waiting_by_key(conn: sqlite3.Connection, tasks: Sequence[OutgoingTask]) -> dict[tuple[str, str], str]:
    """(queue, dedup key) -> the id of the waiting task holding it, for these tasks' keys."""
    found: dict[tuple[str, str], str] = {}
    keys = sorted({t.dedup_key for t in tasks if t.dedup_key is not None and t.eta_ms is not None})
    for start in range(0, len(keys), 500):  # well under SQLite's limit of bound parameters
        part = keys[start:start + 500]
        marks = ", ".join("?" * len(part))
        for queue, key, task_id in conn.execute(
                f"SELECT queue, dedup_key, id FROM tasks WHERE state = {WAITING} AND dedup_key IN ({marks})", part):
            found[(queue, key)] = task_id
    return found


def unlock(conn: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Release the locks that these ids of unique tasks still hold; other ids cost a length check each."""
    held = [(key, task_id) for task_id in ids if (key := lock_of(task_id)) is not None]
    if held:
        conn.executemany(_UNLOCK, held)


def broadcast(conn: sqlite3.Connection, task: OutgoingTask, live_since_ms: int) -> int:
    """One copy of ``task`` for each worker whose last heartbeat is at least ``live_since_ms``, at the tail of
    its private queue under the id "<task id>.<n>" (as broadcast.lua does). Returns how many."""
    workers = [w for (w,) in conn.execute(_LIVE_WORKERS, (live_since_ms,))]
    store(conn, [OutgoingTask(f"{task.id}.{n}", broadcast_queue(w), task.payload) for n, w in enumerate(workers, 1)])
    return len(workers)


def claim_cron(conn: sqlite3.Connection, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
    """Compare-and-set of the schedule's last tick, and the tick's task, in one transaction."""
    if conn.execute(_CLAIM, (schedule_key, fire_ms)).rowcount == 0:
        return False
    enqueue(conn, [task])
    return True


def last_cron_tick(conn: sqlite3.Connection, schedule_key: str) -> int | None:
    row = conn.execute("SELECT last_fire_ms FROM cron WHERE schedule_key = ?", (schedule_key,)).fetchone()
    return None if row is None else int(row[0])


# -- consuming -------------------------------------------------------------------------------------------
def ack(conn: sqlite3.Connection, consumer: str, ids: Sequence[str],
        outcomes: Sequence[OutcomeRecord] = ()) -> None:
    """Owned ids go with their row; for any other (acknowledged late, after its lease expired and the task
    went back) only the payload and the crash count go, as the Redis scripts do. ``outcomes`` are kept in the
    same transaction."""
    if not ids:
        return
    if outcomes:
        record_outcomes(conn, outcomes)
    if conn.executemany(_DELETE_OWNED, [(i, consumer) for i in ids]).rowcount < len(ids):
        conn.executemany(_FORGET_PAYLOAD, [(i,) for i in ids])
    unlock(conn, ids)


def _promote(conn: sqlite3.Connection, queue: str, now_ms: int) -> int | None:
    """Due eta tasks of ``queue`` to its tail, eta order; returns the queue's next eta afterwards."""
    conn.executemany(_PROMOTE, [(rowid, queue) for (rowid,) in conn.execute(_DUE, (queue, now_ms)).fetchall()])
    following: int | None = conn.execute("SELECT " + _ETA_MIN, (queue,)).fetchone()[0]
    return following


@lru_cache(maxsize=64)
def _eta_minima_sql(count: int) -> str:
    return "SELECT " + ", ".join([_ETA_MIN] * count)


def _recover_expired(conn: sqlite3.Connection, now_ms: int, grace_ms: int) -> int:
    """Suspect expired leases; recover consumers suspected at least ``grace_ms`` ago. Returns how many
    tasks went back."""
    back = recovered = 0
    for consumer, seen in conn.execute(_EXPIRED, (now_ms,)).fetchall():
        if recovered >= RECOVER_PER_RESERVE:
            break
        if seen is None:
            conn.execute(_SUSPECT, (now_ms, consumer))
        elif now_ms - seen >= grace_ms:
            # Nobody knows which of an expired consumer's tasks had started: count a crash for each.
            back += recover(conn, consumer, None)
            recovered += 1
    return back


def reserve(conn: sqlite3.Connection, consumer: str, queues: Sequence[str], limit: int, now_ms: int,
            lease_ms: int, grace_ms: int, acks: Sequence[str], rates: RateLimits = NO_RATE_LIMITS,
            outcomes: Sequence[OutcomeRecord] = ()) -> tuple[str, list[Row], int | None, int, frozenset[str]]:
    """Acks (with their kept outcomes), eta promotion of the served queues, expiry, then up to ``limit`` tasks
    from the head of the first non-empty queue (under ``rates``: see ``_rated_take``). Returns (served queue,
    rows, next eta, tasks put back by expiry, queues skipped while over their rate limit)."""
    ack(conn, consumer, acks, outcomes)
    minima: list[int | None] = list(conn.execute(_eta_minima_sql(len(queues)), queues).fetchone()) if queues else []
    for index, queue in enumerate(queues):
        due = minima[index]
        if due is not None and due <= now_ms:
            minima[index] = _promote(conn, queue, now_ms)
    back = _recover_expired(conn, now_ms, grace_ms)
    next_eta = min((m for m in minima if m is not None), default=None)
    limit = min(limit, CHUNK)
    if limit <= 0:
        return "", [], next_eta, back, frozenset()
    if rates:
        gate = RateGate.load(rates, now_ms, _rate_states(conn, rates))
        queue, rows = _rated_take(conn, gate, queues, limit, now_ms)
        conn.executemany(_SAVE_RATE, gate.changed_states())
        held = gate.next_ms
        if held is not None and (next_eta is None or held < next_eta):
            next_eta = held
        blocked = frozenset(gate.blocked)
    else:
        queue, rows, blocked = "", [], frozenset()
        for queue in queues:
            rows = conn.execute(_FIRST, (queue, limit)).fetchall()
            if rows:
                break
    if rows:
        conn.executemany(_OWN, [(consumer, now_ms, row[0]) for row in rows])
        conn.execute(_LEASE, (consumer, now_ms + lease_ms))
        return queue, [row[1:] for row in rows], next_eta, back, blocked
    return "", [], next_eta, back, blocked


_RATES = "SELECT key, tat_us, cursor_us FROM rates WHERE key IN ({})"
_SAVE_RATE = ("INSERT INTO rates (key, tat_us, cursor_us) VALUES (?, ?, ?) ON CONFLICT (key) "
              "DO UPDATE SET tat_us = excluded.tat_us, cursor_us = excluded.cursor_us")
_DEFER = f"UPDATE tasks SET state = {WAITING}, pos = 0, eta_ms = ?, dedup_key = NULL WHERE rowid = ?"


def _rate_states(conn: sqlite3.Connection, rates: RateLimits) -> dict[str, tuple[int, int]]:
    keys = rates.keys
    rows = conn.execute(_RATES.format(", ".join("?" * len(keys))), keys).fetchall()
    return {key: (tat, cursor) for key, tat, cursor in rows}


def _rated_take(conn: sqlite3.Connection, gate: RateGate, queues: Sequence[str], limit: int,
                now_ms: int) -> tuple[str, list[tuple[int, str, bytes | None, int]]]:
    """The take under rate limits, as ``rate_take`` in the Redis adapter's ``_rate_limit.lua``: up to
    ``limit`` rows from the first queue that has any it may start now; a queue over its own limit is
    skipped, a task over its own limit goes to its queue's waiting set at the time the gate gives. Looks at
    most CHUNK rows per queue. The rows taken are not owned yet: the caller owns them."""
    for queue in queues:
        kept: list[tuple[int, str, bytes | None, int]] = []
        scanned, skip = 0, 0
        while len(kept) < limit and scanned < CHUNK:
            want = gate.queue_quota(queue, min(limit - len(kept), CHUNK - scanned))
            if want == 0:
                break
            # Kept rows are still queued until the caller owns them: read past them.
            rows = conn.execute(_FIRST + " OFFSET ?", (queue, want, skip)).fetchall()
            if not rows:
                break
            scanned += len(rows)
            before = len(kept)
            deferred = []
            for row in rows:
                eta = gate.admit(queue, task_name_on_wire(row[2])) if gate.limits_tasks else None
                if eta is None:
                    kept.append(row)
                else:
                    deferred.append((eta, row[0]))
            conn.executemany(_DEFER, deferred)
            skip += len(kept) - before
            gate.charge_queue(queue, len(kept) - before)
        if kept:
            return queue, kept
    return "", []


@lru_cache(maxsize=64)
def _ready_sql(count: int) -> str:
    marks = ", ".join("?" * count)
    return (f"SELECT EXISTS (SELECT 1 FROM tasks WHERE state = {QUEUED} AND queue IN ({marks})) OR EXISTS "
            f"(SELECT 1 FROM tasks WHERE state = {WAITING} AND queue IN ({marks}) AND eta_ms <= ?)")


def has_work(conn: sqlite3.Connection, queues: Sequence[str], now_ms: int) -> bool:
    """Read-only: would a reservation at ``now_ms`` find a task? What a waiting reservation checks after
    each commit it sees, so that other writes (acks, heartbeats) do not take the write lock."""
    if not queues:
        return False
    return bool(conn.execute(_ready_sql(len(queues)), (*queues, *queues, now_ms)).fetchone()[0])


def retry(conn: sqlite3.Connection, task: OutgoingTask) -> int:
    """The task replaces its stored row (ownership ends, crash count 0): queued at the tail, or waiting; a task
    marked cancelled goes instead."""
    if _drop_if_cancelled(conn, task.id):
        return 0
    return store(conn, [OutgoingTask(task.id, task.queue, task.payload, task.eta_ms)])


def dead_letter(conn: sqlite3.Connection, consumer: str, task_id: str, queue: str, payload: str | None,
                reason: str, now_ms: int, outcome: OutcomeRecord | None = None, traceback: str = "") -> None:
    ack(conn, consumer, [task_id])
    if _drop_if_cancelled(conn, task_id):
        return
    if outcome is not None:
        record_outcomes(conn, (outcome,))
    conn.execute("INSERT INTO dead (id, queue, payload, reason, failed_at_ms, traceback) VALUES (?, ?, ?, ?, ?, ?)",
                 (task_id, queue, payload, reason, now_ms, traceback))


def discard(conn: sqlite3.Connection, consumer: str, task_id: str, queue: str, why: str,
            outcome: OutcomeRecord | None = None) -> None:
    """The task ends unrun, for good (as an ack drops it), its outcome kept (``outcome``, else the one its
    cancellation request carries); an expired one is counted for its queue."""
    ack(conn, consumer, [task_id])
    _, requested = _take_request(conn, task_id)
    kept = outcome or requested
    if kept is not None:
        record_outcomes(conn, (kept,))
    if why == "expired":
        conn.execute("INSERT INTO expired (queue, count) VALUES (?, 1) "
                     "ON CONFLICT (queue) DO UPDATE SET count = count + 1", (queue,))


def release(conn: sqlite3.Connection, consumer: str, ids: Sequence[str]) -> int:
    """Owned ids back to the head of their queues, the first given in front; no crash counted. Those marked
    cancelled go instead."""
    rowids: list[int] = []
    for task_id in dict.fromkeys(ids):
        found = conn.execute(_OWNED_ONE, (task_id, consumer)).fetchone()
        if found is not None and not _drop_if_cancelled(conn, task_id):
            rowids.append(found[0])
    conn.executemany(_PUT_BACK, [(0, rowid) for rowid in reversed(rowids)])
    return len(rowids)


# -- supervision -----------------------------------------------------------------------------------------
def recover(conn: sqlite3.Connection, consumer: str, crashed: Collection[str] | None) -> int:
    """Everything ``consumer`` owned back to the head of its queue, in reservation order; a crash counted
    for each id in ``crashed`` (None: for all). The lease and any suspicion go."""
    rows = conn.execute(_OWNED_BY, (consumer,)).fetchall()
    conn.execute("DELETE FROM leases WHERE consumer = ?", (consumer,))
    if rows and conn.execute("SELECT EXISTS (SELECT 1 FROM cancel_requests)").fetchone()[0]:
        rows = [(rowid, task_id) for rowid, task_id in rows if not _drop_if_cancelled(conn, task_id)]
    conn.executemany(_PUT_BACK, [(1 if crashed is None or task_id in crashed else 0, rowid)
                                 for rowid, task_id in reversed(rows)])
    return len(rows)


def renew_leases(conn: sqlite3.Connection, consumers: Sequence[str], until_ms: int) -> dict[str, str]:
    """Renew; return the cancellation requests for the consumers' tasks (id -> consumer), and forget marks of
    tasks nobody owns any more (acknowledged: they finished first)."""
    conn.executemany(_RENEW, [(c, until_ms) for c in consumers])
    if not conn.execute("SELECT EXISTS (SELECT 1 FROM cancel_requests)").fetchone()[0]:
        return {}
    conn.execute(f"DELETE FROM cancel_requests WHERE id NOT IN (SELECT id FROM tasks WHERE state = {OWNED})")
    mine = set(consumers)
    rows = conn.execute(f"SELECT c.id, t.consumer FROM cancel_requests AS c JOIN tasks AS t ON t.id = c.id "
                        f"WHERE t.state = {OWNED}").fetchall()
    return {task_id: consumer for task_id, consumer in rows if consumer in mine}


def cancel(conn: sqlite3.Connection, task_id: str, now_ms: int, outcome: OutcomeRecord | None) -> str:
    """An owned task is marked (with the outcome to keep when it is dropped); a queued or waiting one is deleted
    (its dedup key with it: it is a column of its row) and its outcome kept. Returns "cancelling", "cancelled",
    "finished" (not stored, but its outcome is kept) or "unknown", as ``Cancelled`` spells them."""
    row = conn.execute("SELECT state FROM tasks WHERE id = ?", (task_id,)).fetchone()
    if row is None:
        return "unknown" if outcome_of(conn, task_id, now_ms) is None else "finished"
    if row[0] == OWNED:
        kept = (None, None, None) if outcome is None else (outcome.ttl_ms, outcome.document, outcome.finished_ms)
        conn.execute("INSERT OR REPLACE INTO cancel_requests (id, ttl_ms, document, finished_ms) VALUES (?, ?, ?, ?)",
                     (task_id, *kept))
        return "cancelling"
    conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
    unlock(conn, [task_id])
    if outcome is not None:
        record_outcomes(conn, (outcome,))
    return "cancelled"


def _take_request(conn: sqlite3.Connection, task_id: str) -> tuple[bool, OutcomeRecord | None]:
    """Delete the task's cancellation request: (whether there was one, the outcome it carries if any)."""
    row = conn.execute("DELETE FROM cancel_requests WHERE id = ? RETURNING ttl_ms, document, finished_ms",
                       (task_id,)).fetchone()
    if row is None:
        return False, None
    return True, None if row[1] is None else OutcomeRecord(task_id, row[1], row[0], row[2])


def _drop_if_cancelled(conn: sqlite3.Connection, task_id: str) -> bool:
    """A task marked cancelled ends for good here instead of being stored again (the mark goes with it, and
    the outcome it carries is kept)."""
    marked, kept = _take_request(conn, task_id)
    if not marked:
        return False
    conn.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
    unlock(conn, [task_id])
    if kept is not None:
        record_outcomes(conn, (kept,))
    return True


def lookup(conn: sqlite3.Connection, task_id: str) -> tuple[str, bytes | None, int] | None:
    """(queue it is owned from or "", payload, crashes), or None when it has neither payload nor owner."""
    row = conn.execute("SELECT state, queue, CAST(payload AS BLOB), crashes FROM tasks WHERE id = ?",
                       (task_id,)).fetchone()
    if row is None or (row[2] is None and row[0] != OWNED):
        return None
    return (row[1] if row[0] == OWNED else "", row[2], row[3])


# -- results ---------------------------------------------------------------------------------------------
def record_outcomes(conn: sqlite3.Connection, outcomes: Sequence[OutcomeRecord]) -> None:
    """The primitive that keeps outcomes (``keep_result``, as ``record_outcome`` in the Redis scripts): each
    replaces any earlier one of its id, and expires ``ttl_ms`` after ``finished_ms``. A bounded batch of
    expired ones is deleted on the way."""
    conn.executemany(_KEEP_OUTCOME, [(o.task_id, o.document, o.finished_ms + o.ttl_ms) for o in outcomes])
    conn.execute(_DROP_EXPIRED, (max(o.finished_ms for o in outcomes), EXPIRED_PER_WRITE))


def outcome_of(conn: sqlite3.Connection, task_id: str, now_ms: int) -> str | None:
    row = conn.execute(_OUTCOME, (task_id, now_ms)).fetchone()
    return None if row is None else str(row[0])


def task_state(conn: sqlite3.Connection, task_id: str, now_ms: int) -> tuple[str, str | None]:
    """("running" / "scheduled" / "queued" / "" when not stored, the kept outcome or None), read together."""
    row = conn.execute("SELECT state, eta_ms FROM tasks WHERE id = ?", (task_id,)).fetchone()
    live = ("" if row is None else "running" if row[0] == OWNED
            else "scheduled" if row[0] == WAITING and row[1] is not None and row[1] > now_ms else "queued")
    return live, outcome_of(conn, task_id, now_ms)


def heartbeat(conn: sqlite3.Connection, worker_id: str, info: str, now_ms: int, stale_ms: int,
              tally: MinuteTally | None = None, tally_ttl_ms: int = 0) -> None:
    conn.execute("INSERT INTO workers (worker_id, last_beat_ms, info) VALUES (?, ?, ?) ON CONFLICT (worker_id) "
                 "DO UPDATE SET last_beat_ms = excluded.last_beat_ms, info = excluded.info", (worker_id, now_ms, info))
    if tally is not None:
        add_tally(conn, tally, now_ms - tally_ttl_ms)
    stale = conn.execute("SELECT worker_id FROM workers WHERE last_beat_ms < ?", (now_ms - stale_ms,)).fetchall()
    for (worker,) in stale:  # died without a goodbye (SIGKILL, lost machine)
        forget_worker(conn, worker)
    conn.execute(_DROP_EXPIRED, (now_ms, EXPIRED_PER_WRITE))


def add_tally(conn: sqlite3.Connection, tally: MinuteTally, drop_before_ms: int) -> None:
    """Add a worker's counts to its minute's counters and set its depth samples; drop minutes older than
    ``drop_before_ms`` (the TTL Redis gives the same counters)."""
    counts = [(tally.minute_ms, f"{kind}:{queue}", count) for kind, by_queue in (("done", tally.done),
              ("failed", tally.failed)) for queue, count in by_queue.items() if count]
    samples = [(tally.minute_ms, f"{kind}:{queue}", depth) for kind, by_queue in (("pending", tally.pending),
               ("eta", tally.eta)) for queue, depth in by_queue.items()]
    conn.executemany("INSERT INTO tally VALUES (?, ?, ?) ON CONFLICT (minute_ms, field) "
                     "DO UPDATE SET value = value + excluded.value", counts)
    conn.executemany("INSERT INTO tally VALUES (?, ?, ?) ON CONFLICT (minute_ms, field) "
                     "DO UPDATE SET value = excluded.value", samples)
    conn.execute("DELETE FROM tally WHERE minute_ms < ?", (drop_before_ms,))


def forget_worker(conn: sqlite3.Connection, worker_id: str) -> None:
    """The heartbeat, and the worker's private queue with the broadcast copies waiting there (copies its
    children own are settled as any task): nobody serves that queue any more."""
    conn.execute("DELETE FROM workers WHERE worker_id = ?", (worker_id,))
    conn.execute(f"DELETE FROM tasks WHERE state = {QUEUED} AND queue = ?", (broadcast_queue(worker_id),))
