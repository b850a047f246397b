"""The app the dashboard's browser tests run a real worker and scheduler on (``test_dashboard_browser.py``).

HEXQ_TEST_URL and HEXQ_TEST_PREFIX as in ``tasks.py``. ``fails_until`` fails (and, with no retries, is
dead-lettered) until the file it names exists: a requeue after the test creates the file succeeds.
"""

from __future__ import annotations

import os

from hexq import CronTask, HexQ

app = HexQ(
    url=os.environ.get("HEXQ_TEST_URL", "redis://127.0.0.1:6379/15"),
    prefix=os.environ.get("HEXQ_TEST_PREFIX", "hexqtest"),
    queues=[(0, "high"), "default"],
    concurrency=2,
    max_retries=0,
    lease_timeout=3,
    shutdown_timeout=5,
    schedules=[CronTask("* * * * * */2", "ok", args=[0], queue="high")],
)


@app.task
def ok(n: int) -> int:
    return n


@app.task
def fails_until(path: str, note: str = "") -> None:
    if not os.path.exists(path):
        raise ValueError(f"{path} is missing {note}")
