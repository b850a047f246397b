"""``redis+sentinel://`` URLs and the durable-enqueue options: parsing, what is refused, redaction, and the
clients built from them (without connecting: every address here is unroutable or closed)."""

from __future__ import annotations

from typing import Any

import pytest
import redis
import redis.exceptions as rx
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool, SentinelManagedSSLConnection

from hexq import HexQ
from hexq.adapters.redis.broker import RedisBroker
from hexq.adapters.redis.client import SENTINEL_TIMEOUT, HexqSentinel, blocking_twin, bytes_twin, clients_for, describe
from hexq.adapters.redis.errors import (
    NotReplicatedError,
    ServiceNotMonitored,
    UnknownSentinelServiceError,
    translate,
)
from hexq.adapters.redis.sentinel_settings import SentinelSettings, SentinelTarget, parse_sentinel_url
from hexq.adapters.redis.settings import RedisSettings, redacted_url
from hexq.core.errors import BrokerAuthError, BrokerUnavailableError, ConfigError
from hexq.entrypoints import bootstrap
from hexq.entrypoints.settings import build_connection

SECRET = "s3cr3t-Pa55"
SENTINEL_SECRET = "sentinel-Pa55"


# -- the grammar --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "expected"), [
    ("redis+sentinel://10.0.0.1:26379/mymaster",
     SentinelTarget((("10.0.0.1", 26379),), "mymaster")),
    ("redis+sentinel://a:1,b:2,c/mymaster/3",
     SentinelTarget((("a", 1), ("b", 2), ("c", 26379)), "mymaster", 3)),
    ("redis+sentinel://[::1]:5000,[fe80::1]/svc/",
     SentinelTarget((("::1", 5000), ("fe80::1", 26379)), "svc")),
    ("rediss+sentinel://app:pw@h:1/my%20service/2",
     SentinelTarget((("h", 1),), "my service", 2, "app", "pw", tls=True)),
    ("redis+sentinel://:pw@h:1/svc?sentinel_password=spw&sentinel_username=watch",
     SentinelTarget((("h", 1),), "svc", 0, None, "pw", "watch", "spw")),
    ("redis+sentinel://app@h:1/svc", SentinelTarget((("h", 1),), "svc", 0, "app", None)),
])
def test_sentinel_urls_are_parsed(url: str, expected: SentinelTarget) -> None:
    target = parse_sentinel_url(url)
    assert target == expected
    # The credentials are compared too, though they are kept out of the repr.
    assert (target.username, target.password, target.sentinel_username, target.sentinel_password) == (
        expected.username, expected.password, expected.sentinel_username, expected.sentinel_password)
    assert "pw" not in repr(target)


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://h:26379", "names no Sentinel service"),
    ("redis+sentinel://h:26379/", "names no Sentinel service"),
    ("redis+sentinel://h1:1,h2:2", "names no Sentinel service"),
    ("redis+sentinel:///svc", "names no sentinel"),
    ("redis+sentinel://,/svc", "names no sentinel"),
    ("redis+sentinel://h:notaport/svc", "bad sentinel port 'notaport'"),
    ("redis+sentinel://h:0/svc", "bad sentinel port '0'"),
    ("redis+sentinel://h:70000/svc", "bad sentinel port '70000'"),
    ("redis+sentinel://:1/svc", "empty sentinel host"),
    ("redis+sentinel://[::1/svc", "malformed broker URL: Invalid IPv6 URL"),
    ("redis+sentinel://[::1]x/svc", "bad sentinel address '[::1]x'"),
    ("redis+sentinel://h/svc/zero", "must be a whole number, got 'zero'"),
    ("redis+sentinel://h/svc/1/extra", "too many path segments"),
    ("redis+sentinel://h/svc?socket_timeout=3", "unknown option(s) 'socket_timeout'"),
    ("redis+sentinel://h/svc?wait_replicas=one", "wait_replicas in the broker URL must be a whole number"),
    ("redis+sentinel://h/svc?wait_replicas=-1", "wait_replicas must be an int from 0 to 100, got -1"),
    ("redis+sentinel://h/svc?wait_replicas=1&wait_timeout_ms=0", "wait_timeout_ms must be an int from 1"),
])
def test_bad_sentinel_urls_are_config_errors(url: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        HexQ(url=url)
    assert message in str(caught.value)


def test_a_missing_service_name_says_how_to_write_one_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        HexQ(url=f"redis+sentinel://app:{SECRET}@h1:1,h2:2?sentinel_password={SENTINEL_SECRET}")
    message = str(caught.value)
    assert "redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]" in message
    assert SECRET not in message and SENTINEL_SECRET not in message and "app:***@h1:1,h2:2" in message


def test_hexq_builds_sentinel_settings_and_the_scheme_narrows() -> None:
    app = HexQ(url="rediss+sentinel://h1:1,h2:2/svc/4", socket_timeout=3, ssl_ca_certs="/ca.pem")
    connection = app.connection
    assert isinstance(connection, SentinelSettings)
    assert connection.scheme == "rediss+sentinel"
    assert (connection.socket_timeout, connection.ssl_ca_certs) == (3, "/ca.pem")
    assert connection.target.sentinels == (("h1", 1), ("h2", 2)) and connection.target.db == 4
    assert build_connection("redis+sentinel://h/svc", "localhost", 6379, 0, None, None).scheme == "redis+sentinel"


def test_username_and_password_keywords_are_the_data_nodes_credentials() -> None:
    connection = HexQ(url="redis+sentinel://h1:1,h2:2/svc", username="app", password=SECRET).connection
    assert isinstance(connection, SentinelSettings)
    assert (connection.target.username, connection.target.password) == ("app", SECRET)
    assert connection.target.sentinel_password is None
    with pytest.raises(ConfigError, match="credentials given twice"):
        HexQ(url="redis+sentinel://u:p@h/svc", password=SECRET)


def test_passwords_never_appear_in_redacted_forms() -> None:
    url = f"redis+sentinel://app:{SECRET}@h1:1,[::1]:2/svc/1?sentinel_password={SENTINEL_SECRET}&wait_replicas=1"
    app = HexQ(url=url)
    expected = "redis+sentinel://app:***@h1:1,[::1]:2/svc/1?sentinel_password=***&wait_replicas=1"
    assert app.connection.redacted == expected == redacted_url(url)
    for text in (repr(app), str(app.connection), repr(app.connection), repr(app.connection.target)):  # type: ignore[union-attr]
        assert SECRET not in text and SENTINEL_SECRET not in text
    assert repr(app.connection) == (f"SentinelSettings({expected!r}, socket_timeout=15.0, socket_connect_timeout=5.0, "
                                    "wait_replicas=1, wait_timeout_ms=1000)")


def test_sentinel_settings_refuse_other_schemes() -> None:
    with pytest.raises(ConfigError, match="unsupported Sentinel URL scheme 'redis'"):
        SentinelSettings("redis://h/0")
    with pytest.raises(ConfigError, match="unsupported Redis URL scheme 'redis\\+sentinel'"):
        RedisSettings("redis+sentinel://h/svc")


def test_unknown_broker_schemes_list_the_sentinel_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        HexQ(url="sentinel://h/svc")
    assert "redis+sentinel://" in str(caught.value) and "rediss+sentinel://" in str(caught.value)


# -- durable enqueue options ----------------------------------------------------------------------------------
def test_wait_options_come_from_the_url_and_are_hidden_from_redis_py() -> None:
    settings = HexQ(url="redis://h:6379/2?wait_replicas=2&wait_timeout_ms=250&socket_keepalive=true").connection
    assert isinstance(settings, RedisSettings)
    assert (settings.wait_replicas, settings.wait_timeout_ms) == (2, 250)
    assert settings.client_url == "redis://h:6379/2?socket_keepalive=true"
    assert RedisSettings("unix:///run/redis.sock?db=2&wait_replicas=1").client_url == "unix:///run/redis.sock?db=2"
    assert RedisSettings("redis://h/0").wait_replicas == 0  # off by default
    assert RedisSettings("redis://h/0?wait_replicas=1", wait_replicas=3).wait_replicas == 3  # the keyword wins
    assert "wait_replicas" not in repr(RedisSettings("redis://h/0"))
    assert repr(RedisSettings("redis://h/0?wait_replicas=1")).endswith("wait_replicas=1, wait_timeout_ms=1000)")


def test_wait_timeout_must_be_below_the_socket_timeout() -> None:
    with pytest.raises(ConfigError, match=r"wait_timeout_ms \(3000\) must be below socket_timeout \(2 s\)"):
        HexQ(url="redis://h/0?wait_replicas=1&wait_timeout_ms=3000", socket_timeout=2)
    assert HexQ(url="redis://h/0?wait_replicas=1&wait_timeout_ms=3000", socket_timeout=None).connection


def test_the_broker_gets_the_wait_settings() -> None:
    for url in ("redis://10.255.255.1:6390/0?wait_replicas=1&wait_timeout_ms=400",
                "redis+sentinel://10.255.255.1:1/svc?wait_replicas=1&wait_timeout_ms=400"):
        broker = bootstrap.make_broker(HexQ(url=url))
        assert isinstance(broker, RedisBroker)
        assert (broker._wait_replicas, broker._wait_timeout_ms) == (1, 400)
        broker.close()


def test_not_replicated_error_says_the_task_is_stored() -> None:
    error = NotReplicatedError(["a", "b", "c", "d"], 2, 1, 500, "redis+sentinel://h:1/svc")
    assert isinstance(error, TimeoutError) and not isinstance(error, BrokerUnavailableError)
    assert str(error) == (
        "task a, b, c and 1 more was stored by the primary at redis+sentinel://h:1/svc but reached only 1 of the 2 "
        "replica(s) asked for (wait_replicas) within 500 ms: it is queued and will probably run, but a failover now "
        "could lose it; enqueueing it again may run it twice")


# -- the clients ------------------------------------------------------------------------------------------------
def kwargs_of(client: Any) -> dict[str, Any]:
    return dict(client.connection_pool.connection_kwargs)


def test_sentinel_clients_ask_the_sentinels_with_their_own_credentials() -> None:
    settings = SentinelSettings(f"redis+sentinel://app:{SECRET}@10.255.255.1:1,10.255.255.2:2/svc/3"
                                f"?sentinel_password={SENTINEL_SECRET}", socket_timeout=4.0,
                                socket_connect_timeout=2.0)
    client, blocking = clients_for(settings)
    for one in (client, blocking):
        pool = one.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "svc" and pool.is_master
        kwargs = kwargs_of(one)
        assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (3, "app", SECRET)
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (4.0, 2.0)  # a backstop on both
        assert kwargs["decode_responses"] is True
    manager = client.connection_pool.sentinel_manager
    assert isinstance(manager, HexqSentinel)
    assert manager is blocking.connection_pool.sentinel_manager
    addresses = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                 for s in manager.sentinels]
    assert addresses == [("10.255.255.1", 1), ("10.255.255.2", 2)]
    sentinel_kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert sentinel_kwargs["password"] == SENTINEL_SECRET and sentinel_kwargs.get("username") is None
    assert sentinel_kwargs["socket_timeout"] == sentinel_kwargs["socket_connect_timeout"] == SENTINEL_TIMEOUT
    assert describe(client) == "redis+sentinel://10.255.255.1:1,10.255.255.2:2/svc/3"
    for one in (client, blocking):
        one.close()


def test_sentinel_over_tls_uses_tls_to_the_sentinels_and_the_data_nodes() -> None:
    settings = SentinelSettings("rediss+sentinel://10.255.255.1:1/svc", ssl_ca_certs="/ca.pem",
                                ssl_certfile="/c.pem", ssl_keyfile="/k.pem")
    client, _ = clients_for(settings)
    assert client.connection_pool.connection_class is SentinelManagedSSLConnection
    assert kwargs_of(client)["ssl_ca_certs"] == "/ca.pem"
    sentinel = client.connection_pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_class is redis.SSLConnection
    assert sentinel.connection_pool.connection_kwargs["ssl_certfile"] == "/c.pem"


def test_twins_of_a_sentinel_client_follow_the_same_service() -> None:
    client, _ = clients_for(SentinelSettings("redis+sentinel://10.255.255.1:1/svc/2"))
    for twin in (bytes_twin(client), blocking_twin(client)):
        pool = twin.connection_pool
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "svc" and pool.sentinel_manager is client.connection_pool.sentinel_manager
        assert pool.connection_kwargs["connection_pool"] is pool.proxy  # its own proxy, not the original's
        assert pool.connection_kwargs["db"] == 2
    assert bytes_twin(client).connection_pool.connection_kwargs["decode_responses"] is False
    assert blocking_twin(client).connection_pool.connection_kwargs["socket_timeout"] is None


def test_plain_redis_clients_are_unchanged_by_the_wait_options() -> None:
    client, blocking = clients_for(RedisSettings("redis://:pw@10.255.255.1:6390/3?wait_replicas=1"))
    assert type(client.connection_pool) is redis.ConnectionPool
    assert (kwargs_of(client)["port"], kwargs_of(client)["db"]) == (6390, 3)
    assert "wait_replicas" not in kwargs_of(client) and kwargs_of(blocking)["socket_timeout"] is None


# -- what the sentinels say, explained ----------------------------------------------------------------------
class FakeSentinelNode:
    def __init__(self, port: int, answer: Any) -> None:
        self.connection_pool = redis.ConnectionPool(host="10.0.0.9", port=port)
        self.answer = answer

    def sentinel_masters(self) -> Any:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def explained(*nodes: FakeSentinelNode) -> BaseException:
    manager = HexqSentinel([])
    manager.sentinels = list(nodes)
    with pytest.raises(MasterNotFoundError) as caught:
        manager.discover_master("svc")
    return caught.value


def test_a_service_no_sentinel_monitors_is_named() -> None:
    error = explained(FakeSentinelNode(1, rx.ConnectionError("down")), FakeSentinelNode(2, {"other": {}}))
    assert isinstance(error, ServiceNotMonitored) and error.known == ["other"]
    mapped = translate(error, "redis+sentinel://10.0.0.9:1,10.0.0.9:2/svc")
    assert isinstance(mapped, UnknownSentinelServiceError)
    assert str(mapped) == (
        "no Sentinel at redis+sentinel://10.0.0.9:1,10.0.0.9:2/svc monitors a service named 'svc' "
        "(they monitor: 'other'); check the service name after the hosts in the redis+sentinel:// URL")


def test_a_known_service_without_a_primary_is_a_failover_in_progress() -> None:
    down = {"svc": {"is_master": True, "is_sdown": False, "is_odown": True, "num-other-sentinels": 2,
                    "ip": "10.0.0.1", "port": 6379}}
    error = explained(FakeSentinelNode(1, down))
    assert not isinstance(error, ServiceNotMonitored)
    mapped = translate(error, "redis+sentinel://10.0.0.9:1/svc")
    assert isinstance(mapped, BrokerUnavailableError)
    assert "a failover is under way" in str(mapped)


def test_unreachable_sentinels_are_listed() -> None:
    error = explained(FakeSentinelNode(1, rx.ConnectionError("refused")), FakeSentinelNode(2, rx.TimeoutError("slow")))
    assert str(error) == "no sentinel answered: 10.0.0.9:1 (ConnectionError), 10.0.0.9:2 (TimeoutError)"
    assert isinstance(translate(error, "x"), BrokerUnavailableError)


def test_sentinels_refusing_our_credentials_are_an_auth_error() -> None:
    refused = rx.AuthenticationError("invalid username-password pair")
    error_raised: BaseException | None = None
    manager = HexqSentinel([])
    manager.sentinels = [FakeSentinelNode(1, refused)]
    try:
        manager.discover_master("svc")
    except rx.RedisError as exc:
        error_raised = exc
    assert error_raised is refused
    assert isinstance(translate(refused, "x"), BrokerAuthError)


def test_the_wait_timeout_is_not_checked_when_durable_enqueue_is_off() -> None:
    assert RedisSettings("redis://h/0", socket_timeout=0.3).wait_timeout_ms == 1000
