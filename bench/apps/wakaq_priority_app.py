"""WakaQ, priority workload: ``wakaq-worker --app=bench.apps.wakaq_priority_app.wakaq``."""

from urllib.parse import urlsplit

from wakaq import WakaQ

from bench.apps.common import BROKER_URL, record
from bench.apps.common import slow as slow_body

_url = urlsplit(BROKER_URL)
wakaq = WakaQ(queues=[(0, "high"), (1, "low")], host=_url.hostname or "127.0.0.1", port=_url.port or 6379,
              db=0, concurrency=2, worker_log_level="WARNING")


@wakaq.task(queue="high")
def urgent(sent: float) -> None:
    record(sent)


@wakaq.task(queue="low")
def slow() -> None:
    slow_body()
