"""Celery: ``celery -A bench.apps.celery_app worker -c 2 -P prefork -l WARNING``."""

from celery import Celery

from bench.apps.common import BROKER_URL, done, record

app = Celery("bench", broker=BROKER_URL)
app.conf.task_ignore_result = True
app.conf.broker_connection_retry_on_startup = True


@app.task
def noop() -> None:
    done()


@app.task
def stamp(sent: float) -> None:
    record(sent)
