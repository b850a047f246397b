"""WakaQ: ``wakaq-worker --app=bench.apps.wakaq_app.wakaq`` (concurrency=2 forked processes)."""

from urllib.parse import urlsplit

from wakaq import WakaQ

from bench.apps.common import BROKER_URL, done, record

_url = urlsplit(BROKER_URL)
wakaq = WakaQ(queues=["default"], host=_url.hostname or "127.0.0.1", port=_url.port or 6379, db=0,
              concurrency=2, worker_log_level="WARNING")


@wakaq.task
def noop() -> None:
    done()


@wakaq.task
def stamp(sent: float) -> None:
    record(sent)
