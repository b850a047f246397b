"""Broadcast subscriptions on Redis pub/sub, each on its own connection."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import redis
import redis.client

from hexq.adapters.redis.errors import translated

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient


class RedisSubscription:
    def __init__(self, client: RedisClient, channel: str, where: str, confirm_timeout: float) -> None:
        self._where = where
        self._pubsub: redis.client.PubSub = client.pubsub()  # type: ignore[no-untyped-call]
        with translated(where):
            self._pubsub.subscribe(channel)
            # Wait for the server's confirmation: a publish sent after that is sure to reach us.
            deadline = time.monotonic() + confirm_timeout
            while True:
                message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] == "subscribe":
                    break
                if time.monotonic() >= deadline:
                    self._pubsub.close()
                    raise redis.exceptions.TimeoutError("no confirmation of SUBSCRIBE")

    def get(self, timeout: float) -> str | bytes | None:
        deadline = time.monotonic() + timeout
        with translated(self._where):
            while True:
                message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] == "message":
                    data = message["data"]
                    if isinstance(data, bytes):
                        try:
                            return data.decode()
                        except UnicodeDecodeError:
                            return data  # the codec reports it as malformed; the caller drops it
                    return str(data)
                if time.monotonic() >= deadline:
                    return None

    def close(self) -> None:
        self._pubsub.close()
