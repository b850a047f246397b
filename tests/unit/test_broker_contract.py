"""The broker contract against the in-memory broker and against RedisBroker on fakeredis; and ``hexq info``'s
use of the Inspection role."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
from broker_contract import T0, BrokerContract, MakeBroker, broker_factory

from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.partitioned import PartitionedBroker
from hexq.adapters.redis.partitions import partition_tags
from hexq.core.ports import DeadLetter
from hexq.core.rules import LeaseRules
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.cli import _snapshot


def require_lupa() -> None:
    try:
        import lupa  # noqa: F401
    except ImportError:
        pytest.fail("fakeredis runs Lua scripts only with the lupa package: pip install lupa (test extra)")


def fakeredis_blmove(test: Callable[..., None]) -> Callable[..., None]:
    """A contract test that needs BLMOVE to block: fakeredis answers it at once (its BLPOP blocks). Strict, so
    that a fakeredis that blocks makes it fail and the mark is removed; real Redis runs it in
    tests/integration/test_broker_contract_redis.py."""
    @functools.wraps(test)
    def run(self: Any, *args: Any, **kwargs: Any) -> None:
        test(self, *args, **kwargs)

    return pytest.mark.xfail(strict=True, reason="fakeredis does not block on BLMOVE")(run)


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def make_broker(self) -> Iterator[MakeBroker]:
        yield from broker_factory(lambda rules: MemoryBroker(rules=rules))


class TestRedisBrokerOnFakeredis(BrokerContract):
    @pytest.fixture
    def make_broker(self) -> Iterator[MakeBroker]:
        require_lupa()
        yield from broker_factory(lambda rules: RedisBroker(
            fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True), "test", rules=rules))

    test_wait_outcome_times_out_with_none = fakeredis_blmove(BrokerContract.test_wait_outcome_times_out_with_none)
    test_every_waiter_is_woken_by_one_outcome = fakeredis_blmove(
        BrokerContract.test_every_waiter_is_woken_by_one_outcome)


class CountOnlyBroker(MemoryBroker):
    """Refuses to list dead letters, so a caller that only needs their number must use ``dead_count``."""

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        raise AssertionError(f"dead_letters(limit={limit}) fetched the letters, payloads and all, to count them")


def test_info_counts_dead_letters_without_fetching_them() -> None:
    broker = CountOnlyBroker()
    for i in range(3):
        broker.dead_letter("c1", f"d{i}", "default", "p", "r", T0 + i)
    app = HexQ(queues=["default"], url="memory://", broker=broker, clock=FakeClock())
    assert _snapshot(app)["dead"] == 3


def partitioned_on_fakeredis(count: int) -> Callable[[LeaseRules], PartitionedBroker]:
    def build(rules: LeaseRules) -> PartitionedBroker:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True)
        return PartitionedBroker([RedisBroker(client, "test", rules=rules, tag=tag)
                                  for tag in partition_tags("test", count)])
    return build


class TestOnePartitionOfAPartitionedBroker(BrokerContract):
    """The composite with one partition (what a cluster URL without ``partitions`` builds): the whole contract."""

    @pytest.fixture
    def make_broker(self) -> Iterator[MakeBroker]:
        require_lupa()
        yield from broker_factory(partitioned_on_fakeredis(1))

    test_wait_outcome_times_out_with_none = fakeredis_blmove(BrokerContract.test_wait_outcome_times_out_with_none)
    test_every_waiter_is_woken_by_one_outcome = fakeredis_blmove(
        BrokerContract.test_every_waiter_is_woken_by_one_outcome)

