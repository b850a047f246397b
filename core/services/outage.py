"""Saying once that the broker is unreachable, and once that it is back, however often a caller retries.

A worker parent, each of its children and a scheduler all retry through an outage; logging every retry
of every process floods the log (four children and a parent wrote about 30 warnings in 10 s). Each process
keeps one OutageLog: the first failure is logged, the end is logged with the outage's length.
"""

from __future__ import annotations

import logging

import attrs


@attrs.define
class OutageLog:
    logger: logging.Logger
    what: str = "the broker"
    since: float | None = None  # monotonic time of the first failure of the current outage
    failures: int = 0

    @property
    def ongoing(self) -> bool:
        return self.since is not None

    def failed(self, now: float, error: BaseException) -> None:
        self.failures += 1
        if self.since is None:
            self.since = now
            self.logger.warning("cannot use %s (%s); retrying quietly until it is back", self.what, error)

    def succeeded(self, now: float) -> None:
        if self.since is not None:
            self.logger.info("%s is reachable again after %.1fs (%d failed attempt(s))", self.what,
                             now - self.since, self.failures)
            self.since = None
            self.failures = 0
