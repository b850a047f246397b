"""What each consumer of this process received from ``reserve`` and has not settled, and the reconciliation
of that with what Redis says it owns.

Why it exists: on a failover (Sentinel, or any primary that changes) a consumer's reservations in Redis can
drift from what it actually holds. A reply lost with its connection (or a timed-out one) may have reserved
tasks that nobody will run or acknowledge, and an acknowledgement the old primary took but never replicated
leaves tasks owned on the new one. So after any lost connection, and every ``ORPHAN_CHECK_MS`` anyway,
``RedisBroker.reserve`` hands back to the head of their queues the tasks its consumer owns in Redis but never
received (or already settled): they run again, which at-least-once delivery allows, instead of staying owned
by a live consumer forever. ``RedisBroker`` holds one ``ReceivedTasks`` and tells it what it handed out,
what was settled and which writes failed with their connection.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.errors import Translated
    from hexq.adapters.redis.keys import Keys
    from hexq.adapters.redis.scripts import Scripts
    from hexq.core.ports import Delivery

log = logging.getLogger("hexq.redis")
# How often (ms, in the caller's clock) a consumer's owned tasks are compared with those it received.
ORPHAN_CHECK_MS = 5_000


class ReceivedTasks:
    """Per consumer of this process: the ids it received from reserve and has not settled, and when (now_ms)
    to compare them with what Redis says it owns (0: at the next reserve, after a lost reply). Only this
    process reserves for a consumer, one call at a time; settlements may come from other threads."""

    def __init__(self, client: RedisClient, blocking: RedisClient, keys: Keys, scripts: Scripts,
                 translator: Translated) -> None:
        self._client = client
        self._blocking = blocking
        self._keys = keys
        self._scripts = scripts
        self._translator = translator
        self._handed: dict[str, set[str]] = {}
        self._check_due: dict[str, int] = {}

    def before_reserve(self, consumer: str, now_ms: int) -> None:
        """Start the clock for a new consumer, or hand back its orphans when a check is due."""
        due = self._check_due.get(consumer)
        if due is None:
            self._check_due[consumer] = now_ms + ORPHAN_CHECK_MS
        elif now_ms >= due:
            self._release_orphans(consumer, now_ms)

    def handed(self, consumer: str, acks: Sequence[str], deliveries: Iterable[Delivery]) -> None:
        """A reserve for ``consumer`` acknowledged ``acks`` and returned ``deliveries``."""
        handed = self._handed.setdefault(consumer, set())
        handed.difference_update(acks)
        handed.update(delivery.id for delivery in deliveries)

    def reply_lost(self, consumer: str) -> None:
        """A reserve failed with its connection: the reply may be lost with tasks in it, so reconcile at the
        next reserve, on a fresh connection."""
        self._check_due[consumer] = 0
        self._drop_idle_connections()

    def settled(self, consumer: str, ids: Iterable[str]) -> None:
        held = self._handed.get(consumer)
        if held:
            held.difference_update(ids)

    def unsure(self, consumer: str) -> None:
        """A write for ``consumer`` failed with its connection: the next reserve reconciles."""
        if consumer in self._check_due:
            self._check_due[consumer] = 0

    def _release_orphans(self, consumer: str, now_ms: int) -> None:
        """Hand back the tasks ``consumer`` owns in Redis but never received or already settled (see the
        module docstring). What it received is exactly ``_handed``; read before the owned list, so that a
        task settled meanwhile on another thread is never taken for an orphan."""
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

    def _drop_idle_connections(self) -> None:
        """After a lost connection, the idle pooled ones are suspect too (the same dead or frozen primary):
        close them, so the next command opens a new connection, which asks the sentinels (if any) anew."""
        for pool in (self._client.connection_pool, self._blocking.connection_pool):
            try:
                pool.disconnect(inuse_connections=False)
            except Exception:  # best effort: a connection that cannot be closed is gone anyway
                pass
