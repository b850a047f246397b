"""A runnable hexq app: WakaQ's README example with the import changed.

    hexq worker --app=examples.app:app          # in one shell
    hexq scheduler --app=examples.app:app       # in another (runs the CronTasks)
    python -c "from examples.app import mytask; mytask.delay(1, 1)"
    hexq enqueue --app=examples.app:app mytask 2 3

HEXQ_URL picks the broker (default redis://localhost:6379/0): HEXQ_URL=sqlite:///path/hexq.db needs nothing
installed (``make demo`` runs this app that way); HEXQ_URL=memory:// runs tasks in-process;
HEXQ_URL=redis+cluster://host:port,... with HEXQ_PARTITIONS=3 spreads it over a cluster's nodes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from datetime import timedelta
from typing import Any

from hexq import CronTask, HexQ, Queue, current_attempt, current_task

Q_HIGH = "a-high-priority-queue"
Q_MED = "a-medium-priority-queue"
Q_LOW = "a-low-priority-queue"
Q_OTHER = "another-queue"
Q_DEFAULT = "default-lowest-priority-queue"

log = logging.getLogger(__name__)

app = HexQ(
    url=os.environ.get("HEXQ_URL", "redis://localhost:6379/0"),
    queues=[
        (0, Q_HIGH),
        (1, Q_MED),
        (2, Q_LOW),
        Queue(Q_OTHER, priority=3, max_retries=5, soft_timeout=300, hard_timeout=360),
        Q_DEFAULT,
    ],
    concurrency=os.environ.get("HEXQ_CONCURRENCY", "cores*2"),
    # On a Redis Cluster (HEXQ_URL=redis+cluster://host:port,...), spread the app over this many nodes.
    partitions=int(os.environ.get("HEXQ_PARTITIONS", "1")),
    async_concurrency=10,
    soft_timeout=30,
    hard_timeout=timedelta(minutes=1),
    max_retries=3,
    max_mem_percent=98,
    max_tasks_per_worker=5000,
    schedules=[
        CronTask("* * * * *", "mytask", queue=Q_MED, args=[2, 2], kwargs={}),
        ("*/5 * * * *", "mytask", [1, 1], {}),
        ("*/10 * * * *", "anothertask"),
        CronTask("* * * * * */5", "anothertask"),  # six fields: the last is seconds (every 5 s)
    ],
)


@app.task(queue=Q_MED, max_retries=7, soft_timeout=420, hard_timeout=480)
def mytask(x: int, y: int) -> None:
    print(x + y, flush=True)


@app.task
def anothertask() -> None:
    print("hello world", flush=True)


@app.task
async def an_io_intensive_task() -> None:
    await asyncio.sleep(0.1)
    print("hello async world", flush=True)


@app.task(retry_on=(ConnectionError,), max_retries=5, backoff=2.0)
def flaky_call(url: str) -> None:
    task = current_task.get()
    log.info("calling %s (task %s)", url, task.id if task else "-")
    if current_attempt.get() == 1:  # the service is down the first time: the worker retries with backoff
        raise ConnectionError(f"{url} refused the connection")


@app.task
def divide(a: float, b: float) -> float:
    # divide.delay(1, 0) raises ZeroDivisionError on the worker and ends in the dead-letter list (exceptions
    # are retried only when retry_on names them): `hexq dead list` and the dashboard show it.
    return a / b


@app.task(keep_result=timedelta(minutes=10))
def add(x: int, y: int) -> int:
    # Keeps its outcome for 10 minutes: from a shell, h = add.delay(1, 2); h.result(timeout=5) == 3.
    return x + y


@app.task(queue=Q_LOW)
async def slow(seconds: float = 60) -> None:
    # Something to cancel: h = slow.delay(); h.cancel(); h.status() reads cancelled.
    await asyncio.sleep(seconds)


@app.task
def on_time(note: str) -> None:
    # A deadline: on_time.options(expires=5).delay("hi") never runs if no worker starts it within 5 s.
    log.info("on time: %s", note)


@app.wrap_tasks_with
async def custom_task_decorator(fn: Any, args: Any, kwargs: Any) -> None:
    # do something before each task runs, for ex: `with app.app_context():`
    if inspect.iscoroutinefunction(fn):
        await fn(*args, **kwargs)
    else:
        fn(*args, **kwargs)
    # do something after each task runs


if __name__ == "__main__":
    mytask.delay(1, 1)
    mytask.delay(1, 1, queue=Q_HIGH)
    anothertask.delay()
    anothertask.delay(eta=timedelta(seconds=10))
    an_io_intensive_task.delay()
