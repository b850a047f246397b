"""The Redis key layout of one hexq app; every key of a prefix ``p`` shares the hash slot of ``{p}``.

The braces are a Redis Cluster hash tag, so the unit of sharding is the whole prefix and every Lua
script (which touches keys it can only name at run time, such as the queues of an expired consumer)
stays inside one slot. Each script gets ``{p}:tasks`` as ``KEYS[1]`` for routing and derives the rest
with the preamble ``lua_preamble()`` writes. Needs Redis >= 6.2 (LPOP with a count, fractional BLPOP
timeouts).

This module is the only place key names are written: ``Keys`` (for Python) and ``lua_preamble`` (for the
scripts) are both built from ``SINGLE_KEYS`` and ``FAMILIES``. The layout below is what existing
deployments hold; changing it needs a migration (``tests/unit/test_redis_adapter.py`` checks that what
the scripts and ``Keys`` write matches this table).

====================  ======  ===========================================================================
key                   type    contents
====================  ======  ===========================================================================
{p}:q:<queue>         list    runnable task ids; RPUSH at the tail, LPOP at the head (FIFO); the queues
                              ``@broadcast.<worker id>`` hold each worker's copies of broadcasts
{p}:tasks             hash    task id -> payload, for every queued, waiting or owned task
{p}:eta:<queue>       zset    task id -> eta ms, tasks waiting for their eta
{p}:etakeys:<queue>   hash    ``k:<dedup key>`` -> task id and ``i:<task id>`` -> dedup key, for waiting
                              eta tasks enqueued with a dedup key (both directions, so promotion can
                              forget the key of a task it moves without scanning)
{p}:crashes           hash    task id -> times a process died while running it
{p}:owned:<consumer>  list    ids the consumer reserved, in reservation order (acknowledgements cut the
                              head with LTRIM: the same list and order as before, so nothing migrates)
{p}:inflight          hash    task id -> ``since_ms|queue|consumer`` of every owned task, plus one field
                              ``INFLIGHT_MARK`` (a NUL byte, then ``hashtable``) whose long value keeps the
                              hash in the hashtable encoding; the hash goes when only the mark is left
{p}:leases            zset    consumer -> lease deadline ms
{p}:suspects          hash    consumer -> ms when its lease was first seen expired (cleared on renewal)
{p}:dead              list    dead letters as JSON ``{id, queue, payload, reason, failed_at_ms}``, plus
                              ``traceback`` when the failure had one (absent: ""), newest first
{p}:cron              hash    schedule key -> last fire ms
{p}:expired           hash    queue -> how many of its tasks were dropped unrun, their deadline passed
{p}:cancels           hash    task id -> "1" while an owned task's cancellation is pending (``cancel``); the
                              worker parent's renewal reads it, and any other end of the task takes it
{p}:workers           zset    worker id -> last heartbeat ms; a broadcast is copied for the workers whose
                              heartbeat is recent (LeaseRules.live_worker_ms)
{p}:workerinfo        hash    worker id -> info JSON written by the worker
{p}:tally:<minute>    hash    the dashboard's per-minute counters (``MinuteTally``) of the minute starting at
                              <minute> (epoch ms): ``done:<queue>`` and ``failed:<queue>`` (HINCRBY by each
                              worker's heartbeat), ``pending:<queue>`` and ``eta:<queue>`` (sampled); expires
                              ``LeaseRules.tally_ttl_ms`` (2 h) after it is written. Partition 0 only
{p}:idle:<queue>      zset    consumer -> ms it last found every queue it serves empty and went to wait;
                              cleared when it takes work, dropped after the stale-worker age (and the key
                              expires then too)
{p}:armed:<queue>     list    at most one token, put there for the consumers idle on the queue; storing a
                              task moves it to the wake list (LMOVE, a no-op when there is none)
{p}:wake:<queue>      list    wake tokens (one, rarely two) for the consumers idle on the queue, who BLPOP
                              the wake lists of their queues
{p}:wake              list    the wake list of hexq before per-queue wake-ups (tokens for everyone, up to
                              64, on every enqueue): no longer written, but still in every worker's BLPOP,
                              so producers not yet upgraded keep waking upgraded workers
{p}:announce          pubsub  one message per broadcast, ``<task id> <copies stored>`` (a channel, not a key)
{p}:meta              hash    ``partitions`` -> how many partitions the app's keys are spread over; absent
                              (one partition, the layout above) until an app runs with ``partitions`` > 1
{p}:unique:<key>      string  the lock of a unique task (``hexq.core.unique``): the id of the task holding
                              it, with a TTL of the task's window; deleted when that task is acknowledged,
                              dead-lettered or purged. With partitions, in the partition the key names
{p}:rates             hash    rate limit (``t:<task>`` or ``q:<queue>``) -> ``"<TAT> <cursor>"`` in epoch
                              microseconds (hexq.core.rate_limit); written only by reservations of workers
                              that enforce rate limits, one field per limit, never expires
{p}:result:<id>       string  the kept outcome of a task (``keep_result``): one JSON document, expiring
                              after keep_result (SET PX GET: one command); before the outcome, a waiter's
                              mark (a NUL byte, then ``waiting``) that lasts as long as its wait
{p}:outcomewake:<id>  list    one token, pushed when an outcome replaces a waiter's mark, for 10 s;
                              waiters BLMOVE it onto itself (LEFT LEFT), which serves all and consumes none
====================  ======  ===========================================================================

With ``partitions=N`` (N > 1) the whole layout above exists N times, once per hash tag: partition 0 is
``{p}`` itself (so going from 1 to N partitions moves nothing) and partition k is ``{<tag k>}``, a tag chosen
by ``partitions.partition_tags`` so that the N tags fall in N different slot ranges (N different nodes of a
cluster whose slots are split evenly). Cron claims, worker heartbeats, broadcast copies and ``meta`` live in
partition 0 only.

Scripts (``adapters/redis/*.lua``, each prefixed by the key preamble and ``_lib.lua``) and the keys they
write:

- ``enqueue``: unique:* (a unique task's lock, read and taken), tasks, q:*, eta:*, etakeys:*, armed:*,
  wake:*; ``push`` (one runnable task, when the MULTI below fails): tasks, q:*, armed:*, wake:*.
- ``reserve``: acks (owned:<consumer>, tasks, crashes, inflight, unique:* of unique tasks, and result:<id> of
  the acknowledged tasks whose outcome is kept); promotion
  (eta:*, q:*, etakeys:*) of the served queues; suspicion (suspects) and recovery of up to 10 expired
  consumers (leases, suspects, owned:*, inflight, crashes, q:*, armed:*, wake:*; tasks, cancels and unique:*
  of a task marked cancelled); then q:<served>, owned:<consumer>, inflight, leases; idle:* and armed:* of
  the served queues (marked and armed when it takes nothing, the mark cleared when it takes work) and
  wake:* (the wake-up passed on); reads tasks, crashes, eta:* (next eta). With rate limits (``reserve_rated``,
  ``_rate_limit.lua``): rates, and eta:*, armed:*, wake:* of a queue whose tasks it defers.
- ``retry``: owned:<consumer>, inflight, crashes, tasks, q:* or eta:*, armed:*, wake:*; cancels and unique:*
  (a task marked cancelled is dropped instead, as by ``release``, ``recover_consumer``, ``dead_letter`` and
  the recovery in ``reserve``).
- ``dead_letter``: owned:<consumer>, inflight, tasks, crashes, dead, unique:* (a unique task's lock), cancels;
  result:<id> when the outcome is kept.
- ``record_outcome``: result:<id>; ``task_state`` reads inflight, tasks, eta:<queue>, result:<id>;
  ``await_outcome``: result:<id> (a waiter's mark). Every script that keeps an outcome pushes outcomewake:<id>
  when it replaces a waiter's mark.
- ``discard`` (a task that expired, or was cancelled, before it ran): owned:<consumer>, inflight, tasks,
  crashes, expired, unique:* (a unique task's lock), cancels.
- ``release``: owned:<consumer>, inflight, q:*, armed:*, wake:*; tasks, crashes, cancels, unique:* (cancelled).
- ``recover_consumer``: leases, suspects, owned:*, inflight, crashes, q:*, armed:*, wake:*; tasks, cancels,
  unique:* (cancelled).
- ``cancel``: cancels (an owned task), or q:<queue> or eta:<queue> and etakeys:<queue>, tasks, crashes,
  unique:* (a queued or waiting task).
- ``renew`` (``renew_leases``): leases, suspects; reads cancels and inflight, and forgets marks of tasks
  nobody owns.
- ``claim_cron``: cron, then as ``enqueue`` (unique:* included).
- ``requeue_dead``: dead, crashes, tasks, q:*, armed:*, wake:*, result:<id> (dropped).
- ``delete_dead``: dead; ``find_dead`` reads dead and writes nothing.
- ``purge_queue``: q:<queue>, eta:<queue>, etakeys:<queue>, tasks, crashes, unique:* (of purged unique tasks),
  rates (cursors reset).
- ``broadcast``: reads workers; tasks, q:@broadcast.<worker>, armed:*, wake:* (one copy per live worker).
- ``forget_workers`` (``forget_worker``, and ``heartbeat`` for the stale ones): workers, workerinfo,
  q:@broadcast.<worker>, tasks, crashes, and the idle:, armed: and wake: keys of that queue.

Single-command or MULTI/EXEC operations: a single runnable ``.delay()`` (HSET tasks, RPUSH q:<queue>,
LMOVE armed:<queue> to wake:<queue>), heartbeat (workers, workerinfo, and tally:<minute> when the worker
counted something), purge_dead (dead), and the read-only inspections and lookup. One pub/sub channel,
``{p}:announce``: the
``broadcast`` script PUBLISHes ``<task id> <copies>`` there for anyone watching (a dashboard, ``redis-cli
SUBSCRIBE``); no hexq process needs it. Until this version, broadcasts themselves were PUBLISHed on
``{p}:broadcast`` and relayed by each worker; nothing publishes there any more, so a worker of an older
version, still subscribed to it, never relays a second copy.
"""

from __future__ import annotations

import attrs

from hexq.core.unique import BASE_ID_LENGTH, MARK, UNIQUE_ID_LENGTH
from hexq.core.validation import check_prefix

# Keys with one name per prefix: the Lua constant that names each in the scripts -> the name after ``{p}:``.
SINGLE_KEYS: dict[str, str] = {
    "TASKS": "tasks",
    "CRASHES": "crashes",
    "INFLIGHT": "inflight",
    "LEASES": "leases",
    "SUSPECTS": "suspects",
    "DEAD": "dead",
    "CRON": "cron",
    "EXPIRED": "expired",
    "CANCELS": "cancels",
    "WORKERS": "workers",
    "WORKERINFO": "workerinfo",
    "WAKE": "wake",
    "META": "meta",
    "ANNOUNCE": "announce",
    "RATES": "rates",
}
# Keys per queue or per consumer: the Lua function that builds each -> the part between ``{p}:`` and the name.
FAMILIES: dict[str, str] = {
    "qkey": "q:",
    "etakey": "eta:",
    "dedupkey": "etakeys:",
    "ownedkey": "owned:",
    "idlekey": "idle:",
    "wakekey": "wake:",
    "armedkey": "armed:",
    "uniquekey": "unique:",
    "resultkey": "result:",
    "outcomewakekey": "outcomewake:",
    "tallykey": "tally:",
}
# The one field of {p}:inflight that is not a task id (no id starts with a NUL byte). Redis keeps a small hash as
# a listpack, whose lookups scan it: each reservation's HSET of its batch and each acknowledgement's HDEL would
# cost a scan per task, about 2 µs a task with two workers (bench/README.md). A value longer than
# hash-max-listpack-value (64 bytes unless configured otherwise) turns the hash into a hashtable, and Redis
# never turns it back while it exists: reserve writes the mark with every batch, and whatever empties the hash
# of tasks deletes it (forget_in_flight in _lib.lua), so an idle app keeps no key.
INFLIGHT_MARK = "\0hashtable"
INFLIGHT_MARK_VALUE = "keeps this hash a hashtable: a listpack's lookups scan it, a cost per task that grows with it"
# Numbers the scripts need, from where they are defined (the shape of a unique task's id).
CONSTANTS: dict[str, int] = {
    "UNIQUE_ID_LENGTH": UNIQUE_ID_LENGTH,
    "UNIQUE_MARK_AT": BASE_ID_LENGTH + 1,  # Lua counts from 1
    "UNIQUE_MARK_BYTE": ord(MARK),
}


def _lua_string(text: str) -> str:
    """ASCII text as a Lua string literal: printable characters as they are, any other byte (and the quote and
    backslash) as a three-digit decimal escape, which Lua 5.1 reads the same whatever follows it."""
    return '"' + "".join(chr(byte) if 32 <= byte < 127 and chr(byte) not in '"\\' else f"\\{byte:03d}"
                         for byte in text.encode("ascii")) + '"'


def lua_preamble() -> str:
    """Lua that defines every key name of the layout, prepended to each script (see ``scripts.py``).

    Only ``KEYS[1]`` (the tasks key) is passed in; the prefix is cut from it and every other name derived,
    because recovery touches queues and consumers nobody can name in advance."""
    tasks = SINGLE_KEYS["TASKS"]
    lines = [
        "-- Generated by hexq.adapters.redis.keys, the one place key names are written.",
        "local TASKS = KEYS[1]",
        f"local B = string.sub(TASKS, 1, -{len(tasks) + 1})",
    ]
    lines += [f"local {name} = B .. {_lua_string(suffix)}" for name, suffix in SINGLE_KEYS.items() if name != "TASKS"]
    lines += [f"local function {function}(name) return B .. {_lua_string(infix)} .. name end"
              for function, infix in FAMILIES.items()]
    lines += [f"local {name} = {value}" for name, value in CONSTANTS.items()]
    lines += [f"local INFLIGHT_MARK = {_lua_string(INFLIGHT_MARK)}",
              f"local INFLIGHT_MARK_VALUE = {_lua_string(INFLIGHT_MARK_VALUE)}"]
    return "\n".join(lines) + "\n"


@attrs.frozen
class Keys:
    """The key names of one partition: ``tag`` is the hash tag (the prefix itself for partition 0)."""

    prefix: str
    tag: str = attrs.field(default=attrs.Factory(lambda self: self.prefix, takes_self=True))

    def __attrs_post_init__(self) -> None:
        check_prefix(self.prefix)  # the rule HexQ(prefix=...) applies too: no braces to break the hash tag

    @property
    def base(self) -> str:
        return "{" + self.tag + "}:"

    @property
    def tasks(self) -> str:
        return self.base + SINGLE_KEYS["TASKS"]

    @property
    def crashes(self) -> str:
        return self.base + SINGLE_KEYS["CRASHES"]

    def queue(self, name: str) -> str:
        return self.base + FAMILIES["qkey"] + name

    def eta(self, name: str) -> str:
        return self.base + FAMILIES["etakey"] + name

    def owned(self, consumer: str) -> str:
        return self.base + FAMILIES["ownedkey"] + consumer

    @property
    def inflight(self) -> str:
        return self.base + SINGLE_KEYS["INFLIGHT"]

    @property
    def dead(self) -> str:
        return self.base + SINGLE_KEYS["DEAD"]

    @property
    def cron(self) -> str:
        return self.base + SINGLE_KEYS["CRON"]

    @property
    def cancels(self) -> str:
        return self.base + SINGLE_KEYS["CANCELS"]

    @property
    def expired(self) -> str:
        return self.base + SINGLE_KEYS["EXPIRED"]

    @property
    def leases(self) -> str:
        return self.base + SINGLE_KEYS["LEASES"]

    @property
    def suspects(self) -> str:
        return self.base + SINGLE_KEYS["SUSPECTS"]

    @property
    def workers(self) -> str:
        return self.base + SINGLE_KEYS["WORKERS"]

    @property
    def workerinfo(self) -> str:
        return self.base + SINGLE_KEYS["WORKERINFO"]

    @property
    def wake(self) -> str:
        return self.base + SINGLE_KEYS["WAKE"]

    def idle(self, queue: str) -> str:
        return self.base + FAMILIES["idlekey"] + queue

    def wake_list(self, queue: str) -> str:
        return self.base + FAMILIES["wakekey"] + queue

    def armed(self, queue: str) -> str:
        return self.base + FAMILIES["armedkey"] + queue

    def result(self, task_id: str) -> str:
        return self.base + FAMILIES["resultkey"] + task_id

    def outcome_wake(self, task_id: str) -> str:
        return self.base + FAMILIES["outcomewakekey"] + task_id

    def tally(self, minute_ms: int) -> str:
        return self.base + FAMILIES["tallykey"] + str(minute_ms)

    @property
    def meta(self) -> str:
        return self.base + SINGLE_KEYS["META"]

    @property
    def announce(self) -> str:
        return self.base + SINGLE_KEYS["ANNOUNCE"]

    def unique(self, lock: str) -> str:
        return self.base + FAMILIES["uniquekey"] + lock

    @property
    def rates(self) -> str:
        return self.base + SINGLE_KEYS["RATES"]
