"""hexq: ``hexq worker --app=bench.apps.hexq_app:app --concurrency=2``."""

from bench.apps.common import BROKER_URL, done, record
from hexq import HexQ

app = HexQ(queues=["default"], url=BROKER_URL, concurrency=2, worker_log_level="WARNING")


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
