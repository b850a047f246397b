"""The Lua scripts, read from package data once and registered on a client (EVALSHA, NOSCRIPT-safe)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from redis.commands.core import Script

from hexq.adapters.redis.keys import lua_preamble

if TYPE_CHECKING:
    from hexq.adapters.redis.client import RedisClient

NAMES = (
    "enqueue",
    "reserve",
    "retry",
    "dead_letter",
    "release",
    "recover_consumer",
    "claim_cron",
    "requeue_dead",
    "purge_queue",
)


@cache
def source(name: str) -> str:
    """The script as sent to Redis: the key names (from ``keys.py``), the shared helpers, the script."""
    package = files("hexq.adapters.redis")
    return lua_preamble() + package.joinpath("_lib.lua").read_text() + package.joinpath(f"{name}.lua").read_text()


class Scripts:
    """One registered Script per name. redis-py's Script reloads itself after a NOSCRIPT reply (a
    restarted or flushed server), so callers never see that error."""

    def __init__(self, client: RedisClient, tasks_key: str) -> None:
        self._tasks_key = tasks_key
        self._scripts: dict[str, Script] = {name: client.register_script(source(name)) for name in NAMES}

    def run(self, name: str, args: Sequence[str | int]) -> Any:
        return self._scripts[name](keys=[self._tasks_key], args=list(args))

    def script(self, name: str) -> Script:
        return self._scripts[name]
