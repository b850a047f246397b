"""Huey: ``huey_consumer bench.apps.huey_app.huey -w 2 -k process``."""

from huey import RedisHuey

from bench.apps.common import BROKER_URL, done, record

huey = RedisHuey("bench", url=BROKER_URL)


@huey.task()
def noop() -> None:
    done()


@huey.task()
def stamp(sent: float) -> None:
    record(sent)
