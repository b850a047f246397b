"""``hexq dashboard``: check the address, bind it, and serve the dashboard with uvicorn until Ctrl-C or SIGTERM.

The socket is bound here, before uvicorn starts, so that a wrong address or a port in use is one clear error
(exit 2 or 1) rather than uvicorn's log lines."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys

from hexq.core.errors import ConfigError, HexqError
from hexq.entrypoints.app import HexQ
from hexq.entrypoints.dashboard import EXTRA_HINT, create_app

log = logging.getLogger("hexq.dashboard")

DEFAULT_BIND = "127.0.0.1"
DEFAULT_PORT = 8080


class PortInUseError(HexqError):
    """The address and port asked for cannot be bound (another process listens there)."""


def check_port(port: int) -> int:
    if not 0 < port < 65536:
        raise ConfigError(f"--port must be a TCP port (1-65535), got {port}")
    return port


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; ConfigError for an address this machine does not have,
    PortInUseError when the port is taken."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"--bind {host!r} is not an address or a host name this machine can resolve ({exc}); "
                          "use an IP address of this machine, such as 127.0.0.1 (the default) or 0.0.0.0") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno in (98, 48):  # EADDRINUSE on Linux and macOS
            raise PortInUseError(f"port {port} on {host} is in use by another process: choose another with "
                                 "--port") from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}): --bind must be an address of this "
                          "machine, such as 127.0.0.1 (the default) or 0.0.0.0") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: HexQ, host: str, port: int, token: str | None, read_only: bool) -> int:
    try:
        import uvicorn
    except ModuleNotFoundError:
        raise ConfigError(EXTRA_HINT) from None
    if app.is_inline:
        raise ConfigError("the dashboard needs a broker that other processes share: this app uses memory:// "
                          "(in-process runs), which no other process can see")
    asgi = create_app(app, token=token, read_only=read_only)
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    if not is_loopback(host):
        print(f"hexq: warning: the dashboard listens on {host}, beyond this machine: anyone who can reach it "
              "can read queue contents and task arguments", file=sys.stderr)
    writes = "read-only" if read_only else ("requeue and delete need the token" if _has_token(token) else
                                            "read-only (no --token or HEXQ_DASHBOARD_TOKEN)")
    shown = f"[{host}]" if ":" in host else host
    print(f"hexq dashboard for {app.connection.redacted} on http://{shown}:{bound_port}/ ({writes})", flush=True)
    config = uvicorn.Config(asgi, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def _has_token(token: str | None) -> bool:
    from hexq.entrypoints.dashboard.security import resolve_token

    return resolve_token(token) is not None
