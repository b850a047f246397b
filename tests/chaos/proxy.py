"""A loopback TCP proxy that the chaos suite controls: ``pause`` (hold every byte), ``cut`` (reset every
connection and refuse new ones) and ``resume``.

It runs as its own process (``python -m tests.chaos.proxy --port P --target T --control C``) so that the
suite's own work never slows the traffic down; :class:`ProxyProcess` starts it and sends it commands over a
line-based control socket. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.redis_server import free_port  # drawn below the ephemeral range

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parents[2]


class Proxy:
    """The asyncio proxy itself. States: flowing, paused (bytes held, nothing lost), cut (listener closed)."""

    def __init__(self, port: int, target: int) -> None:
        self.port = port
        self.target = target
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.stats = {"accepted": 0, "upstream_failed": 0, "cuts": 0, "reset": 0, "bytes": 0}
        self.state = "flowing"

    async def listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, HOST, self.port, reuse_address=True, backlog=512)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        self.writers.add(writer)
        try:
            await self.flowing.wait()
            if self.state == "cut":
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(HOST, self.target)
            except OSError:
                self.stats["upstream_failed"] += 1
                return
            self.writers.add(up_writer)
            try:
                await asyncio.gather(self._copy(reader, up_writer), self._copy(up_reader, writer))
            finally:
                self._close(up_writer)
        finally:
            self._close(writer)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(262144)
                if not data:
                    break
                await self.flowing.wait()  # paused: hold this chunk (and stop reading) until resumed
                writer.write(data)
                self.stats["bytes"] += len(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._close(writer)

    def _close(self, writer: asyncio.StreamWriter, reset: bool = False) -> None:
        self.writers.discard(writer)
        transport = writer.transport
        if transport.is_closing():
            return
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            transport.abort()
        else:
            transport.close()

    async def command(self, name: str) -> dict[str, Any]:
        if name == "pause":
            self.state = "paused"
            self.flowing.clear()
        elif name == "cut":
            self.state = "cut"
            self.stats["cuts"] += 1
            if self.server is not None:
                self.server.close()
                self.server = None
            for writer in list(self.writers):
                self.stats["reset"] += 1
                self._close(writer, reset=True)
            self.flowing.set()  # held chunks are dropped with their (closed) connections
        elif name == "resume":
            if self.server is None:
                await self.listen()
            self.state = "flowing"
            self.flowing.set()
        elif name != "stats":
            return {"ok": False, "error": f"unknown command {name!r}"}
        return {"ok": True, "state": self.state, "connections": len(self.writers), **self.stats}


async def _serve(port: int, target: int, control: int) -> None:
    proxy = Proxy(port, target)
    await proxy.listen()
    done = asyncio.Event()

    async def on_control(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := (await reader.readline()).decode().strip():
                if line == "quit":
                    done.set()
                    reply: dict[str, Any] = {"ok": True}
                else:
                    reply = await proxy.command(line)
                writer.write((json.dumps(reply) + "\n").encode())
                await writer.drain()
        finally:
            writer.close()

    control_server = await asyncio.start_server(on_control, HOST, control, reuse_address=True)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    async with control_server:
        await done.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.proxy", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", type=int, required=True)
    parser.add_argument("--control", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.target, args.control))


class ProxyProcess:
    """``with ProxyProcess(target_port) as proxy: proxy.url; proxy.cut(); proxy.resume()``."""

    def __init__(self, target_port: int, log: Path | None = None) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.control_port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._lines: Any = None

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> ProxyProcess:
        out = self.log.open("wb") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.proxy", "--port", str(self.port), "--target",
             str(self.target_port), "--control", str(self.control_port)],
            cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))),
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._control = socket.create_connection((HOST, self.control_port), timeout=5)
                self._lines = self._control.makefile("r")
                return self
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("the chaos proxy did not start") from None
                time.sleep(0.05)

    def send(self, command: str) -> dict[str, Any]:
        assert self._control is not None
        self._control.sendall((command + "\n").encode())
        reply: dict[str, Any] = json.loads(self._lines.readline())
        return reply

    def pause(self) -> dict[str, Any]:
        return self.send("pause")

    def cut(self) -> dict[str, Any]:
        return self.send("cut")

    def resume(self) -> dict[str, Any]:
        return self.send("resume")

    def stats(self) -> dict[str, Any]:
        return self.send("stats")

    def stop(self) -> None:
        if self._control is not None:
            with contextlib.suppress(OSError):
                self._control.close()
            self._control = None
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    main()
