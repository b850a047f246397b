"""Cancelling a task by id (``app.cancel()``, ``handle.cancel()``, ``hexq cancel``): the broker's atomic
``cancel``, given the "cancelled" outcome to keep.

The outcome needs the task's name and how long to keep it (its ``keep_result``, else
``keeping.UNRUN_KEEP_MS``), which only its stored envelope tells: it is read first (``lookup``). An id names
one task for ever, so what is read then is still true when ``cancel`` runs, whatever the task did meanwhile.
"""

from __future__ import annotations

from typing import Protocol

import attrs

from hexq.core.errors import HexqError, MalformedPayloadError
from hexq.core.message import Codec
from hexq.core.ports import Cancelled, Canceller, Clock, Delivery, OutcomeRecord
from hexq.core.registry import Registry
from hexq.core.services.keeping import OutcomeKeeper

CANCELLED_BY_REQUEST = "cancelled by request"


class CancellingBroker(Canceller, Protocol):
    def lookup(self, task_id: str) -> Delivery | None: ...


@attrs.frozen
class TaskCancelling:
    registry: Registry
    codec: Codec
    broker: CancellingBroker
    clock: Clock

    def cancel(self, task_id: str) -> Cancelled:
        """What cancelling ``task_id`` found (``Canceller.cancel``)."""
        now_ms = int(self.clock.now() * 1000)
        found = self.broker.lookup(task_id)
        outcome = None if found is None or found.payload is None else self._outcome(found, now_ms)
        return self.broker.cancel(task_id, now_ms, self.registry.queues.names, outcome)

    def _outcome(self, found: Delivery, now_ms: int) -> OutcomeRecord:
        keeper = OutcomeKeeper(self.registry, self.codec)
        assert found.payload is not None
        try:
            message = self.codec.decode(found.payload)
        except MalformedPayloadError:  # kept by its queue's or the app's keep_result; it would never run anyway
            return keeper.unrun(found.id, "", "cancelled", CANCELLED_BY_REQUEST, None, found.queue, now_ms)
        definition = self.registry.tasks.get(message.name)
        try:
            limits = None if definition is None else self.registry.limits(definition, message.queue)
        except HexqError:  # a queue this app does not declare
            limits = None
        return keeper.unrun(found.id, message.name, "cancelled", CANCELLED_BY_REQUEST, limits, message.queue, now_ms)
