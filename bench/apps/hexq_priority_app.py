"""hexq, priority workload: ``hexq worker --app=bench.apps.hexq_priority_app:app --concurrency=2``."""


from bench.apps.common import BROKER_URL, partitions_option, record
from bench.apps.common import slow as slow_body
from hexq import HexQ

app = HexQ(queues=[(0, "high"), (1, "low")], url=BROKER_URL, concurrency=2, worker_log_level="WARNING",
           **partitions_option())


@app.task(queue="high")
def urgent(sent: float) -> None:
    record(sent)


@app.task(queue="low")
def slow() -> None:
    slow_body()
