"""Running the scheduler: tick, wait until the next fire time, and ride out broker outages."""

from __future__ import annotations

import logging

from hexq.core.errors import ConfigError, HexqError
from hexq.core.ports import Clock
from hexq.core.services.outage import OutageLog
from hexq.core.services.scheduler import Scheduler

log = logging.getLogger("hexq.scheduler")


class SchedulerDriver:
    def __init__(self, scheduler: Scheduler, clock: Clock) -> None:
        self._scheduler = scheduler
        self._clock = clock
        self._stopping = False
        self._outage = OutageLog(log)

    def request_stop(self) -> None:
        """Safe from a signal handler: the loop ends after its current wait."""
        self._stopping = True

    def run(self) -> int:
        scheduler = self._scheduler
        log.info("scheduler started with %d schedule(s)", len(scheduler.schedules))
        failures = 0
        while not self._stopping:
            try:
                wait = scheduler.tick()
                failures = 0
                self._outage.succeeded(self._clock.monotonic())
            except ConfigError:
                raise  # a setting to fix (a changed partition count): waiting would not mend it
            except HexqError as exc:
                failures += 1
                wait = min(5.0, 0.2 * 2 ** min(failures, 5))
                self._outage.failed(self._clock.monotonic(), exc)
            self._clock.sleep(min(wait, scheduler.max_sleep))
        log.info("scheduler stopped")
        return 0
