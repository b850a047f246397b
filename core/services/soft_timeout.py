"""Running a task under its soft timeout: an alarm interrupts a sync task, ``wait_for`` an async one."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any, Protocol

from hexq.core.errors import SoftTimeout
from hexq.core.services.invoke import Escaped, contained


class SoftAlarm(Protocol):
    """Interrupts a running sync task with SoftTimeout after a delay (SIGALRM in a worker child)."""

    def arm(self, seconds: float) -> None: ...

    def disarm(self) -> None: ...


class NoAlarm:
    """Used where a sync task cannot be interrupted (in-process runs): the soft timeout is not enforced."""

    def arm(self, seconds: float) -> None:
        return None

    def disarm(self) -> None:
        return None


async def run_sync(call: Callable[[], Any], soft_timeout: float | None, alarm: SoftAlarm) -> Any:
    """Run a sync task and return what it returned; ``alarm`` raises SoftTimeout inside it once
    ``soft_timeout`` (None: never) is past."""
    if soft_timeout is not None:
        alarm.arm(soft_timeout)
    try:
        result = call()
        if inspect.isawaitable(result):  # an async wrapper around the sync task
            result = await result
        return result
    finally:
        if soft_timeout is not None:
            alarm.disarm()


async def run_async(call: Callable[[], Any], soft_timeout: float | None) -> Any:
    """Run an async task and return what it returned; it is cancelled, and SoftTimeout raised, once
    ``soft_timeout`` (None: never) is past."""
    result = call()
    if not inspect.isawaitable(result):
        return result
    if soft_timeout is None:
        return await result
    try:
        return await asyncio.wait_for(contained(result), soft_timeout)
    except asyncio.TimeoutError:
        # Only wait_for's own: the task's TimeoutErrors come out of contained() as Escaped.
        raise SoftTimeout(f"ran past its soft timeout of {soft_timeout}s") from None
    except Escaped as escaped:
        raise escaped.original from None
