"""The systems under test, hexq first."""

from __future__ import annotations

from bench.systems.arq import Arq
from bench.systems.base import System
from bench.systems.celery import Celery
from bench.systems.dramatiq import Dramatiq
from bench.systems.hexq import Hexq
from bench.systems.huey import Huey
from bench.systems.rq import Rq
from bench.systems.wakaq import Wakaq

SYSTEMS: dict[str, type[System]] = {cls.name: cls for cls in (Hexq, Wakaq, Celery, Rq, Huey, Dramatiq, Arq)}
PEERS = [name for name in SYSTEMS if name != "hexq"]
