"""The scheduler's driver: outages are ridden out, a setting to fix ends it."""

from __future__ import annotations

from typing import Any

import pytest

from hexq.adapters.memory import FakeClock
from hexq.core.errors import BrokerUnavailableError, ConfigError
from hexq.entrypoints.scheduler_driver import SchedulerDriver


class Ticks:
    """A scheduler whose ticks raise the given errors, then stop the driver."""

    schedules: list[Any] = []
    max_sleep = 1.0

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.ticks = 0
        self.driver: SchedulerDriver | None = None

    def tick(self) -> float:
        self.ticks += 1
        if self.errors:
            raise self.errors.pop(0)
        assert self.driver is not None
        self.driver.request_stop()
        return 0.5


def drive(ticks: Ticks) -> SchedulerDriver:
    driver = SchedulerDriver(ticks, FakeClock())  # type: ignore[arg-type]
    ticks.driver = driver
    return driver


def test_an_outage_is_waited_out() -> None:
    ticks = Ticks(BrokerUnavailableError("down"), BrokerUnavailableError("still down"))
    assert drive(ticks).run() == 0
    assert ticks.ticks == 3


def test_a_setting_to_fix_ends_the_scheduler() -> None:
    ticks = Ticks(ConfigError("partitions changed"))
    with pytest.raises(ConfigError, match="partitions changed"):
        drive(ticks).run()
    assert ticks.ticks == 1
