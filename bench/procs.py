"""Worker process trees: each command in its own process group, always killed, RSS measured with psutil."""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import psutil

REPO = Path(__file__).resolve().parent.parent
_LIVE: set[ProcessTree] = set()


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for child processes: the repo importable, the venv's scripts first on PATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ProcessTree:
    """One or more commands (e.g. two ``rq worker``), each started in a new session/process group."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], log: IO[bytes] | None) -> None:
        self.procs = procs
        self.log = log
        self.known: dict[int, psutil.Process] = {}
        _LIVE.add(self)

    @classmethod
    def spawn(cls, argvs: Sequence[Sequence[str]], *, env: dict[str, str] | None = None,
              cwd: str | None = None, log: Path | None = None) -> ProcessTree:
        """Start every argv; their output goes to the file ``log`` (or nowhere)."""
        procs: list[subprocess.Popen[bytes]] = []
        out = open(log, "wb") if log is not None else None  # noqa: SIM115 - closed by kill()
        tree = cls(procs, out)
        try:
            for argv in argvs:
                procs.append(subprocess.Popen(list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                              stdout=out or subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        except BaseException:
            tree.kill()
            raise
        return tree

    def alive(self) -> bool:
        return any(p.poll() is None for p in self.procs)

    def processes(self) -> list[psutil.Process]:
        """Every live process of the tree (roots and all descendants); remembered for the final kill."""
        found: list[psutil.Process] = []
        for popen in self.procs:
            try:
                root = psutil.Process(popen.pid)
                found.append(root)
                found.extend(root.children(recursive=True))
            except psutil.Error:
                continue
        for proc in found:
            self.known.setdefault(proc.pid, proc)
        return found

    def rss_bytes(self) -> int:
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def pss_bytes(self) -> int | None:
        """Proportional set size: pages shared after fork are split between the processes sharing them,
        so the sum is the memory the tree really uses (RSS counts a shared page once per process).
        None where the OS does not report it."""
        total = 0
        for proc in self.processes():
            with contextlib.suppress(psutil.NoSuchProcess):
                pss = getattr(proc.memory_full_info(), "pss", None)
                if pss is None:
                    return None
                total += pss
        return total

    def kill(self, grace: float = 3.0) -> None:
        """SIGTERM every process group, wait up to ``grace`` s, then SIGKILL groups and stray descendants."""
        self.processes()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for popen in self.procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(popen.pid, sig)
            if sig == signal.SIGTERM:
                deadline = time.monotonic() + grace
                while self.alive() and time.monotonic() < deadline:
                    time.sleep(0.05)
        for proc in self.known.values():
            with contextlib.suppress(psutil.Error):
                if proc.is_running():
                    proc.kill()
        for popen in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=5)
        if self.log is not None:
            self.log.close()
            self.log = None
        _LIVE.discard(self)


def kill_all() -> None:
    for tree in list(_LIVE):
        with contextlib.suppress(Exception):
            tree.kill(grace=1.0)


atexit.register(kill_all)


class ClientFailed(RuntimeError):
    """A client process ended without a result, or reported an error."""


def run_client(module: str, system: str, op: str, *, env: dict[str, str], logdir: Path, label: str,
               timeout: float, python: str = sys.executable, **opts: object) -> dict[str, Any]:
    """Run one client op (``python -m <module> <system> <op> --out ... --<opt> <value>``) in its own process
    and return the JSON it wrote. Raises ``bench.workloads.Timeout`` past ``timeout`` and ``ClientFailed`` if
    it wrote nothing or wrote an error; its output is in ``<logdir>/<label>.log``."""
    from bench.workloads import Timeout

    out = logdir / f"{label}.json"
    out.unlink(missing_ok=True)
    argv = [python, "-m", module, system, op, "--out", str(out)]
    for key, value in opts.items():
        argv += [f"--{key}", str(value)]
    tree = ProcessTree.spawn([argv], env=env, cwd=str(REPO), log=logdir / f"{label}.log")
    try:
        try:
            tree.procs[0].wait(timeout=timeout)
        except Exception:
            raise Timeout(f"client {op} still running after {timeout:.0f} s") from None
    finally:
        tree.kill(grace=0.5)
    if not out.exists():
        raise ClientFailed(f"client {op} exited with {tree.procs[0].returncode}")
    result: dict[str, Any] = json.loads(out.read_text())
    if "error" in result:
        raise ClientFailed(f"client {op}: {result['error']}")
    return result
