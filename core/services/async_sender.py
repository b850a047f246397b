"""Sending from an event loop: ``await task.adelay()``. The calls are encoded and checked by the ``Sender`` (the
same rules, ids and metrics as ``.delay()``); only the store is awaited, through an ``AsyncProducer``."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hexq.core.ports import AsyncProducer
from hexq.core.services.sender import Send, Sender


@attrs.define
class AsyncSender:
    sender: Sender
    producer: AsyncProducer

    async def send(self, calls: Sequence[Send]) -> list[str]:
        """``Sender.send``, awaited: the ids the tasks are stored under, in order."""
        outgoing = self.sender.prepare(calls)
        if not outgoing:
            return []
        return self.sender.sent(calls, outgoing, await self.producer.enqueue(outgoing))

    async def aclose(self) -> None:
        await self.producer.aclose()
