"""``AsyncProducer`` on ``redis.asyncio``: the enqueue of ``RedisBroker``, awaited, for one server or a primary
found through Sentinel (one partition).

The same store as ``.delay()``: a single runnable task that is not unique is one MULTI (HSET payload, RPUSH
id, LMOVE of the queue's armed wake token), anything else the ``enqueue`` script (unique locks included), a
MULTI that failed goes through the ``push`` script, and ``wait_replicas`` sends WAIT in the same round trip.
The scripts are the very ones the broker sends (``scripts.source``), by EVALSHA, loaded again after NOSCRIPT.

``redis.asyncio`` connections belong to the event loop that opened them, so this producer keeps one client
per running loop (an application may run several loops one after another: ``asyncio.run`` in tests, a thread
with its own loop), dropped with its loop. The enqueues of coroutines that call at the same time are combined
into shared round trips (``Coalesced``).

Partitions over several hash tags and Redis Cluster URLs are not served here: their connections are pinned to
a slot's node by ``cluster.py``, which redis.asyncio has no hook for; ``bootstrap.make_async_producer`` gives
those apps the thread-offloaded producer (``adapters/system/offload.py``) instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio
import redis.exceptions as rx
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff

from hexq.adapters.redis.client import HEALTH_CHECK_INTERVAL, SENTINEL_TIMEOUT
from hexq.adapters.redis.codec import chunks, packed, used_ids
from hexq.adapters.redis.errors import NotReplicatedError, translated
from hexq.adapters.redis.keys import Keys
from hexq.adapters.redis.scripts import source
from hexq.adapters.redis.sentinel_settings import SentinelSettings

if TYPE_CHECKING:
    from hexq.adapters.redis.settings import RedisSettings
    from hexq.core.ports import OutgoingTask

Client = Any  # redis.asyncio.Redis: its stubs make every reply possibly awaitable, which helps nothing here
# Round trips in flight at once per event loop (each on a connection of its own); the enqueues of the
# coroutines that come meanwhile wait and go together in the next one (``Coalesced``).
FLIGHTS = 4
# The most tasks one round trip carries when enqueues are combined (in script calls of ENQUEUE_CHUNK_TASKS).
MAX_COMBINED = 1000


class Coalesced:
    """The enqueues of one event loop, combined: a call made while ``flights`` round trips are under way waits,
    and every call waiting when one ends goes in the next round trip, as one ``enqueue`` script call (or a
    pipeline of them past 250 tasks). Each task is stored atomically and each call's tasks in order, as when
    sent alone (the script is the one a batch uses); one call alone, of one runnable task that is not unique,
    is still the MULTI. redis.asyncio spends far more CPU per command than the round trip costs Redis, so 100
    coroutines each sending one task would otherwise be slower than 100 threads with the sync client.

    A failure fails every call of that round trip (a refused script: nothing of it, or a part, was stored, as
    with ``delay_many``); ``NotReplicatedError`` is given to each call with its own ids."""

    def __init__(self, send: Callable[[list[OutgoingTask]], Awaitable[list[str]]], flights: int = FLIGHTS) -> None:
        self._send = send
        self._flights = flights
        self._waiting: list[tuple[list[OutgoingTask], asyncio.Future[list[str]]]] = []
        self._flying = 0
        self._running: set[asyncio.Task[None]] = set()  # strong references: the loop keeps only weak ones

    async def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        self._waiting.append((list(tasks), future))
        if self._flying < self._flights:
            self._flying += 1
            flight = loop.create_task(self._fly())  # not the caller's: cancelling it must not fail the others
            self._running.add(flight)
            flight.add_done_callback(self._running.discard)
        return await future

    async def _fly(self) -> None:
        try:
            while self._waiting:
                calls = self._take()
                tasks = [task for sent, _ in calls for task in sent]
                try:
                    used = await self._send(tasks)
                except NotReplicatedError as exc:
                    offset = 0
                    for sent, future in calls:
                        ids = exc.task_ids[offset:offset + len(sent)]
                        offset += len(sent)
                        _fail(future, NotReplicatedError(ids, exc.wanted, exc.acknowledged, exc.timeout_ms,
                                                         exc.where))
                    continue
                except BaseException as exc:
                    for _, future in calls:
                        _fail(future, exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                offset = 0
                for sent, future in calls:
                    if not future.done():  # its caller may have been cancelled meanwhile (the tasks are stored)
                        future.set_result(used[offset:offset + len(sent)])
                    offset += len(sent)
        finally:
            self._flying -= 1

    def _take(self) -> list[tuple[list[OutgoingTask], asyncio.Future[list[str]]]]:
        count = taken = 0
        for sent, _ in self._waiting:
            if taken and count + len(sent) > MAX_COMBINED:
                break
            count += len(sent)
            taken += 1
        calls, self._waiting = self._waiting[:taken], self._waiting[taken:]
        return calls


def _fail(future: asyncio.Future[list[str]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _sha(name: str) -> str:
    return hashlib.sha1(source(name).encode()).hexdigest()


class AsyncRedisProducer:
    def __init__(self, settings: RedisSettings | SentinelSettings, prefix: str, *,
                 new_client: Callable[[], Client] | None = None) -> None:
        """``new_client`` builds the client of each loop (tests pass a fake); by default, from ``settings``."""
        self._settings = settings
        self._make_client = new_client or self._new_client
        self._keys = Keys(prefix)
        self._tasks_key = self._keys.tasks
        self._where = settings.redacted
        self._translator = translated(self._where)
        self._wait_replicas = settings.wait_replicas
        self._wait_timeout_ms = settings.wait_timeout_ms
        self._shas = {name: _sha(name) for name in ("enqueue", "push")}
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[Client, Coalesced]] = (
            weakref.WeakKeyDictionary())

    # -- connections ---------------------------------------------------------------------------------
    def _client(self) -> tuple[Client, Coalesced]:
        loop = asyncio.get_running_loop()
        found = self._clients.get(loop)
        if found is None:
            client = self._make_client()
            found = self._clients[loop] = (client, Coalesced(lambda tasks: self._enqueue(client, tasks)))
        return found

    def _new_client(self) -> Client:
        settings = self._settings
        options: dict[str, Any] = {
            "socket_timeout": settings.socket_timeout,
            "socket_connect_timeout": settings.socket_connect_timeout,
            "health_check_interval": HEALTH_CHECK_INTERVAL,
            "decode_responses": True,
            # As the sync clients: one quick retry replaces a pooled connection that died with a restarted
            # server; timeouts are not retried (the command may have run).
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(rx.ConnectionError,)),
        }
        if isinstance(settings, SentinelSettings):
            target = settings.target
            tls: dict[str, Any] = {}
            if target.tls:
                tls = {"ssl": True, "ssl_ca_certs": settings.ssl_ca_certs, "ssl_certfile": settings.ssl_certfile,
                       "ssl_keyfile": settings.ssl_keyfile}
            sentinel = Sentinel(list(target.sentinels), sentinel_kwargs={
                "socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT,
                "decode_responses": True, "username": target.sentinel_username,
                "password": target.sentinel_password, **tls})
            return sentinel.master_for(target.service, db=target.db, username=target.username,
                                       password=target.password, **options, **tls)
        if settings.scheme == "rediss":
            options.update(ssl_ca_certs=settings.ssl_ca_certs, ssl_certfile=settings.ssl_certfile,
                           ssl_keyfile=settings.ssl_keyfile)
        return redis.asyncio.Redis.from_url(settings.client_url, **options)

    async def aclose(self) -> None:
        """Close the client of the running loop (those of other loops go with their loops)."""
        found = self._clients.pop(asyncio.get_running_loop(), None)
        if found is not None:
            await found[0].aclose()

    # -- enqueue -------------------------------------------------------------------------------------
    async def enqueue(self, tasks: Sequence[OutgoingTask]) -> list[str]:
        if not tasks:
            return []
        return await self._client()[1].enqueue(tasks)

    async def _enqueue(self, client: Client, tasks: Sequence[OutgoingTask]) -> list[str]:
        one = tasks[0] if len(tasks) == 1 and tasks[0].eta_ms is None and tasks[0].unique is None else None
        with self._translator:
            if self._wait_replicas and not all(task.queue.startswith("@") for task in tasks):
                return await self._durably(client, tasks)
            if one is not None:
                if await self._pushed(client, one):
                    return [one.id]
                await self._script(client, "push", [one.id, one.queue, one.payload])
                return [one.id]
            batches = [[packed(tasks[0])]] if len(tasks) == 1 else list(chunks(tasks))
            if len(batches) == 1:
                return used_ids(tasks, batches, [await self._script(client, "enqueue", batches[0])])
            replies, _ = await self._batches(client, batches, wait=False)
            return used_ids(tasks, batches, replies)

    async def _pushed(self, client: Client, task: OutgoingTask) -> bool:
        """The MULTI of ``RedisBroker._pushed``; False on anything but a clean reply, and the caller sends the
        push script (which stores nothing when this MULTI did store the task: its HSETNX finds the payload)."""
        keys = self._keys
        try:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self._tasks_key, task.id, task.payload)
            pipe.rpush(keys.queue(task.queue), task.id)
            pipe.lmove(keys.armed(task.queue), keys.wake_list(task.queue), "LEFT", "RIGHT")
            replies = await pipe.execute(raise_on_error=False)
        except (rx.ConnectionError, rx.TimeoutError, rx.ResponseError, OSError):
            return False
        return not any(isinstance(reply, Exception) for reply in replies)

    async def _script(self, client: Client, name: str, args: Sequence[str]) -> Any:
        try:
            return await client.evalsha(self._shas[name], 1, self._tasks_key, *args)
        except rx.NoScriptError:
            await client.script_load(source(name))
            return await client.evalsha(self._shas[name], 1, self._tasks_key, *args)

    async def _batches(self, client: Client, batches: Sequence[Sequence[str]], wait: bool) -> tuple[list[Any], int]:
        """Every batch by the ``enqueue`` script, pipelined (and WAIT after them when ``wait``, on the same
        connection); returns each batch's reply and how many replicas acknowledged. A batch refused with
        NOSCRIPT stored nothing: the script is loaded and those batches sent again (with a WAIT of their own)."""
        sha = self._shas["enqueue"]
        pending = list(range(len(batches)))
        replies: list[Any] = [None] * len(batches)
        acknowledged = self._wait_replicas
        for attempt in (1, 2, 3):
            pipe = client.pipeline(transaction=False)
            for index in pending:
                pipe.evalsha(sha, 1, self._tasks_key, *batches[index])
            if wait:
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_timeout_ms)
            results = await pipe.execute(raise_on_error=False)
            stored = results[:len(pending)]
            refused = [index for index, reply in zip(pending, stored, strict=True)
                       if isinstance(reply, rx.NoScriptError)]
            for index, reply in zip(pending, stored, strict=True):
                if isinstance(reply, Exception) and not isinstance(reply, rx.NoScriptError):
                    raise reply
                replies[index] = reply
            if wait:
                if isinstance(results[-1], Exception):
                    raise results[-1]
                if len(refused) < len(pending):  # some batch was stored by this round: its WAIT counts
                    acknowledged = min(acknowledged, int(results[-1]))
            if not refused:
                return replies, acknowledged
            if attempt < 3:
                await client.script_load(source("enqueue"))
                pending = refused
        raise rx.NoScriptError("the enqueue script could not be loaded")

    async def _durably(self, client: Client, tasks: Sequence[OutgoingTask]) -> list[str]:
        """``wait_replicas``: the enqueue script and WAIT in one round trip on one connection (``durable.py``)."""
        batches = list(chunks(tasks))
        replies, acknowledged = await self._batches(client, batches, wait=True)
        used = used_ids(tasks, batches, replies)
        if acknowledged < self._wait_replicas:
            raise NotReplicatedError(used, self._wait_replicas, acknowledged, self._wait_timeout_ms, self._where)
        return used
