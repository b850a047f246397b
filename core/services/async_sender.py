"""Sending from an event loop: ``await task.adelay()``. The calls are encoded and checked by the ``Sender`` (the
same rules, ids and metrics as ``.delay()``); only the store is awaited, through an ``AsyncProducer``."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hexq.core.ports import NO_SPAN, AsyncProducer
from hexq.core.services.sender import Send, Sender, stored


@attrs.define
class AsyncSender:
    sender: Sender
    producer: AsyncProducer

    async def send(self, calls: Sequence[Send]) -> list[str]:
        """``Sender.send``, awaited: the ids the tasks are stored under, in order (in one span, when tracing)."""
        span = self.sender.send_span(calls)
        try:
            outgoing = self.sender.prepare(calls, span.carrier)
            used = self.sender.sent(calls, outgoing, await self.producer.enqueue(outgoing)) if outgoing else []
        except BaseException as exc:
            span.end((), exc)
            raise
        if span is not NO_SPAN:
            span.end(stored(outgoing, used))
        return used

    async def aclose(self) -> None:
        await self.producer.aclose()
