"""The Lua scripts, read from package data once and registered on a client (EVALSHA, NOSCRIPT-safe)."""

from __future__ import annotations

import re
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
    "push",
    "reserve",
    "retry",
    "dead_letter",
    "discard",
    "cancel",
    "renew",
    "release",
    "recover_consumer",
    "claim_cron",
    "requeue_dead",
    "find_dead",
    "delete_dead",
    "purge_queue",
    "broadcast",
    "forget_workers",
    "reserve_rated",
    "record_outcome",
    "task_state",
    "await_outcome",
)
# Scripts that share another's body with the rate limit helpers added (``_rate_limit.lua``): only a worker that
# enforces rate limits runs them, so the plain script defines none of those helpers on each call.
RATED = {"reserve_rated": "reserve"}


# A top-level definition of the preamble or of _lib.lua: ``local NAME = ...`` or ``local function NAME(...)``.
_DEFINITION = re.compile(r"^local (?:function )?([A-Za-z_]\w*)", re.MULTILINE)
_COMMENT = re.compile(r"--[^\n]*")
_NAME = re.compile(r"[A-Za-z_]\w*")


@cache
def source(name: str) -> str:
    """The script as sent to Redis: the key names (from ``keys.py``) and the shared helpers it uses (from
    ``_lib.lua``, and ``_rate_limit.lua`` for the ``RATED`` ones), then the script itself. ``reserve`` calls
    the rate helpers only when it is given rate arguments, which only ``reserve_rated`` ever is."""
    package = files("hexq.adapters.redis")
    body = package.joinpath(f"{RATED.get(name, name)}.lua").read_text()
    library = package.joinpath("_lib.lua").read_text()
    if name in RATED:
        library += package.joinpath("_rate_limit.lua").read_text()
    return used_definitions(lua_preamble() + library, body) + body


def used_definitions(definitions: str, body: str) -> str:
    """The top-level definitions of ``definitions`` that ``body`` needs, directly or through another one,
    in their order. Every definition left in runs on every call of the script: the whole preamble and
    library cost Redis about twice the CPU of an RPUSH per call (string concatenations and closures, then
    their garbage), more than the enqueue script's own commands."""
    starts = [_with_comment(definitions, match.start()) for match in _DEFINITION.finditer(definitions)]
    blocks = [definitions[a:b] for a, b in zip(starts, [*starts[1:], len(definitions)], strict=True)]
    named = {_DEFINITION.findall(block)[0]: block for block in blocks}
    needed: set[str] = set()
    pending = [body]
    while pending:
        for word in set(_NAME.findall(_COMMENT.sub("", pending.pop()))):
            if word in named and word not in needed:
                needed.add(word)
                pending.append(named[word])
    return "".join(block for name, block in named.items() if name in needed)


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


def _with_comment(text: str, start: int) -> int:
    """Where the definition at ``start`` begins counting the comment lines right above it (they go with it)."""
    while start > 0:
        above = text.rfind("\n", 0, start - 1) + 1
        if not text.startswith("--", above):
            return start
        start = above
    return start
