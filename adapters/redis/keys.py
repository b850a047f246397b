"""The Redis key layout of one hexq app; every key of a prefix ``p`` shares the hash slot of ``{p}``.

The braces are a Redis Cluster hash tag, so the unit of sharding is the whole prefix and every Lua
script (which touches keys it can only name at run time, such as the queues of an expired consumer)
stays inside one slot. Each script gets ``{p}:tasks`` as ``KEYS[1]`` for routing and derives the rest.
Needs Redis >= 6.2 (LPOP with a count, fractional BLPOP timeouts).

====================  ======  ===========================================================================
key                   type    contents
====================  ======  ===========================================================================
{p}:q:<queue>         list    runnable task ids; RPUSH at the tail, LPOP at the head (FIFO)
{p}:tasks             hash    task id -> payload, for every queued, waiting or owned task
{p}:eta:<queue>       zset    task id -> eta ms, tasks waiting for their eta
{p}:etakeys:<queue>   hash    ``k:<dedup key>`` -> task id and ``i:<task id>`` -> dedup key, for waiting
                              eta tasks enqueued with a dedup key (both directions, so promotion can
                              forget the key of a task it moves without scanning)
{p}:crashes           hash    task id -> times a process died while running it
{p}:owned:<consumer>  list    ids the consumer reserved, in reservation order
{p}:inflight          hash    task id -> ``since_ms|queue|consumer`` of every owned task
{p}:leases            zset    consumer -> lease deadline ms
{p}:suspects          hash    consumer -> ms when its lease was first seen expired (cleared on renewal)
{p}:dead              list    dead letters as JSON ``{id, queue, payload, reason, failed_at_ms}``,
                              newest first
{p}:cron              hash    schedule key -> last fire ms
{p}:workers           zset    worker id -> last heartbeat ms
{p}:workerinfo        hash    worker id -> info JSON written by the worker
{p}:wake              list    wake tokens (at most 64) popped by idle workers with BLPOP
{p}:broadcast         pubsub  channel of broadcast payloads
====================  ======  ===========================================================================

Scripts (``adapters/redis/*.lua``, each prefixed by ``_lib.lua``) and the keys they write:

- ``enqueue``: tasks, q:*, eta:*, etakeys:*, wake.
- ``reserve``: acks (owned:<consumer>, tasks, crashes, inflight); promotion (eta:*, q:*, etakeys:*) of
  the served queues; recovery of up to 10 expired consumers (leases, owned:*, inflight, crashes, q:*,
  wake); then q:<served>, owned:<consumer>, inflight, leases; reads tasks, crashes, eta:* (next eta).
- ``retry``: owned:<consumer>, inflight, crashes, tasks, q:* or eta:*, wake.
- ``dead_letter``: owned:<consumer>, inflight, tasks, crashes, dead.
- ``release``: owned:<consumer>, inflight, q:*, wake.
- ``recover_consumer`` / ``recover_expired``: leases, owned:*, inflight, crashes, q:*, wake.
- ``claim_cron``: cron, then as ``enqueue``.
- ``requeue_dead``: dead, crashes, tasks, q:*, wake.
- ``purge_queue``: q:<queue>, eta:<queue>, etakeys:<queue>, tasks, crashes.

Single-command or MULTI/EXEC operations: renew_leases (leases), heartbeat and forget_worker (workers,
workerinfo), purge_dead (dead), publish (broadcast), and the read-only inspections.
"""

from __future__ import annotations

import attrs

from hexq.core.errors import ConfigError


@attrs.frozen
class Keys:
    prefix: str

    def __attrs_post_init__(self) -> None:
        if not self.prefix or "{" in self.prefix or "}" in self.prefix:
            raise ConfigError(f"invalid Redis key prefix {self.prefix!r}: use a non-empty name without braces")

    @property
    def base(self) -> str:
        return "{" + self.prefix + "}:"

    @property
    def tasks(self) -> str:
        return self.base + "tasks"

    def queue(self, name: str) -> str:
        return f"{self.base}q:{name}"

    def eta(self, name: str) -> str:
        return f"{self.base}eta:{name}"

    @property
    def inflight(self) -> str:
        return self.base + "inflight"

    @property
    def dead(self) -> str:
        return self.base + "dead"

    @property
    def cron(self) -> str:
        return self.base + "cron"

    @property
    def leases(self) -> str:
        return self.base + "leases"

    @property
    def workers(self) -> str:
        return self.base + "workers"

    @property
    def workerinfo(self) -> str:
        return self.base + "workerinfo"

    @property
    def wake(self) -> str:
        return self.base + "wake"

    @property
    def broadcast(self) -> str:
        return self.base + "broadcast"
