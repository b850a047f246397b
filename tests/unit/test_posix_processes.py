"""PosixProcessControl and its fork server: real processes, real signals, reaping reported by the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hexq.adapters.posix.forkserver import ForkServerGone
from hexq.adapters.posix.processes import PosixProcessControl
from hexq.core.ports import ChildExit

ROOT = Path(__file__).resolve().parents[2]


def child_main(index: int, consumer: str) -> int:
    """index 0: exit with the code in the consumer name; 1: sleep until signalled; 2: raise."""
    if index == 0:
        return int(consumer)
    if index == 1:
        time.sleep(60)
        return 0
    raise RuntimeError("boom")


@pytest.fixture
def processes() -> Iterator[PosixProcessControl]:
    control = PosixProcessControl.start(child_main)
    yield control
    control.close()


def reap_until(control: PosixProcessControl, count: int, timeout: float = 10.0) -> list[ChildExit]:
    found: list[ChildExit] = []
    deadline = time.monotonic() + timeout
    while len(found) < count and time.monotonic() < deadline:
        found += control.reap()
        time.sleep(0.01)
    return found


def test_a_child_runs_and_its_exit_code_is_reported_by_reaping(processes: PosixProcessControl) -> None:
    pid = processes.start_child(0, "7")
    assert reap_until(processes, 1) == [ChildExit(pid, 7, None)]
    assert processes.reap() == []  # reported once


def test_kill_and_terminate_are_reported_with_their_signals(processes: PosixProcessControl) -> None:
    killed = processes.start_child(1, "a")
    terminated = processes.start_child(1, "b")
    processes.kill(killed)
    processes.terminate(terminated)
    exits = {e.pid: e for e in reap_until(processes, 2)}
    assert exits[killed] == ChildExit(killed, None, signal.SIGKILL)
    assert exits[terminated] == ChildExit(terminated, None, signal.SIGTERM)


def test_a_child_that_raises_exits_with_code_1(processes: PosixProcessControl) -> None:
    pid = processes.start_child(2, "c")
    assert reap_until(processes, 1) == [ChildExit(pid, 1, None)]


def test_signals_never_reach_a_pid_that_is_not_a_live_child(processes: PosixProcessControl) -> None:
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        processes.kill(bystander.pid)
        processes.terminate(bystander.pid)
        time.sleep(0.1)
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_rss_of_a_live_child_and_of_a_gone_one(processes: PosixProcessControl) -> None:
    pid = processes.start_child(1, "d")
    assert processes.rss(pid) > 0
    processes.kill(pid)
    reap_until(processes, 1)
    assert processes.rss(pid) == 0
    assert 0 < processes.memory_percent() <= 100


def test_many_children_at_once_are_all_reaped(processes: PosixProcessControl) -> None:
    pids = {processes.start_child(0, str(i % 3)) for i in range(20)}
    exits = reap_until(processes, 20)
    assert {e.pid for e in exits} == pids
    assert {e.code for e in exits} == {0, 1, 2}


def test_a_dead_fork_server_is_reported_not_waited_for(processes: PosixProcessControl) -> None:
    os.kill(processes._server.pid, signal.SIGKILL)
    with pytest.raises(ForkServerGone):
        reap_until(processes, 1, timeout=2.0)
    with pytest.raises(ForkServerGone):
        processes.start_child(0, "0")


def run_script(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "tests" / "unit") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, env=env)


def test_children_are_forked_by_a_process_without_threads_so_python_has_nothing_to_warn_about() -> None:
    # The parent starts a thread after the fork server, as the worker's broker thread does; every child is
    # still forked from the single-threaded server, so Python 3.12+ has no fork-with-threads warning to give.
    result = run_script("""
        import threading, time, warnings
        warnings.simplefilter("always")
        from test_posix_processes import child_main
        from hexq.adapters.posix.processes import PosixProcessControl
        control = PosixProcessControl.start(child_main)
        threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
        pids = {control.start_child(0, "0") for _ in range(3)}
        exits = []
        while len(exits) < 3:
            exits += control.reap()
            time.sleep(0.01)
        control.close()
        print("reaped", len(exits))
    """, "-W", "always::DeprecationWarning")
    assert result.returncode == 0, result.stderr
    assert "reaped 3" in result.stdout
    assert "fork" not in result.stderr, result.stderr


def test_when_the_parent_dies_its_children_are_told_to_stop() -> None:
    result = run_script("""
        import os, time
        from test_posix_processes import child_main
        from hexq.adapters.posix.processes import PosixProcessControl
        control = PosixProcessControl.start(child_main)
        print(control.start_child(1, "x"), flush=True)
        os._exit(0)  # no goodbye: the request pipe closes with this process
    """)
    pid = int(result.stdout.split()[0])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    raise AssertionError("the orphaned child was not stopped")
