"""An earlier hexq, measured beside the working tree's in one run: ``python -m bench --baseline REV``.

The issue a change serves often promises that what does not use it is unchanged (the steady rate, a single
enqueue, the Redis commands per task). A ratio from one run on this shared machine says that far better
than two runs an hour apart, so the earlier hexq runs as one more system, ``hexq-base``, with its own
interpreter: ``--baseline`` exports the commit into ``bench/logs/baseline-<rev>/``, installs it (not
editable) in a venv there, and points ``BENCH_BASELINE_PYTHON`` at that venv's python. Its workers and
clients run the same ``bench/apps`` through that interpreter; the repo root on ``PYTHONPATH`` has no
``hexq`` directory, so ``import hexq`` finds the installed older copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.systems.hexq import Hexq

PYTHON_ENV = "BENCH_BASELINE_PYTHON"
REV_ENV = "BENCH_BASELINE_REV"


class HexqBaseline(Hexq):
    name = "hexq-base"
    command = "python -m hexq.entrypoints.cli worker --app=bench.apps.hexq_app:app --concurrency=2 (--baseline venv)"

    @property
    def python(self) -> str:
        return os.environ.get(PYTHON_ENV, "")

    def missing(self) -> str | None:
        if not self.python:
            return "not installed (run with --baseline REV)"
        return None

    def version(self) -> str:
        return f"{os.environ.get(REV_ENV, '?')}"

    def worker_argvs(self, url: str, app: str = "bench.apps.hexq_app:app") -> list[list[str]]:
        return [[self.python, "-m", "hexq.entrypoints.cli", "worker", f"--app={app}", "--concurrency=2"]]


def prepare(repo: Path, rev: str, into: Path) -> Path:
    """Export ``rev`` of ``repo`` under ``into``, install it in a venv there; returns the venv's python.
    A venv already built for the same commit is reused."""
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    home = into / f"baseline-{commit[:12]}"
    python = home / "venv" / "bin" / "python"
    if (home / "ready").exists():
        return python
    source = home / "src"
    source.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        archive = Path(scratch) / "src.tar"
        subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive), commit],
                       check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(source, filter="data") if sys.version_info >= (3, 12) else tar.extractall(source)
    subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(source)], check=True)
    (home / "ready").write_text(commit)
    return python
