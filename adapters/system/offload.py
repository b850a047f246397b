"""Blocking calls made awaitable by running them in threads: the ``AsyncProducer`` of the brokers that have no
event-loop client (SQLite and the in-memory broker, which are local; Redis partitions and Redis Cluster, whose
connections are pinned to a slot's node by ``adapters/redis/cluster.py``), and a whole ``.delay()`` for the
in-process mode (``memory://``, where sending runs the task). The event loop only waits for the thread."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from hexq.core.ports import OutgoingTask, Producer
from hexq.core.services.sender import Send, Sender

T = TypeVar("T")
# Threads per producer: enough that many coroutines enqueueing at once are not queued behind a few threads
# (each thread keeps its own connection to Redis), few enough to stay cheap.
MAX_THREADS = 16


class Threads:
    """A thread pool made on first use (never at import, never before a fork) and remade in a forked child."""

    def __init__(self, name: str, size: int = MAX_THREADS) -> None:
        self._name = name
        self._size = size
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    async def run(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool_now(), call)

    def _pool_now(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():  # a forked child has none of the threads
                self._pool = ThreadPoolExecutor(self._size, thread_name_prefix=self._name)
                self._pid = os.getpid()
            return self._pool

    def shutdown(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)


class ThreadProducer:
    """``AsyncProducer`` over a blocking ``Producer``: its ``enqueue`` (the same atomic store) in a thread."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._threads = Threads("hexq-enqueue")

    async def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        return await self._threads.run(lambda: self._producer.enqueue(tasks))

    async def aclose(self) -> None:
        self._threads.shutdown()  # the producer's connections are the broker's, closed with it


class ThreadSender:
    """A whole ``Sender.send`` in a thread: the in-process mode runs the task as it sends it."""

    def __init__(self, sender: Sender) -> None:
        self._sender = sender
        self._threads = Threads("hexq-send")

    async def send(self, calls: Sequence[Send]) -> list[str]:
        return await self._threads.run(lambda: self._sender.send(calls))

    async def aclose(self) -> None:
        self._threads.shutdown()
