"""arq: ``arq bench.apps.arq_app.WorkerSettings`` (one asyncio process, arq's default max_jobs=10)."""

from typing import Any

from arq.connections import RedisSettings

from bench.apps.common import BROKER_URL, adone, arecord

# arq's default logging prints a line per job at INFO; keep it to warnings like the other systems.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": "WARNING", "class": "logging.StreamHandler"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": "WARNING"}},
}


async def noop(ctx: dict[str, Any]) -> None:
    await adone()


async def stamp(ctx: dict[str, Any], sent: float) -> None:
    await arecord(sent)


class WorkerSettings:
    functions = [noop, stamp]
    redis_settings = RedisSettings.from_dsn(BROKER_URL)
