"""A real ``redis-server`` for integration tests: started on a free loopback port in a temporary
directory, restartable on the same port and directory to simulate outages."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

import redis

INSTALL_HINT = (
    "redis-server is not on PATH: the integration tests need a real Redis. Install the Debian package "
    "redis-server (sudo apt-get install redis-server), or set REDIS_URL to a server you may write to."
)


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process. ``start()`` after ``stop()`` restarts it on the same port and directory
    (with ``--save ""`` the data does not survive: a restart looks like a failover to an empty node)."""

    def __init__(self, directory: Path, *, port: int | None = None, args: Sequence[str] = (),
                 password: str | None = None, unix_socket: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password
        self.socket_path = str(directory / "redis.sock") if unix_socket else None
        self._args = list(args)
        self._process: subprocess.Popen[bytes] | None = None
        self._external_url: str | None = None

    @classmethod
    def external(cls, url: str) -> RedisServer:
        """A server someone else runs (``REDIS_URL``); it cannot be stopped or restarted."""
        parts = urlsplit(url)
        server = cls(Path("."), port=parts.port or 6379, password=parts.password)
        server._external_url = url
        return server

    @property
    def url(self) -> str:
        if self._external_url is not None:
            return self._external_url
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        if self.socket_path is None:
            raise RuntimeError("this server was started without unix_socket=True")
        return f"unix://{self.socket_path}?db=0"

    @property
    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def client(self) -> redis.Redis:  # type: ignore[type-arg]
        return redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> None:
        if self._external_url is not None:
            raise RuntimeError("cannot start an external server (REDIS_URL)")
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError(INSTALL_HINT)
        command = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", str(self.directory), "--logfile", "redis.log",
                   "--daemonize", "no"]
        if self.password:
            command += ["--requirepass", self.password]
        if self.socket_path:
            command += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(command + self._args, cwd=self.directory,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._wait_until_ready(timeout)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = self.client()
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                    raise RuntimeError(f"redis-server exited at start ({self._process.returncode}): "
                                       f"{stderr}\n{self.log[-2000:]}")
                try:
                    if probe.ping():
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not answer PING within {timeout}s:\n{self.log[-2000:]}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        if self._external_url is not None:
            raise RuntimeError("cannot stop an external server (REDIS_URL)")
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: redis-server exits at once (no save configured)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    @property
    def running(self) -> bool:
        return self._external_url is not None or (self._process is not None and self._process.poll() is None)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
