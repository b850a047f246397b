"""``python -m bench.redis_floor``: what Redis's own CPU does per task in each shape an enqueue or a
reservation can take, one client in a loop on a redis-server of its own, so a key-layout change can be judged
before it is built.

The ``cost`` workload (``bench/cost.py``) measures whole systems; this measures the parts, on one server in one
run, so their ratios hold on a machine whose system calls cost more or less than another's:

- enqueue: WakaQ's one RPUSH of its payload; hexq's ``.delay()`` (its MULTI: HSET of the payload, RPUSH of
  the id, LMOVE of the armed wake token, through hexq itself); that MULTI without the LMOVE; and two shapes
  hexq does not use: the payload inside the queue entry (one RPUSH, atomic alone) with and without the wake
  token's LMOVE in the same write.
- processing: hexq's reservation (``reserve``, 48 per call, each call acknowledging the one before, as a
  worker child does, through hexq itself); a script that only LPOPs 48 ids and returns them (the least a
  batched reservation can do); and WakaQ's BLPOP per task on a list that is never empty.

Each figure is ``INFO cpu`` (user + sys, µs) around N calls, divided by the tasks, median of ``--repeat``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from bench import cost
from bench.redis_server import RedisServer

BATCH = 48  # tasks a worker child reserves per call in the cost workload (INFO commandstats: 0.021 EVALSHA/task)
WAKAQ_PAYLOAD = b'{"name": "noop", "args": [], "kwargs": {}, "retry": 0}'


def measured(client: redis.Redis, tasks: int, run: Callable[[], None]) -> tuple[float, float]:
    """(user, sys) µs of the server's CPU per task while ``run`` handles ``tasks`` tasks (the cost workload's
    own reading of ``INFO cpu``)."""
    before = cost.read(client)
    run()
    usage = cost.read(client) - before
    return usage.user_s * 1e6 / tasks, (usage.cpu_s - usage.user_s) * 1e6 / tasks


class Floor:
    def __init__(self, server: RedisServer, n: int) -> None:
        from hexq import HexQ

        self.n = n
        self.client = server.client()
        self.app = HexQ(queues=["default"], url=server.url)

        @self.app.task
        def noop() -> None:
            """Never runs: only enqueued and reserved."""

        self.noop = noop
        self.broker: Any = self.app.broker
        self.keys = self.broker._keys  # the real key names, so the hand-written shapes touch what hexq would
        self.payload = b""

    # -- enqueue shapes --------------------------------------------------------------------------------
    def wakaq_rpush(self) -> None:
        for _ in range(self.n):
            self.client.rpush("wakaq:default", WAKAQ_PAYLOAD)

    def hexq_delay(self) -> None:
        for _ in range(self.n):
            self.noop.delay()

    def _multi(self, wake: bool) -> None:
        tasks, queue = self.keys.tasks, self.keys.queue("default")
        for _ in range(self.n):
            pipe = self.client.pipeline(transaction=True)
            task_id = uuid.uuid4().hex
            pipe.hset(tasks, task_id, self.payload)
            pipe.rpush(queue, task_id)
            if wake:
                pipe.lmove(self.keys.armed("default"), self.keys.wake_list("default"), "LEFT", "RIGHT")
            pipe.execute()

    def multi_without_wake(self) -> None:
        self._multi(wake=False)

    def _entry(self, wake: bool) -> None:
        queue = self.keys.queue("default")
        for _ in range(self.n):
            entry = uuid.uuid4().hex.encode() + b"\n" + self.payload
            if wake:
                pipe = self.client.pipeline(transaction=False)
                pipe.rpush(queue, entry)
                pipe.lmove(self.keys.armed("default"), self.keys.wake_list("default"), "LEFT", "RIGHT")
                pipe.execute()
            else:
                self.client.rpush(queue, entry)

    def entry_alone(self) -> None:
        self._entry(wake=False)

    def entry_and_wake(self) -> None:
        self._entry(wake=True)

    # -- processing shapes (the queue filled first, not measured) -----------------------------------
    def hexq_reserve(self) -> None:
        acks: list[str] = []
        while True:
            now = int(time.time() * 1000)
            got = self.broker.reserve("floor-consumer", ["default"], BATCH, now, 60_000, acks)
            acks = [delivery.id for delivery in got.deliveries]
            if not acks:
                return

    def lpop_only(self) -> None:
        sha = self.client.script_load("return redis.call('lpop', KEYS[1], ARGV[1]) or {}")
        while self.client.evalsha(sha, 1, self.keys.queue("default"), BATCH):
            pass

    def wakaq_blpop(self) -> None:
        for _ in range(self.n):
            self.client.blpop(["wakaq:default"], timeout=1)

    def measure(self, run: Callable[[], None], fill: Callable[[], None] | None = None) -> tuple[float, float]:
        self.client.flushall()
        if fill is not None:
            fill()
        return measured(self.client, self.n, run)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.redis_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="tasks per measurement (default 20000)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the median is reported (default 3)")
    args = parser.parse_args(argv)
    with RedisServer() as server:
        floor = Floor(server, args.n)
        floor.hexq_delay()  # one of hexq's own payloads, for the shapes that store it by hand
        stored: Any = floor.client.hvals(floor.keys.tasks)
        floor.payload = stored[0]
        shapes: list[tuple[str, str, Callable[[], None], Callable[[], None] | None]] = [
            ("enqueue", "WakaQ: RPUSH payload", floor.wakaq_rpush, None),
            ("enqueue", "hexq .delay(): MULTI HSET RPUSH LMOVE", floor.hexq_delay, None),
            ("enqueue", "MULTI HSET RPUSH (no wake token)", floor.multi_without_wake, None),
            ("enqueue", "RPUSH id+payload entry + LMOVE", floor.entry_and_wake, None),
            ("enqueue", "RPUSH id+payload entry alone", floor.entry_alone, None),
            ("processing", f"hexq reserve ({BATCH} per call, with acks)", floor.hexq_reserve, floor.hexq_delay),
            ("processing", f"script LPOP {BATCH} ids, nothing else", floor.lpop_only, floor.hexq_delay),
            ("processing", "WakaQ: BLPOP per task", floor.wakaq_blpop, floor.wakaq_rpush),
        ]
        runs: dict[str, list[tuple[float, float]]] = {name: [] for _, name, _, _ in shapes}
        for _ in range(args.repeat):
            for _, name, run, fill in shapes:
                runs[name].append(floor.measure(run, fill))
        print(f"Redis CPU per task, µs (server {server.version()}, {args.n} tasks, median of {args.repeat}):")
        print(f"{'':11s}{'shape':44s}{'user':>7s}{'sys':>7s}{'total':>8s}")
        for phase, name, _, _ in shapes:
            user = statistics.median(u for u, _ in runs[name])
            system = statistics.median(s for _, s in runs[name])
            total = statistics.median(u + s for u, s in runs[name])
            print(f"{phase:11s}{name:44s}{user:7.1f}{system:7.1f}{total:8.1f}")


if __name__ == "__main__":
    main()
