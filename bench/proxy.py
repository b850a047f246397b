"""A loopback TCP proxy that delays every client->server chunk by ``--delay-ms`` (one Redis round trip costs
about that much more; replies go back at once). Run: ``python -m bench.proxy --port P --target T``.

Chunks keep their order and are delayed independently (a latency, not a bandwidth limit): a pipelined burst
pays the delay once, as it would on a real network.
"""

from __future__ import annotations

import argparse
import contextlib
import queue
import socket
import sys
import threading
import time

import redis

from bench.procs import REPO, ProcessTree, bench_env

HOST = "127.0.0.1"


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _forward(src: socket.socket, dst: socket.socket, delay: float) -> None:
    """Copy src to dst; with a delay, a second thread sends each chunk ``delay`` s after it arrived."""
    chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def send_later() -> None:
        try:
            while True:
                due, data = chunks.get()
                if not data:
                    return
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)

    sender = threading.Thread(target=send_later, daemon=True) if delay > 0 else None
    if sender is not None:
        sender.start()
    try:
        while True:
            data = src.recv(262144)
            if sender is not None:
                chunks.put((time.monotonic() + delay, data))
            elif data:
                dst.sendall(data)
            if not data:
                break
    except OSError:
        if sender is not None:
            chunks.put((0.0, b""))
    finally:
        if sender is None:
            _close(dst)
            _close(src)


def _handle(client: socket.socket, target: int, delay: float) -> None:
    try:
        server = socket.create_connection((HOST, target))
    except OSError:
        client.close()
        return
    for sock in (client, server):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    threading.Thread(target=_forward, args=(client, server, delay), daemon=True).start()
    threading.Thread(target=_forward, args=(server, client, 0.0), daemon=True).start()


def serve(port: int, target: int, delay: float) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((HOST, port))
    listener.listen(512)
    while True:
        client, _ = listener.accept()
        _handle(client, target, delay)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="loopback port to listen on")
    parser.add_argument("--target", type=int, required=True, help="loopback port of the redis-server")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        serve(args.port, args.target, args.delay_ms / 1000.0)


class Proxy:
    """The proxy as a child process: ``with Proxy(target_port) as proxy: proxy.url``."""

    def __init__(self, target_port: int, delay_ms: float = 1.0) -> None:
        from bench.redis_server import free_port

        self.target_port = target_port
        self.delay_ms = delay_ms
        self.port = free_port()
        self.tree: ProcessTree | None = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def __enter__(self) -> Proxy:
        argv = [sys.executable, "-m", "bench.proxy", "--port", str(self.port), "--target",
                str(self.target_port), "--delay-ms", str(self.delay_ms)]
        self.tree = ProcessTree.spawn([argv], env=bench_env(), cwd=str(REPO))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline or not self.tree.alive():
                    self.__exit__()
                    raise RuntimeError("the latency proxy did not start") from None
                time.sleep(0.05)

    def added_rtt_ms(self, direct_url: str, pings: int = 500) -> float:
        """Measured extra cost of one round trip through the proxy (PING through it minus PING direct)."""
        costs = []
        for url in (direct_url, self.url):
            client = redis.Redis.from_url(url)
            client.ping()
            start = time.perf_counter()
            for _ in range(pings):
                client.ping()
            costs.append((time.perf_counter() - start) / pings)
            client.close()
        return (costs[1] - costs[0]) * 1000

    def __exit__(self, *exc: object) -> None:
        if self.tree is not None:
            self.tree.kill(grace=1.0)
            self.tree = None


if __name__ == "__main__":
    main()
