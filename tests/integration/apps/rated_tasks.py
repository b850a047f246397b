"""The app of the rate limit tests (test_rate_limits.py): a task limited to 20 starts per second, a queue
limited to 10 per second, and unlimited tasks in the same queue and in a higher one. Every task reports when
it started. Configured from the environment as tasks.py is (HEXQ_TEST_URL, HEXQ_TEST_BOOK_URL,
HEXQ_TEST_PREFIX, HEXQ_TEST_PARTITIONS)."""

from __future__ import annotations

import os

from hexq import HexQ, Queue
from tests.integration.apps.reporting import Reporter

URL = os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15")
PREFIX = os.environ.get("HEXQ_TEST_PREFIX", "hexqtest")
BOOK_URL = os.environ.get("HEXQ_TEST_BOOK_URL") or URL

LIMITED_PER_SECOND = 20
METERED_PER_SECOND = 10

app = HexQ(
    url=URL,
    prefix=PREFIX,
    partitions=int(os.environ.get("HEXQ_TEST_PARTITIONS", "1")),
    queues=[(0, "high"), Queue("metered", priority=1, rate_limit=f"{METERED_PER_SECOND}/s"), "default"],
    concurrency=2,
    lease_timeout=5,
    shutdown_timeout=10,
)

report = Reporter(BOOK_URL, f"{PREFIX}-results")


@app.task(rate_limit=f"{LIMITED_PER_SECOND}/s")
def limited(n: int) -> None:
    report(tag=f"limited-{n}")


@app.task
def free(n: int) -> None:
    report(tag=f"free-{n}")


@app.task(queue="high")
def urgent(n: int) -> None:
    report(tag=f"urgent-{n}")


@app.task(queue="metered")
def metered(n: int) -> None:
    report(tag=f"metered-{n}")
