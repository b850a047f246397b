"""The ``memory://`` broker: the SQLite broker (``hexq.adapters.sqlite``) on an in-memory database, so the
queue rules are stated once, in ``hexq.adapters.sqlite.statements``, for both. Thread-safe (one connection
behind one lock, each call one transaction), no files, nothing shared with other processes; complete, with
the same contract as the Redis adapter."""

from __future__ import annotations

from hexq.adapters.sqlite.broker import SqliteBroker
from hexq.adapters.sqlite.inmemory import MemoryDatabase
from hexq.core.rules import LeaseRules

_DEFAULT_RULES = LeaseRules()


class MemoryBroker(SqliteBroker):
    """``rules`` (the expiry grace, the stale-worker age) come from the composition root."""

    def __init__(self, *, rules: LeaseRules = _DEFAULT_RULES) -> None:
        super().__init__(MemoryDatabase(), rules=rules)
