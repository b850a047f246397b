"""Cluster URLs and MOVED/ASK detection, without a server (the real cluster is in tests/integration)."""

from __future__ import annotations

import pytest
import redis.exceptions as rx

from hexq.adapters.redis.cluster_settings import ClusterSettings, ClusterTarget
from hexq.adapters.redis.errors import is_redirect
from hexq.core.errors import ConfigError
from hexq.entrypoints.app import HexQ


def test_a_cluster_url_names_its_startup_nodes_and_credentials() -> None:
    settings = ClusterSettings("rediss+cluster://app:s3cret@10.0.0.1:7000,10.0.0.2,[::1]:7002?wait_replicas=1")
    assert settings.target == ClusterTarget((("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)), "app",
                                            "s3cret", tls=True)
    assert settings.wait_replicas == 1
    assert "s3cret" not in repr(settings) and "***" in settings.redacted


@pytest.mark.parametrize(("url", "says"), [
    ("redis+cluster://", "names no node"),
    ("redis+cluster://h:0", "bad port '0'"),
    ("redis+cluster://h:1/3", "only database 0"),
    ("redis+cluster://h:1?socket_timeout=3", "unknown option"),
])
def test_a_bad_cluster_url_is_refused_naming_the_part(url: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        ClusterSettings(url)


def test_partitions_need_redis() -> None:
    assert HexQ(url="redis+cluster://h:1", partitions=3).partitions == 3
    with pytest.raises(ConfigError, match="one store, so leave partitions at 1"):
        HexQ(url="sqlite:///tmp/x.db", partitions=2)
    with pytest.raises(ConfigError, match="partitions must be"):
        HexQ(url="redis://h:1", partitions=0)


def test_moved_and_ask_are_recognised_in_every_redis_py_form() -> None:
    assert is_redirect(rx.ResponseError("MOVED 3999 127.0.0.1:7001"))  # redis-py 5
    assert is_redirect(rx.ResponseError("ASK 3999 127.0.0.1:7001"))
    assert is_redirect(rx.MovedError("3999 127.0.0.1:7001"))  # redis-py >= 6
    assert not is_redirect(rx.ResponseError("ERR wrong number of arguments"))
    assert not is_redirect(rx.ConnectionError("MOVED"))
