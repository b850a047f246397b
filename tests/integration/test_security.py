"""TLS, ACL users and signed payloads against real redis-servers and real worker processes.

Secrets must never leak: every test that uses a password greps the worker's log, ``hexq info`` (text and
JSON), ``repr(app)`` and the exceptions raised for it.

Redis only (``redis_only``): TLS, ACL users and passwords are Redis's (an sqlite: URL refuses a username or
password: a file is protected by its permissions), and the secure app's tasks report through the app's own
Redis connection so an ACL user limited to its prefix can write there. Signed payloads on every broker,
forged and unsigned entries included, are tests/integration/test_bad_inputs.py's
``test_forged_or_unsigned_payload_with_a_signing_key``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import redis
from redis_server import RedisServer
from tls import Pki, TlsRedisServer, make_pki
from workers import ROOT, Proc, wait_for

from hexq.core.errors import BrokerAuthError, BrokerUnavailableError
from hexq.core.message import Codec

pytestmark = [pytest.mark.integration, pytest.mark.redis_only]

APP = "tests.integration.apps.secure_tasks:app"
MODULE = "tests.integration.apps.secure_tasks"
SECURE_ENV = ("HEXQ_TEST_URL", "HEXQ_TEST_PORT", "HEXQ_TEST_PREFIX", "HEXQ_TEST_USERNAME", "HEXQ_TEST_PASSWORD",
              "HEXQ_TEST_CA", "HEXQ_TEST_CERT", "HEXQ_TEST_KEY", "HEXQ_TEST_SIGNING_KEY")
# Characters that need quoting in a URL, so a leak of the quoted form is caught too.
PASSWORD = "Hx-s3cret:p@ss/w%rd"
SECRETS = (PASSWORD, quote(PASSWORD, safe=""))


@contextmanager
def secure_app(**env: str) -> Iterator[Any]:
    """The secure test app imported in this process with exactly these settings."""
    old = {k: os.environ.get(k) for k in SECURE_ENV}
    for key in SECURE_ENV:
        os.environ.pop(key, None)
    os.environ.update(env)
    sys.modules.pop(MODULE, None)
    try:
        import tests.integration.apps.secure_tasks as module

        yield module
    finally:
        sys.modules.pop(MODULE, None)
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class SecureCluster:
    """Worker processes of the secure app; ``admin`` reads what they did (results, heartbeats)."""

    def __init__(self, tmp: Path, prefix: str, admin: redis.Redis, env: dict[str, str]) -> None:  # type: ignore[type-arg]
        self.tmp = tmp
        self.prefix = prefix
        self.admin = admin
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", HEXQ_TEST_PREFIX=prefix, **env)
        for key in SECURE_ENV:
            if key not in env and key != "HEXQ_TEST_PREFIX":
                self.env.pop(key, None)
        self.procs: list[Proc] = []

    def worker(self, *args: str, wait: bool = True) -> Proc:
        proc = Proc(["worker", f"--app={APP}", "--log-level=DEBUG", *args], self.env,
                    self.tmp / f"worker-{len(self.procs)}.log")
        self.procs.append(proc)
        if wait:
            wait_for(lambda: self.admin.zcard(f"{{{self.prefix}}}:workers") > 0, 20,
                     f"worker to start:\n{proc.output()}")
        return proc

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", *args, f"--app={APP}"], cwd=ROOT,
                              env=self.env, capture_output=True, text=True, timeout=60)

    def tags(self) -> list[str]:
        return list(self.admin.lrange(f"{{{self.prefix}}}-results", 0, -1))

    def wait_for_tag(self, tag: str, timeout: float = 20) -> None:
        wait_for(lambda: tag in self.tags(), timeout, f"task {tag!r} to run, got {self.tags()}\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(f"--- {p.log.name}\n{p.output()[-4000:]}" for p in self.procs)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill_group()
        self.admin.close()


def assert_no_secret(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"the password leaked into {where}:\n{text}"


def full_text(exc: BaseException) -> str:
    """The message and the whole chained traceback, as a log would print it."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


@pytest.fixture
def clusters(tmp_path: Path) -> Iterator[Callable[..., SecureCluster]]:
    made: list[SecureCluster] = []

    def make(prefix: str, admin: redis.Redis, **env: str) -> SecureCluster:  # type: ignore[type-arg]
        cluster = SecureCluster(tmp_path, prefix, admin, env)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.close()


# -- TLS -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_servers(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., TlsRedisServer]]:
    started: list[TlsRedisServer] = []

    def start(auth_clients: str = "yes") -> TlsRedisServer:
        server = TlsRedisServer(tmp_path / f"tls-redis-{len(started)}", pki, auth_clients=auth_clients)
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


def tls_env(server: TlsRedisServer) -> dict[str, str]:
    names = {"ssl_ca_certs": "HEXQ_TEST_CA", "ssl_certfile": "HEXQ_TEST_CERT", "ssl_keyfile": "HEXQ_TEST_KEY"}
    return {"HEXQ_TEST_URL": server.url, **{names[k]: v for k, v in server.ssl_options.items()}}


@pytest.mark.parametrize("auth_clients", ["yes", "no"], ids=["client-certificate", "server-only"])
def test_tls_producer_and_worker(tls_servers: Callable[..., TlsRedisServer], clusters: Callable[..., SecureCluster],
                                 hexq_prefix: str, auth_clients: str) -> None:
    server = tls_servers(auth_clients)
    env = tls_env(server)
    assert ("HEXQ_TEST_CERT" in env) == (auth_clients == "yes")
    cluster = clusters(hexq_prefix, server.client(), **env)
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, **env) as secure:
        assert secure.app.connection.scheme == "rediss"
        secure.record.delay("before-worker")
        cluster.worker()
        cluster.wait_for_tag("before-worker")
        secure.record.delay("while-running")
        cluster.wait_for_tag("while-running")
    info = cluster.cli("info", "--json")
    assert info.returncode == 0, info.stderr
    assert f"rediss://127.0.0.1:{server.tls_port}/0" in info.stdout
    assert '"workers"' in info.stdout


def test_tls_refuses_a_server_signed_by_another_ca(tls_servers: Callable[..., TlsRedisServer], pki: Pki,
                                                    clusters: Callable[..., SecureCluster], hexq_prefix: str) -> None:
    server = tls_servers("yes")
    env = {**tls_env(server), "HEXQ_TEST_CA": str(pki.other_ca)}
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, **env) as secure, \
            pytest.raises(BrokerUnavailableError) as caught:
        secure.record.delay("never")
    message = str(caught.value)
    assert "certificate verify failed" in message, message
    assert f"rediss://127.0.0.1:{server.tls_port}/0" in message
    info = clusters(hexq_prefix, server.client(), **env).cli("info")
    assert info.returncode == 1
    assert "broker unavailable" in info.stderr and "certificate verify failed" in info.stderr, info.stderr
    assert "Traceback" not in info.stderr


def test_tls_server_demanding_a_client_certificate_refuses_a_client_without_one(
        tls_servers: Callable[..., TlsRedisServer], pki: Pki, hexq_prefix: str) -> None:
    server = tls_servers("yes")
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=server.url, HEXQ_TEST_CA=str(pki.ca)) as secure, \
            pytest.raises(BrokerUnavailableError):
        secure.record.delay("never")
    # Plain TCP to the TLS port is refused too, rather than hanging.
    plain = server.url.replace("rediss://", "redis://")
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=plain) as secure, \
            pytest.raises(BrokerUnavailableError):
        secure.record.delay("never")
    assert server.client().llen(f"{{{hexq_prefix}}}-results") == 0


# -- ACL users ---------------------------------------------------------------------------------------------
ADMIN_PASSWORD = "admin-only-password"


@pytest.fixture
def acl_server(private_redis: Callable[..., RedisServer]) -> RedisServer:
    return private_redis(password=ADMIN_PASSWORD)


def set_user(server: RedisServer, name: str, *rules: str) -> None:
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", name, "reset", "on", f">{PASSWORD}", *rules)
    finally:
        admin.close()


def hexq_user_rules(prefix: str) -> list[str]:
    """The least hexq needs, producer and worker alike: its own keys; reading, writing, scripts and MULTI;
    PUBLISH on its own channels only (a broadcast's announcement), no SUBSCRIBE; and nothing that Redis calls
    dangerous (KEYS, FLUSHALL, CONFIG...)."""
    return [f"~{{{prefix}}}*", "resetchannels", f"&{{{prefix}}}*", "-@all", "+@read", "+@write", "+@scripting",
            "+@connection", "+@transaction", "+publish", "-@dangerous"]


def assert_clean_outputs(cluster: SecureCluster, app: Any, worker: Proc) -> None:
    assert_no_secret(repr(app), "repr(app)")
    assert_no_secret(repr(app.connection), "repr(app.connection)")
    for args in (("info",), ("info", "--json")):
        result = cluster.cli(*args)
        assert result.returncode == 0, result.stderr
        assert_no_secret(result.stdout + result.stderr, f"hexq {' '.join(args)}")
        assert "***" in result.stdout or "hexq@" in result.stdout
    assert_no_secret(worker.output(), "the worker log")


def test_acl_user_in_the_url(acl_server: RedisServer, clusters: Callable[..., SecureCluster],
                             hexq_prefix: str) -> None:
    set_user(acl_server, "hexq", *hexq_user_rules(hexq_prefix))
    url = f"redis://hexq:{quote(PASSWORD, safe='')}@127.0.0.1:{acl_server.port}/0"
    cluster = clusters(hexq_prefix, acl_server.client(), HEXQ_TEST_URL=url)
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=url) as secure:
        worker = cluster.worker()
        secure.record.delay("acl-url")
        cluster.wait_for_tag("acl-url")
        assert secure.record.broadcast("acl-broadcast") == 1
        cluster.wait_for_tag("acl-broadcast")
        assert_clean_outputs(cluster, secure.app, worker)
    # Every chore of a worker, to its clean exit, works within the user's rights.
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output()
    assert cluster.admin.zcard(f"{{{hexq_prefix}}}:workers") == 0
    for sign_of_trouble in ("refused", "failed", "could not", "permission"):
        assert sign_of_trouble not in worker.output(), worker.output()


def test_acl_user_as_username_and_password(acl_server: RedisServer, clusters: Callable[..., SecureCluster],
                                           hexq_prefix: str) -> None:
    set_user(acl_server, "hexq", *hexq_user_rules(hexq_prefix))
    env = {"HEXQ_TEST_PORT": str(acl_server.port), "HEXQ_TEST_USERNAME": "hexq", "HEXQ_TEST_PASSWORD": PASSWORD}
    cluster = clusters(hexq_prefix, acl_server.client(), **env)
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, **env) as secure:
        worker = cluster.worker()
        secure.record.delay("acl-kwargs")
        cluster.wait_for_tag("acl-kwargs")
        assert_clean_outputs(cluster, secure.app, worker)


@pytest.mark.parametrize("rules", [
    pytest.param(["~elsewhere:*", "&*", "+@all"], id="other-keys"),
    pytest.param(["~{PREFIX}*", "&*", "+@all", "-evalsha", "-eval"], id="no-scripts"),
])
def test_acl_user_without_permission_gets_a_clear_auth_error(acl_server: RedisServer, hexq_prefix: str,
                                                             clusters: Callable[..., SecureCluster],
                                                             rules: list[str]) -> None:
    set_user(acl_server, "limited", *[r.replace("{PREFIX}", "{" + hexq_prefix + "}") for r in rules])
    env = {"HEXQ_TEST_PORT": str(acl_server.port), "HEXQ_TEST_USERNAME": "limited",
           "HEXQ_TEST_PASSWORD": PASSWORD}
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, **env) as secure:
        with pytest.raises(BrokerAuthError) as caught:
            if "-eval" in rules:  # a single .delay() is a MULTI of plain commands, which this user may send
                secure.record.delay_many([("never",), ("never",)])  # a batch goes through a script
            else:
                secure.record.delay("never")
        assert_no_secret(full_text(caught.value), "the exception")
        assert_no_secret(repr(secure.app), "repr(app)")
    # redis-py drops the NOPERM code from its NoPermissionError; Redis' own text remains.
    assert isinstance(caught.value.__cause__, redis.exceptions.NoPermissionError)
    message = str(caught.value)
    # Redis says "no permissions to access one of the keys", Valkey "No permissions to access a key".
    assert "no permissions" in message.lower() and "ACL user" in message, message
    assert f"127.0.0.1:{acl_server.port}" in message
    cluster = clusters(hexq_prefix, acl_server.client(), **env)
    info = cluster.cli("info", "--json")
    assert_no_secret(info.stdout + info.stderr, "hexq info --json")
    if "-eval" not in rules:  # a user without scripts may still read: info works for it
        assert info.returncode == 1, info.stdout
        assert "BrokerAuthError" in info.stderr and "no permissions" in info.stderr.lower(), info.stderr
    worker = cluster.worker(wait=False)
    wait_for(lambda: "no permissions" in worker.output().lower(), 20, f"the worker to report it:\n{worker.output()}")
    assert_no_secret(worker.output(), "the worker log")


def test_wrong_password_is_an_auth_error_that_does_not_echo_it(acl_server: RedisServer, hexq_prefix: str,
                                                               clusters: Callable[..., SecureCluster]) -> None:
    set_user(acl_server, "hexq", *hexq_user_rules(hexq_prefix))
    wrong = "Wr0ng-" + PASSWORD
    env = {"HEXQ_TEST_PORT": str(acl_server.port), "HEXQ_TEST_USERNAME": "hexq", "HEXQ_TEST_PASSWORD": wrong}
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, **env) as secure, pytest.raises(BrokerAuthError) as caught:
        secure.record.delay("never")
    text = full_text(caught.value)
    assert wrong not in text and quote(wrong, safe="") not in text, text
    assert "invalid username-password pair" in str(caught.value)
    cluster = clusters(hexq_prefix, acl_server.client(), **env)
    result = cluster.cli("info")
    assert result.returncode == 1 and "BrokerAuthError" in result.stderr, result.stderr
    worker = cluster.worker(wait=False)
    wait_for(lambda: "invalid username-password" in worker.output(), 20, f"the worker to report it:\n{worker.output()}")
    for text, where in ((result.stderr, "hexq info"), (worker.output(), "the worker log")):
        assert wrong not in text and quote(wrong, safe="") not in text, f"the password leaked into {where}"


# -- signed payloads ---------------------------------------------------------------------------------------
SIGNING_KEY = "a-signing-key-of-32-characters!!"


def test_signed_tasks_run_and_forged_ones_are_dead_lettered_unrun(redis_url: str, hexq_prefix: str,
                                                                  clusters: Callable[..., SecureCluster]) -> None:
    cluster = clusters(hexq_prefix, redis.Redis.from_url(redis_url, decode_responses=True),
                       HEXQ_TEST_URL=redis_url, HEXQ_TEST_SIGNING_KEY=SIGNING_KEY)
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=redis_url) as unsigned:
        forged_ids = [unsigned.record.delay("forged-unsigned")]
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=redis_url,
                    HEXQ_TEST_SIGNING_KEY="another-key-that-is-long-enough") as other:
        forged_ids.append(other.record.delay("forged-other-key"))
    with secure_app(HEXQ_TEST_PREFIX=hexq_prefix, HEXQ_TEST_URL=redis_url, HEXQ_TEST_SIGNING_KEY=SIGNING_KEY) as app:
        # Written straight into Redis, hexq's layout imitated: a valid envelope under a made-up signature.
        body = Codec().encode_fields("forged-raw-id", "record", "default", ["forged-raw"], {})
        raw = json.dumps({"sig": "0" * 64, "body": body})
        cluster.admin.hset(f"{{{hexq_prefix}}}:tasks", "forged-raw-id", raw)
        cluster.admin.rpush(f"{{{hexq_prefix}}}:q:default", "forged-raw-id")
        forged_ids.append("forged-raw-id")
        signed_id = app.record.delay("signed")
        cluster.worker()
        cluster.wait_for_tag("signed")
        app.record.delay("signed-later")
        cluster.wait_for_tag("signed-later")
        letters = app.app.broker.dead_letters()
    assert all(not tag.startswith("forged") for tag in cluster.tags()), cluster.tags()
    assert sorted(d.id for d in letters) == sorted(forged_ids), letters
    assert signed_id not in {d.id for d in letters}
    reasons = sorted(letter.reason for letter in letters)
    assert all("signature" in reason.lower() for reason in reasons), reasons
    assert any("not signed" in reason for reason in reasons), reasons
    assert sum("does not match" in reason for reason in reasons) == 2, reasons
