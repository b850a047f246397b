"""A throwaway redis-server on a free loopback port, in a temp dir, with persistence off."""

from __future__ import annotations

import shutil
import socket
import tempfile
import time
from pathlib import Path

import redis

from bench.procs import ProcessTree


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """``with RedisServer() as server: server.url`` — started on enter, killed (with its dir) on exit."""

    def __init__(self, binary: str = "redis-server") -> None:
        self.binary = shutil.which(binary) or binary
        self.port = 0
        self.dir = ""
        self.tree: ProcessTree | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=30)

    def start(self, timeout: float = 10.0) -> RedisServer:
        if shutil.which(self.binary) is None:
            raise RuntimeError("redis-server not found on PATH (apt-get install redis-server)")
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
                    raise RuntimeError(f"redis-server did not start; see {self.dir}/redis.log") from None
                time.sleep(0.05)

    def version(self) -> str:
        return str(self.client().info("server").get("redis_version", "?"))

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
