"""The Broker port on SQLite: every multi-step change is one transaction running the rules of
``statements.py`` (where the Redis adapter runs one Lua script), on a database file shared by the processes
of one host, or on an in-memory database (``MemoryBroker``). See ``schema.py`` for the layout,
``database.py`` for connections, transactions and the synchronous setting, ``waking.py`` for waiting.

Per call: ``enqueue`` is one transaction whatever the batch size (one prepared INSERT run by
``executemany``); ``reserve`` is one transaction with its acks; a waiting ``reserve`` applies its acks, waits
without a transaction or a lock (``Database.wait``), then reserves.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hexq.adapters.sqlite import statements
from hexq.adapters.sqlite.database import Database, FileDatabase
from hexq.adapters.sqlite.inspection import SqliteInspection
from hexq.adapters.sqlite.settings import SqliteSettings
from hexq.core.errors import BrokerError
from hexq.core.message import stored_text as text
from hexq.core.ports import (
    Cancelled,
    Delivery,
    MinuteTally,
    OutcomeRecord,
    OutgoingTask,
    Reservation,
    TaskState,
    Unrun,
)
from hexq.core.rate_limit import NO_RATE_LIMITS, RateLimits
from hexq.core.rules import LeaseRules
from hexq.core.status import TaskStatus

_DEFAULT_RULES = LeaseRules()
log = logging.getLogger("hexq.sqlite")


class SqliteBroker(SqliteInspection):
    """Nothing is opened before the first call (and then once per thread and process). ``rules`` (the
    expiry grace, the stale-worker age, the live-worker age) come from the composition root."""

    def __init__(self, database: Database, *, rules: LeaseRules = _DEFAULT_RULES) -> None:
        self._db = database
        self._rules = rules
        self._grace_ms = rules.expiry_grace_ms
        self.where = database.where
        # Per consumer: the queues its last reservation skipped while over their rate limit, and until
        # when. A waiting reservation does not count their tasks as work before then (see reserve).
        self._blocked: dict[str, tuple[frozenset[str], int]] = {}

    @classmethod
    def from_settings(cls, settings: SqliteSettings, *, rules: LeaseRules = _DEFAULT_RULES) -> SqliteBroker:
        return cls(FileDatabase(settings), rules=rules)

    @classmethod
    def from_url(cls, url: str, *, rules: LeaseRules = _DEFAULT_RULES) -> SqliteBroker:
        return cls.from_settings(SqliteSettings.from_url(url), rules=rules)

    # -- producing ---------------------------------------------------------------------------------
    def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        if not tasks:
            return []
        runnable, used = self._db.write(statements.enqueue, tasks)
        if runnable:
            self._db.wake_waiters()
        return [task.id for task in tasks] if used is None else used

    def cancel(self, task_id: str, now_ms: int, queues: Sequence[str] = (),
               outcome: OutcomeRecord | None = None) -> Cancelled:
        return Cancelled(self._db.write(statements.cancel, task_id, now_ms, outcome))

    def broadcast(self, task: OutgoingTask, now_ms: int) -> int:
        copies = self._db.write(statements.broadcast, task, now_ms - self._rules.live_worker_ms)
        if copies:
            self._db.wake_waiters()
        return copies

    # -- consuming ---------------------------------------------------------------------------------
    def reserve(self, consumer: str, queues: Sequence[str], limit: int, now_ms: int, lease_ms: int,
                acks: Sequence[str] = (), wait: float = 0.0, rates: RateLimits = NO_RATE_LIMITS,
                outcomes: Sequence[OutcomeRecord] = ()) -> Reservation:
        if wait > 0:
            if acks:
                self._db.write(statements.ack, consumer, acks, outcomes)
                acks = outcomes = ()
            # A queue skipped for its rate limit has tasks, but none this consumer may take before the time
            # that bounds its wait: without this, every commit would wake it to skip the queue again.
            blocked, until_ms = self._blocked.get(consumer, (frozenset(), 0))
            watched = [q for q in queues if q not in blocked] if blocked and now_ms < until_ms else queues
            self._db.wait(lambda conn: statements.has_work(conn, watched, now_ms), wait)
        queue, rows, next_eta, back, blocked = self._db.write(
            statements.reserve, consumer, queues, limit, now_ms, lease_ms, self._grace_ms, acks, rates, outcomes)
        if blocked:
            self._blocked[consumer] = (blocked, next_eta or 0)
        elif rates:
            self._blocked.pop(consumer, None)
        if back:
            self._db.wake_waiters()  # expired consumers' tasks went back: other idle workers may take them
        deliveries = tuple([Delivery(task_id, queue, text(payload), crashes) for task_id, payload, crashes in rows])
        return Reservation(deliveries, next_eta)

    def ack(self, consumer: str, ids: Sequence[str], outcomes: Sequence[OutcomeRecord] = ()) -> None:
        if ids:
            self._db.write(statements.ack, consumer, ids, outcomes)

    def retry(self, consumer: str, task: OutgoingTask) -> None:
        if self._db.write(statements.retry, task):
            self._db.wake_waiters()

    def dead_letter(self, consumer: str, task_id: str, queue: str, payload: str | None, reason: str,
                    now_ms: int, outcome: OutcomeRecord | None = None, *, traceback: str = "") -> None:
        self._db.write(statements.dead_letter, consumer, task_id, queue, payload, reason, now_ms, outcome,
                       traceback)

    def discard(self, consumer: str, task_id: str, queue: str, why: Unrun,
                outcome: OutcomeRecord | None = None) -> None:
        self._db.write(statements.discard, consumer, task_id, queue, why, outcome)

    def release(self, consumer: str, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        back = self._db.write(statements.release, consumer, ids)
        if back:
            self._db.wake_waiters()
        return back

    # -- results -----------------------------------------------------------------------------------
    def record_outcome(self, outcome: OutcomeRecord) -> None:
        self._db.write(statements.record_outcomes, (outcome,))

    def task_state(self, task_id: str, now_ms: int) -> TaskState:
        live, kept = self._db.read(statements.task_state, task_id, now_ms)
        return TaskState(TaskStatus(live) if live else None, kept)

    def wait_outcome(self, task_id: str, now_ms: int, timeout: float) -> str | None:
        """Waits as an idle reservation does (``Database.wait``): woken by the commits it notices (the commit
        probe, checked every 10 ms on a file; every commit on ``memory://``), then reads the outcome."""
        if timeout > 0:
            self._db.wait(lambda conn: statements.outcome_of(conn, task_id, now_ms) is not None, timeout)
        return self._db.read(statements.outcome_of, task_id, now_ms)

    # -- supervision -------------------------------------------------------------------------------
    def renew_leases(self, consumers: Sequence[str], until_ms: int) -> dict[str, str]:
        if not consumers:
            return {}
        return self._db.write(statements.renew_leases, consumers, until_ms)

    def recover_consumer(self, consumer: str, crashed_ids: Sequence[str]) -> int:
        back = self._db.write(statements.recover, consumer, frozenset(crashed_ids))
        if back:
            self._db.wake_waiters()
        return back

    def lookup(self, task_id: str) -> Delivery | None:
        found = self._db.read(statements.lookup, task_id)
        if found is None:
            return None
        queue, payload, crashes = found
        return Delivery(task_id, queue, text(payload), crashes)

    def heartbeat(self, worker_id: str, info: str, now_ms: int, tally: MinuteTally | None = None) -> None:
        self._db.write(statements.heartbeat, worker_id, info, now_ms, self._rules.stale_worker_ms,
                       tally if tally is not None and not tally.empty else None, self._rules.tally_ttl_ms)
        # The worker parent's broker thread, once a second: where a checkpoint's fsync delays nobody. The
        # beat itself is recorded: a failed checkpoint is left to the next one (or to the backstop).
        try:
            self._db.checkpoint()
        except BrokerError as exc:
            log.warning("could not checkpoint %s (%s); the next heartbeat tries again", self.where, exc)

    def forget_worker(self, worker_id: str) -> None:
        self._db.write(statements.forget_worker, worker_id)

    # -- cron --------------------------------------------------------------------------------------
    def claim_cron_tick(self, schedule_key: str, fire_ms: int, task: OutgoingTask) -> bool:
        claimed = self._db.write(statements.claim_cron, schedule_key, fire_ms, task)
        if claimed and task.eta_ms is None:
            self._db.wake_waiters()
        return claimed

    def last_cron_tick(self, schedule_key: str) -> int | None:
        return self._db.read(statements.last_cron_tick, schedule_key)

    def close(self) -> None:
        self._db.close()

