"""RQ: two ``rq worker --url URL --with-scheduler default`` processes (each forks a work horse per job)."""

from redis import Redis
from rq import Queue

from bench.apps.common import BROKER_URL, done, record

queue = Queue("default", connection=Redis.from_url(BROKER_URL))


def noop() -> None:
    done()


def stamp(sent: float) -> None:
    record(sent)
