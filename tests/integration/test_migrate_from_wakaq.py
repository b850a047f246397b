"""``hexq migrate-from-wakaq``: WakaQ's own producer (the ``wakaq`` package, ``.delay()``) fills a throwaway
Redis with pending and eta tasks on several queues; the migration runs through the CLI, is SIGKILLed in each
window between two of its writes and run again, and every task must arrive in hexq exactly once with its
name, args, kwargs, queue and eta, then run once on a real ``hexq worker``, eta tasks never early.

redis_only: WakaQ's broker is a Redis server, and the test reads its keys (``wakaq:<queue>``,
``wakaq:eta:<queue>``) and hexq's (``{prefix}:tasks``) directly. It uses a server of its own
(``private_redis``): WakaQ's keys have a fixed ``wakaq:`` prefix that would clash with other tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis

from hexq.core.message import Codec
from tests.integration.workers import ROOT, Proc, wait_for

wakaq = pytest.importorskip("wakaq")

pytestmark = [pytest.mark.redis_only, pytest.mark.timeout(240)]
APP = "tests.integration.apps.wakaq_migration:app"
ETA_AHEAD = 15  # seconds: long enough that the eta tasks are still waiting when the migration is done


def _migrate(url: str, prefix: str, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HEXQ_TEST_URL=url, HEXQ_TEST_PREFIX=prefix, HEXQ_TEST_BOOK_URL=url)
    env.pop("HEXQ_TEST_MIGRATE_CRASH_AT", None)
    if crash_at:
        # The command's test-only hook (entrypoints/migrate_wakaq.py, CRASH_ENV): SIGKILL itself at the n-th
        # time it reaches that step, so each window between two writes is crossed by a kill.
        env["HEXQ_TEST_MIGRATE_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, "-m", "hexq.entrypoints.cli", "migrate-from-wakaq", f"--app={APP}",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def _wakaq_app(port: int) -> tuple[Any, dict[str, Any]]:
    app = wakaq.WakaQ(queues=[(0, "high"), (1, "medium"), (2, "low"), (3, "legacy")], host="127.0.0.1",
                      port=port)

    def add(x: Any, y: Any = 0) -> None: ...
    def greet(name: str, punctuation: str = "!") -> None: ...
    def stamp(*args: Any, **kwargs: Any) -> None: ...
    def unknown_task() -> None: ...

    tasks = {}
    for fn in (add, greet, stamp, unknown_task):
        app.task(fn)
        tasks[fn.__name__] = fn
    return app, tasks


def _hexq_tasks(client: redis.Redis, prefix: str) -> list[Any]:  # type: ignore[type-arg]
    return [Codec().decode(raw) for raw in client.hvals("{" + prefix + "}:tasks")]


def test_migration_moves_each_task_once_across_kills_and_a_worker_runs_them(
        private_redis: Any, tmp_path: Path) -> None:
    server = private_redis()
    url, prefix = server.url, f"mig-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(url, decode_responses=True)
    app, t = _wakaq_app(server.port)

    expected: list[tuple[str, str, tuple[Any, ...], dict[str, Any], float | None]] = []
    for i in range(6):  # WakaQ's own .delay(), as a WakaQ producer sends them
        t["add"].delay(i, y=i * 10, queue="high")
        expected.append(("add", "high", (i,), {"y": i * 10}, None))
        t["greet"].delay(f"n{i}", queue="medium")
        expected.append(("greet", "medium", (f"n{i}",), {}, None))
    values = (Decimal("1.50"), datetime(2024, 1, 2, 3, 4, 5, 6), date(2024, 2, 3), timedelta(days=1, seconds=2),
              b"\x00\xff")
    t["stamp"].delay(*values, when=datetime(2023, 5, 6, 7, 8, 9), queue="low")
    expected.append(("stamp", "low", values, {"when": datetime(2023, 5, 6, 7, 8, 9)}, None))
    for _ in range(2):  # the same call twice is two tasks
        t["add"].delay(100, y=100, queue="high")
        expected.append(("add", "high", (100,), {"y": 100}, None))
    # A task WakaQ retried once after a soft timeout: its worker re-enqueues it so (Worker._event_loop).
    app._enqueue_at_end("add", "low", [7], {"y": 7}, retry=1)
    expected.append(("add", "low", (7,), {"y": 7}, None))
    future = datetime.now(timezone.utc).replace(tzinfo=None) + timedelta(seconds=ETA_AHEAD)
    for i in range(3):
        t["add"].delay(i, y=-i - 1, queue="high", eta=timedelta(seconds=ETA_AHEAD))
        t["greet"].delay(f"later{i}", queue="medium", eta=future)
    t["stamp"].delay("past", queue="low", eta=datetime(2020, 1, 1))  # due long ago: runs at once
    for key in ("wakaq:eta:high", "wakaq:eta:medium", "wakaq:eta:low"):
        for raw, score in client.zrange(key, 0, -1, withscores=True):
            entry = json.loads(raw)
            args = ("past",) if entry["args"] == ["past"] else tuple(entry["args"])
            expected.append((entry["name"], key.rsplit(":", 1)[1], args, entry["kwargs"], score))
    # Three entries hexq must refuse, and report: an unknown task, an unknown queue, not WakaQ JSON.
    t["unknown_task"].delay(queue="high")
    t["add"].delay(1, queue="legacy")
    client.rpush("wakaq:medium", "not json{")
    assert client.zcard("wakaq:eta:high") == 3 and client.llen("wakaq:high") == 9

    # --dry-run: counts per queue and the rejected entries; nothing moves.
    before = {k: client.type(k) for k in client.keys("wakaq:*")}
    dry = _migrate(url, prefix, "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "would move high: 8 pending, 3 eta" in dry.stdout, dry.stdout
    assert "would move medium: 6 pending, 3 eta" in dry.stdout, dry.stdout
    assert dry.stdout.count("would reject (") == 3, dry.stdout
    assert f"would move {len(expected)} task(s); would reject 3" in dry.stdout
    assert {k: client.type(k) for k in client.keys("wakaq:*")} == before
    assert not client.exists("{" + prefix + "}:tasks")

    # Killed in each window between two writes, then run again: resumes and takes over the dead run's lock.
    outputs = []
    for crash_at in ("claimed:3", "held_stored:2", "held:4", "released:3", "released:1"):
        killed = _migrate(url, prefix, crash_at=crash_at)
        assert killed.returncode == -9, killed.stdout + killed.stderr
        outputs.append(killed.stdout)
    final = _migrate(url, prefix)
    outputs.append(final.stdout)
    assert final.returncode in (0, 1), final.stdout + final.stderr
    everything = "".join(outputs)
    assert everything.count("rejected (") == 3, everything
    assert "unknown_task" in everything and "legacy" in everything and "not WakaQ JSON" in everything
    assert client.llen("wakaq:migrate:rejected") == 3
    assert not [k for k in client.keys("wakaq:*") if not k.startswith("wakaq:migrate:")]
    assert client.hlen("wakaq:migrate:claims") == 0 and not client.exists("wakaq:migrate:lock")

    # In hexq: each entry exactly once, with its name, args, kwargs, queue and eta (held tasks all released).
    stored = _hexq_tasks(client, prefix)
    assert len(stored) == len(expected), (len(stored), len(expected))
    got = Counter((m.name, m.queue, repr(m.args), repr(m.kwargs)) for m in stored)
    assert got == Counter((n, q, repr(a), repr(k)) for n, q, a, k, _ in expected)
    now = time.time()
    eta_of = {(n, q, repr(a), repr(k)): e for n, q, a, k, e in expected if e is not None}
    for m in stored:
        due = eta_of.get((m.name, m.queue, repr(m.args), repr(m.kwargs)))
        assert m.eta is not None and m.eta < now + 3600, m  # never the decades-ahead hold
        if due is not None:
            assert m.eta == due, (m, due)  # WakaQ's score, to the second it stored
        else:
            assert m.eta <= now, m

    # Running it again moves nothing and rejects nothing; the rejected entries are still waiting.
    again = _migrate(url, prefix)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "moved 0 task(s); rejected 0" in again.stdout
    assert "3 rejected entries wait in wakaq:migrate:rejected" in again.stdout
    assert len(_hexq_tasks(client, prefix)) == len(expected)

    # --retry-rejected puts them back; the app still does not know them: rejected again, exit 1.
    retried = _migrate(url, prefix, "--retry-rejected")
    assert retried.returncode == 1, retried.stdout + retried.stderr
    assert retried.stdout.count("rejected (") == 3 and client.llen("wakaq:migrate:rejected") == 3

    # A real hexq worker runs every task once; eta tasks not before WakaQ's due time.
    env = dict(os.environ, HEXQ_TEST_URL=url, HEXQ_TEST_PREFIX=prefix, HEXQ_TEST_BOOK_URL=url,
               PYTHONUNBUFFERED="1")
    worker = Proc(["worker", f"--app={APP}"], env, tmp_path / "worker.log")
    try:
        def results() -> list[dict[str, Any]]:
            return [json.loads(r) for r in client.lrange(f"{prefix}-results", 0, -1)]

        # Stragglers sent by a WakaQ producer that was stopped late, migrated while the worker runs: killed
        # just after a release, the worker runs the released task before the next run resumes, which must
        # see it released (a held task cannot have run) and not send it again.
        for i in range(4):
            t["add"].delay(200 + i, queue="high")
            expected.append(("add", "high", (200 + i,), {}, None))
        killed = _migrate(url, prefix, crash_at="released:2")
        assert killed.returncode == -9, killed.stdout + killed.stderr
        wait_for(lambda: any(r["args"] == "(201,)" for r in results()), 10, "the released straggler to run")
        resumed = _migrate(url, prefix)
        assert "moved 3 task(s)" in resumed.stdout, resumed.stdout + resumed.stderr
        wait_for(lambda: len(results()) >= len(expected), ETA_AHEAD + 40,
                 f"{len(expected)} tasks to run:\n{worker.output()[-3000:]}")
        time.sleep(1.5)  # anything run twice would show up now
        ran = results()
    finally:
        worker.kill_group()
    assert len(ran) == len(expected)
    assert len({r["id"] for r in ran}) == len(ran)
    assert Counter((r["tag"], r["queue"], r["args"], r["kwargs"]) for r in ran) == Counter(
        (n, q, repr(a), repr(k)) for n, q, a, k, _ in expected)
    for r in ran:
        due = eta_of.get((r["tag"], r["queue"], r["args"], r["kwargs"]))
        if due is not None:
            assert r["at"] >= due, (r, due)
