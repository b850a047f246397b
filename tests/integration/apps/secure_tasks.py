"""The app tests/integration/test_security.py runs real workers on: TLS, ACL users, signed payloads.

Configured from the environment: HEXQ_TEST_PREFIX; HEXQ_TEST_URL, or else HEXQ_TEST_PORT with
HEXQ_TEST_USERNAME and HEXQ_TEST_PASSWORD (passed as keyword arguments, not in a URL); optionally
HEXQ_TEST_CA, HEXQ_TEST_CERT, HEXQ_TEST_KEY (TLS) and HEXQ_TEST_SIGNING_KEY. Tasks report into
``{prefix}-results`` through the app's own connection settings, so an ACL user limited to ``~{prefix}*``
can write there.
"""

from __future__ import annotations

import os

import redis

from hexq import HexQ

env = os.environ.get
PREFIX = env("HEXQ_TEST_PREFIX", "hexqsecure")
RESULTS = f"{{{PREFIX}}}-results"

app = HexQ(
    url=env("HEXQ_TEST_URL"),
    host="127.0.0.1",
    port=int(env("HEXQ_TEST_PORT", "6379")),
    username=env("HEXQ_TEST_USERNAME"),
    password=env("HEXQ_TEST_PASSWORD"),
    ssl_ca_certs=env("HEXQ_TEST_CA"),
    ssl_certfile=env("HEXQ_TEST_CERT"),
    ssl_keyfile=env("HEXQ_TEST_KEY"),
    signing_key=env("HEXQ_TEST_SIGNING_KEY"),
    prefix=PREFIX,
    concurrency=1,
    lease_timeout=3,
    shutdown_timeout=10,
)

_client: redis.Redis | None = None


def client() -> redis.Redis:
    global _client
    if _client is None or _client.connection_pool.pid != os.getpid():  # type: ignore[attr-defined]
        connection = app.connection
        tls = {"ssl_ca_certs": connection.ssl_ca_certs, "ssl_certfile": connection.ssl_certfile,
               "ssl_keyfile": connection.ssl_keyfile} if connection.scheme == "rediss" else {}
        _client = redis.Redis.from_url(connection.url, **tls)
    return _client


@app.task
def record(tag: str) -> None:
    client().rpush(RESULTS, tag)
