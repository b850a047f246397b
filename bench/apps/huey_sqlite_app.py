"""Huey's SqliteHuey: ``huey_consumer bench.apps.huey_sqlite_app.huey -w 2 -k process -q -d 0.01 -b 1 -m 0.01``.

The queue is the database file ``BENCH_SQLITE_PATH`` (a fresh one per step, made by the harness), in WAL
mode (``journal_mode="wal"``, SqliteHuey's default, spelled out); the tasks are the same as every other
app's, so the completion counter stays in the harness's Redis."""

from huey import SqliteHuey

from bench.apps.common import SQLITE_PATH, done, record

huey = SqliteHuey("bench", filename=SQLITE_PATH, journal_mode="wal")


@huey.task()
def noop() -> None:
    done()


@huey.task()
def stamp(sent: float) -> None:
    record(sent)
