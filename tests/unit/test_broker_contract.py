"""The broker contract against the in-memory broker and against RedisBroker on fakeredis."""

from __future__ import annotations

from collections.abc import Iterator

import fakeredis
import pytest
from broker_contract import BrokerContract

from hexq.adapters.memory import MemoryBroker
from hexq.adapters.redis.broker import RedisBroker
from hexq.core.ports import Broker


def require_lupa() -> None:
    try:
        import lupa  # noqa: F401
    except ImportError:
        pytest.fail("fakeredis runs Lua scripts only with the lupa package: pip install lupa (test extra)")


class TestMemoryBroker(BrokerContract):
    @pytest.fixture
    def broker(self) -> Iterator[Broker]:
        broker = MemoryBroker()
        yield broker
        broker.close()


class TestRedisBrokerOnFakeredis(BrokerContract):
    @pytest.fixture
    def broker(self) -> Iterator[Broker]:
        require_lupa()
        broker = RedisBroker(fakeredis.FakeRedis(server=fakeredis.FakeServer(), decode_responses=True), "test")
        yield broker
        broker.close()
