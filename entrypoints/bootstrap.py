"""The composition root: builds real adapters from an app's settings unless a test passed its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hexq.core.ports import Broker

if TYPE_CHECKING:
    from hexq.entrypoints.app import HexQ


def make_broker(app: HexQ) -> Broker:
    """A new broker for the app's URL. Nothing connects until the first command is sent."""
    if app.connection.scheme == "memory":
        from hexq.adapters.memory.broker import MemoryBroker

        return MemoryBroker()
    from hexq.adapters.redis.broker import RedisBroker

    return RedisBroker.from_connection(app.connection, app.prefix)
