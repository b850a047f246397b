"""Lets test modules share helpers as ``tests.unit.…`` however pytest is started: ``python -m pytest``
puts the repository root on ``sys.path``, the ``pytest`` script does not."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

# Python 3.12+ warns when a process that runs threads forks: a lock held by another thread at that instant
# stays held in the child forever. hexq forks its children from a single-threaded fork server, so the
# warning must never appear, in this process or in the workers the tests start (they inherit the filter
# through the environment and the integration helpers scan their logs). Turning the warning into an
# "error" filter does not work: CPython swallows an exception raised by it. So it is shown ("always")
# and any occurrence fails the session.
FORK_WARNING = "use of fork() may lead to deadlocks"
_FORK_FILTER = "always:This process:DeprecationWarning"
os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _FORK_FILTER]))
_forked_with_threads: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", _FORK_FILTER)


def pytest_warning_recorded(warning_message: warnings.WarningMessage, when: str, nodeid: str,
                            location: tuple[str, int, str] | None) -> None:
    if FORK_WARNING in str(warning_message.message):
        _forked_with_threads.append(nodeid or when)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _forked_with_threads:
        print(f"\nFAILED: a process forked while running threads in {sorted(set(_forked_with_threads))}")
        session.exitstatus = 1
