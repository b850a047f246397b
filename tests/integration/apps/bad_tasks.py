"""A second test app, for tasks that misbehave on purpose (tests/integration/test_bad_inputs.py).

Configured from the environment like ``tasks.py``, so each test gets its own broker or prefix:
HEXQ_TEST_URL (the broker under test), HEXQ_TEST_BOOK_URL (the Redis the reports go to), HEXQ_TEST_PREFIX,
HEXQ_TEST_CONCURRENCY, HEXQ_TEST_MAX_TASKS, HEXQ_TEST_SIGNING_KEY,
HEXQ_TEST_BAD_SCHEDULE=1 (a CronTask naming a task that does not exist).
"""

from __future__ import annotations

import asyncio
import os

import psutil

from hexq import CronTask, HexQ
from tests.integration.apps.reporting import Reporter

URL = os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("HEXQ_TEST_PREFIX", "hexqbad")
BOOK_URL = os.environ.get("HEXQ_TEST_BOOK_URL") or URL
RESULTS = f"{PREFIX}-results"
MAX_PAYLOAD_BYTES = 64 * 1024

app = HexQ(
    url=URL,
    prefix=PREFIX,
    queues=["default"],
    concurrency=int(os.environ.get("HEXQ_TEST_CONCURRENCY", "1")),
    lease_timeout=3,
    shutdown_timeout=5,
    max_deliveries=2,  # a poison task is dead-lettered after two crashed runs, not five
    max_payload_bytes=MAX_PAYLOAD_BYTES,
    max_tasks_per_worker=int(os.environ["HEXQ_TEST_MAX_TASKS"]) if os.environ.get("HEXQ_TEST_MAX_TASKS") else None,
    signing_key=os.environ.get("HEXQ_TEST_SIGNING_KEY") or None,
    schedules=[CronTask("* * * * *", "no_such_task")] if os.environ.get("HEXQ_TEST_BAD_SCHEDULE") else [],
)

not_an_app = "a string where a HexQ app should be"  # for `--app=...:not_an_app`

report = Reporter(BOOK_URL, RESULTS)
client = report.client


@app.task
def record(tag: str) -> None:
    report(tag=tag)


@app.task(unique=60)
def unique_record(tag: str) -> None:
    report(tag=tag)


@app.task
def exit_process(tag: str, code: int = 0) -> None:
    report(tag=f"{tag}:start")
    os._exit(code)  # no cleanup, no exception: the process is simply gone


@app.task
def raise_system_exit(tag: str) -> None:
    report(tag=f"{tag}:start")
    raise SystemExit(3)


@app.task
def raise_keyboard_interrupt(tag: str) -> None:
    report(tag=f"{tag}:start")
    raise KeyboardInterrupt("pressed by a task")


class Doomsday(BaseException):
    """Not an Exception: escapes every ``except Exception``."""


@app.task
def raise_base_exception(tag: str) -> None:
    report(tag=f"{tag}:start")
    raise Doomsday("the end")


def _recurse(depth: int) -> int:
    return _recurse(depth + 1) + 1


@app.task
def recurse_forever(tag: str) -> None:
    report(tag=f"{tag}:start")
    _recurse(0)


_LEAK: list[bytearray] = []
LEAK_CHUNK = 20 * 1024 * 1024


@app.task
def leak(tag: str) -> None:
    """Keeps 20 MB more after every run, as a leaky task would, until its process is recycled."""
    _LEAK.append(bytearray(b"\xab") * LEAK_CHUNK)  # filled, so the pages are really used
    report(tag=tag, held=len(_LEAK), rss=psutil.Process().memory_info().rss)


class Unprintable(Exception):
    """An exception whose message cannot be computed, like many hand-written exception classes."""

    def __str__(self) -> str:
        raise RuntimeError("Unprintable.__str__ is broken too")


@app.task
def raise_unprintable(tag: str) -> None:
    report(tag=f"{tag}:start")
    raise Unprintable()


@app.task(retry_on=ValueError, max_retries=1, backoff=0)
def fail_and_retry(tag: str, value: object = None) -> None:
    report(tag=f"{tag}:start")
    raise ValueError(f"always fails (value={value!r})")


async def _report_later(tag: str) -> None:
    await asyncio.sleep(0)
    report(tag=tag)


@app.task
def sync_calls_asyncio_run(tag: str) -> None:
    """Legitimate sync code that drives its own event loop (asyncio.run, asgiref's async_to_sync)."""
    asyncio.run(_report_later(tag))


@app.task
async def awaits_a_cancelled_future(tag: str) -> None:
    """An async task whose own code meets a CancelledError (a cancelled future): an error, not a timeout."""
    report(tag=f"{tag}:start")
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future
