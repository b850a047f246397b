"""Where one app's keys go when they are spread over several hash tags (``partitions=N``).

Every key of a partition shares one hash tag, so every Lua script still runs inside one slot, and a Redis
Cluster puts each partition wholly on one node. Partition 0's tag is the prefix itself, the layout of an app
with one partition, so going from 1 to N partitions moves nothing. The other tags are chosen so that the N
tags fall in N different slot ranges when the 16384 slots are cut into N equal ranges: a cluster whose slots
are split evenly over its primaries (what ``redis-cli --cluster create`` does) then gets one partition per
primary when N equals the number of primaries, and N / primaries on each when N is a multiple. The tags are a
pure function of (prefix, N): every producer and worker computes the same ones, and changing N changes them,
which is why the count is recorded and checked (``PartitionedBroker``).
"""

from __future__ import annotations

import functools

from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

MAX_PARTITIONS = 64
# A tag aims at the middle of its slot range and is accepted within this fraction of the range's width of
# it: far from the range's ends, so a cluster whose slots are split a little unevenly still sees each
# partition in its own range. A few dozen CRC16s per tag at most.
_AIM = 0.25


def slot_of_tag(tag: str) -> int:
    return int(key_slot(("{" + tag + "}").encode()))


def _range_of(slot: int, count: int) -> int:
    return slot * count // REDIS_CLUSTER_HASH_SLOTS


@functools.lru_cache(maxsize=32)
def partition_tags(prefix: str, count: int) -> tuple[str, ...]:
    """The hash tags of partitions 0 to ``count - 1``; ``('prefix',)`` for one partition."""
    if not 1 <= count <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be 1 to {MAX_PARTITIONS}, got {count}")
    width = REDIS_CLUSTER_HASH_SLOTS / count
    first = _range_of(slot_of_tag(prefix), count)
    tags = [prefix]
    for k in range(1, count):
        middle = ((first + k) % count + 0.5) * width
        salt = 0
        # '#' cannot occur in a prefix (core.validation), so no tag collides with another app's prefix.
        while abs(slot_of_tag(f"{prefix}#{k}.{salt}") + 0.5 - middle) > _AIM * width:
            salt += 1
        tags.append(f"{prefix}#{k}.{salt}")
    return tuple(tags)
