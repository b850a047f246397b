"""Durable enqueue (``wait_replicas``): the enqueue and a ``WAIT replicas timeout`` in one round trip on the
same connection; fewer acknowledgements than asked raise ``NotReplicatedError`` (the tasks are stored).

Why it exists: a ``.delay()`` that returned may otherwise be lost when the primary dies before replicating
it, and WAIT only covers the writes of the connection it is sent on, so the enqueue must go out differently
(the WAIT sent with it, a refused chunk resent with a WAIT of its own). Kept apart from ``RedisBroker``'s
plain enqueue, which stays one EVALSHA with nothing added: the broker holds one ``DurableEnqueue`` and hands
it the batches only when ``wait_replicas`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions

from hexq.adapters.redis.codec import used_ids
from hexq.adapters.redis.errors import NotReplicatedError

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient
    from hexq.adapters.redis.direct import DirectCommand
    from hexq.adapters.redis.errors import Translated
    from hexq.adapters.redis.scripts import Scripts
    from hexq.core.ports import OutgoingTask


class DurableEnqueue:
    """Sends enqueue batches followed by WAIT, on the broker's client, per-thread connections and scripts."""

    def __init__(self, client: RedisClient, direct: DirectCommand, scripts: Scripts, tasks_key: str,
                 translator: Translated, where: str, wait_replicas: int, wait_timeout_ms: int) -> None:
        self._client = client
        self._direct = direct
        self._scripts = scripts
        self._sha: str = scripts.script("enqueue").sha
        self._tasks_key = tasks_key
        self._translator = translator
        self._where = where
        self._wait_replicas = wait_replicas
        self._wait_timeout_ms = wait_timeout_ms

    def enqueue(self, tasks: Sequence[OutgoingTask], batches: Sequence[Sequence[str]]) -> list[str]:
        """Store ``batches`` (the packed ``tasks``); returns the ids they are stored under (see
        ``Producer.enqueue``); raise NotReplicatedError if too few replicas took them."""
        with self._translator:
            acknowledged, replies = self._enqueue_durably(batches)
        used = used_ids(tasks, batches, replies)
        if acknowledged < self._wait_replicas:
            raise NotReplicatedError(used, self._wait_replicas, acknowledged, self._wait_timeout_ms, self._where)
        return used

    def _enqueue_durably(self, batches: Sequence[Sequence[str]]) -> tuple[int, list[Any]]:
        """Send the batches, then WAIT on the same connection; returns how many replicas acknowledged
        them all, and each batch's reply. A chunk refused with NOSCRIPT stored nothing: the script is loaded
        and the refused chunks sent again, with their own WAIT (WAIT covers the writes of the connection it
        is sent on)."""
        sha = self._sha
        wait = ("WAIT", self._wait_replicas, self._wait_timeout_ms)
        pending = list(range(len(batches)))
        replies: list[Any] = [None] * len(batches)
        acknowledged = self._wait_replicas
        for attempt in (1, 2, 3):
            if len(pending) == 1:
                sent = self._durable_direct(("EVALSHA", sha, 1, self._tasks_key, *batches[pending[0]]), wait)
            else:
                pipe = self._client.pipeline(transaction=False)
                for index in pending:
                    pipe.execute_command("EVALSHA", sha, 1, self._tasks_key, *batches[index])  # type: ignore[no-untyped-call]
                pipe.execute_command(*wait)  # type: ignore[no-untyped-call]
                sent = pipe.execute(raise_on_error=False)
            *stored, acked = sent
            refused = [index for index, reply in zip(pending, stored, strict=True)
                       if isinstance(reply, redis.exceptions.NoScriptError)]
            for index, reply in zip(pending, stored, strict=True):
                if isinstance(reply, Exception) and not isinstance(reply, redis.exceptions.NoScriptError):
                    raise reply
                replies[index] = reply
            if isinstance(acked, Exception):
                raise acked
            if len(refused) < len(pending):  # some chunk was stored by this round: its WAIT counts
                acknowledged = min(acknowledged, int(acked))
            if not refused:
                return acknowledged, replies
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
