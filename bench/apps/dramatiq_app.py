"""Dramatiq: ``dramatiq bench.apps.dramatiq_app -p 2 -t 1`` (2 processes, 1 worker thread each)."""

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.apps.common import BROKER_URL, done, record

broker = RedisBroker(url=BROKER_URL)
dramatiq.set_broker(broker)


@dramatiq.actor
def noop() -> None:
    done()


@dramatiq.actor
def stamp(sent: float) -> None:
    record(sent)
