"""Dead letters keep the failure's traceback, with real worker processes on each broker, and ``hexq dead list``
shows it: a task that raises on its last attempt, and a hard timeout (killed by the worker parent: none)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from workers import Cluster, wait_for

pytestmark = pytest.mark.integration


def test_a_task_that_raises_on_its_last_attempt_leaves_its_traceback(cluster: Cluster) -> None:
    with cluster.app_env() as tasks:
        raised = tasks.fails_every_attempt.delay("inv-7")
        killed = tasks.overrun_hard.delay("stuck")
    cluster.worker("--concurrency=2")
    wait_for(lambda: {raised, killed} <= set(cluster.dead()), 30, f"both to be dead-lettered\n{cluster.logs()}")
    letters = cluster.dead()
    traceback = letters[raised]["traceback"]
    assert traceback.startswith("Traceback (most recent call last):")
    assert 'in fails_every_attempt\n    raise LookupError(f"no invoice {tag}' in traceback
    assert traceback.rstrip().endswith("LookupError: no invoice inv-7 (attempt 2)")  # the last attempt's
    assert letters[raised]["reason"].startswith("raised LookupError: no invoice inv-7 (attempt 2)")
    assert letters[killed]["reason"].startswith("hard timeout") and letters[killed]["traceback"] == ""

    listed = hexq(cluster, "dead", "list", "--traceback")
    assert listed.returncode == 0, listed.stderr
    entry = listed.stdout.split(raised, 1)[1]
    assert "\n    Traceback (most recent call last):\n" in entry and "    LookupError: no invoice inv-7" in entry
    short = hexq(cluster, "dead", "list").stdout
    assert "Traceback" not in short and "(their tracebacks: hexq dead list --traceback)" in short
    by_id = {d["id"]: d for d in json.loads(hexq(cluster, "dead", "list", "--json").stdout)}
    assert by_id[raised]["traceback"] == traceback and by_id[killed]["traceback"] == ""


def hexq(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", *args,
                           "--app=tests.integration.apps.tasks:app"], env=cluster.env(),
                          cwd=str(Path(__file__).resolve().parents[2]), capture_output=True, text=True, timeout=60)
