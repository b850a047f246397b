"""How test tasks tell the test what happened: a JSON record per event, appended to a Redis list."""

from __future__ import annotations

import json
import os
import time

import redis

from hexq import current_attempt


class Reporter:
    """Appends ``{tag, pid, ppid, at, attempt, ...}`` records to ``key``; one connection per process."""

    def __init__(self, url: str, key: str) -> None:
        self.url = url
        self.key = key
        self._client: redis.Redis | None = None  # type: ignore[type-arg]
        self._pid = 0

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        if self._client is None or self._pid != os.getpid():  # a forked child opens its own
            self._client = redis.Redis.from_url(self.url)
            self._pid = os.getpid()
        return self._client

    def __call__(self, **fields: object) -> None:
        fields.setdefault("pid", os.getpid())
        fields.setdefault("ppid", os.getppid())
        fields.setdefault("at", time.time())
        fields.setdefault("attempt", current_attempt.get())
        self.client().rpush(self.key, json.dumps(fields))
