"""hexq on its SQLite broker: ``hexq worker --app=bench.apps.hexq_sqlite_app:app --concurrency=2``.

The broker is the database file ``BENCH_SQLITE_PATH`` (a fresh one per step, made by the harness); the
tasks are the same as every other app's, so the completion counter stays in the harness's Redis."""

from bench.apps.common import SQLITE_PATH, done, record
from hexq import HexQ

app = HexQ(queues=["default"], url=f"sqlite://{SQLITE_PATH}", concurrency=2, worker_log_level="WARNING")


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
