"""The hexq side of the WakaQ migration test (test_migrate_from_wakaq.py): tasks named as the WakaQ app's,
on queues named as its queues, that report what they ran with. HEXQ_TEST_URL, HEXQ_TEST_PREFIX,
HEXQ_TEST_BOOK_URL as for ``tasks.py``."""

from __future__ import annotations

import os
from typing import Any

from hexq import HexQ, current_task
from tests.integration.apps.reporting import Reporter

URL = os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("HEXQ_TEST_PREFIX", "hexqtest")
report = Reporter(os.environ.get("HEXQ_TEST_BOOK_URL") or URL, f"{PREFIX}-results")

app = HexQ(url=URL, prefix=PREFIX, queues=[(0, "high"), (1, "medium"), "low"], concurrency=2)


def _report(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    message = current_task.get()
    assert message is not None
    report(tag=message.name, id=message.id, queue=message.queue, eta=message.eta, args=repr(args),
           kwargs=repr(kwargs))


@app.task
def add(*args: Any, **kwargs: Any) -> None:
    _report(args, kwargs)


@app.task(queue="medium")
def greet(*args: Any, **kwargs: Any) -> None:
    _report(args, kwargs)


@app.task
def stamp(*args: Any, **kwargs: Any) -> None:
    _report(args, kwargs)
