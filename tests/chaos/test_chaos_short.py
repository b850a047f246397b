"""The chaos suite's short version for CI (``python -m tests.chaos.chaos --quick``): 1,000 tasks through two
real workers while children are SIGKILLed, a worker is killed, Redis crashes and the network is cut; then
the poison-task and SIGTERM scenarios. Bounds are generous: this checks behaviour, not speed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from tests.chaos.chaos import Chaos, Plan, run, summary, wait_until

pytestmark = pytest.mark.integration

LEASE_BUG = "lease expired while Redis was down (process alive)", "lease expired during the network cut (process alive)"


def _require_redis() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not on PATH (apt-get install redis-server)", pytrace=False)


def test_quick_chaos_run(tmp_path: Path) -> None:
    _require_redis()
    report = run(Plan.quick(), tmp_path, seed=1)
    print(summary(report))
    verdicts = report["verdicts"]
    assert report["sent"] == report["tasks"]
    assert report["lost"] == 0, f"lost tasks {report['lost_ids']}"
    assert report["dead_letters"] == 0, report["dead_letter_reasons"]
    assert verdicts["workers alive at the end"], report["workers_alive_at_end"]
    assert verdicts["workers survived the network cut"], report["outage"]
    assert report["outage"]["cpu_share"] < 0.5, f"busy spin while Redis was unreachable: {report['outage']}"
    assert verdicts["every killed run started again"], report["killed_runs_never_restarted"]
    assert verdicts["clean shutdown (exit 0)"], report["shutdown"]
    # Long tasks may run twice only when the process running them was killed, or through the known lease
    # bug below (test_long_task_not_rerun_after_an_outage): nothing else may explain a second run.
    unexplained = [x for x in report["long_tasks_run_twice_without_kill"] if x["cause"] not in LEASE_BUG]
    assert not unexplained, unexplained
    assert "other (unexplained)" not in report["duplicate_causes"], report["duplicate_causes"]
    assert verdicts["poison task dead-lettered after max_deliveries"], report["poison"]
    assert verdicts["SIGTERM hands back reserved tasks at once"], report["sigterm"]


@pytest.mark.xfail(strict=True, reason=(
    "bug: lease deadlines keep running while no worker can reach Redis, so the first client back after an "
    "outage longer than lease_timeout recovers tasks that live workers are still running"))
def test_long_task_not_rerun_after_an_outage(tmp_path: Path) -> None:
    """Redis restarts (cleanly, nothing lost) while a 5 s task runs with lease_timeout=2; the worker sits
    behind the proxy, which stays cut until the first client back (here this test, standing for another
    worker's child that reconnects first) has made its reserve-time recovery pass."""
    _require_redis()
    from hexq.adapters.redis.broker import RedisBroker

    chaos = Chaos(Plan(tasks=1, lease=2.0, concurrency=2), tmp_path, seed=11)
    chaos.book_server.start()
    chaos.broker_server.start()
    try:
        from tests.chaos.proxy import ProxyProcess

        chaos.proxy = ProxyProcess(chaos.broker_server.port, tmp_path / "proxy.log").start()
        worker = chaos.start_worker("worker", chaos.proxy.url)
        chaos.send([chaos.outgoing(0, 5000.0)], {0: 5000.0})
        book = chaos.book()
        assert wait_until(lambda: book.hlen(chaos.bkey("running")) == 1, 10, 0.01)
        chaos.proxy.cut()
        chaos.broker_server.stop()  # SIGTERM: the AOF is complete, nothing is lost
        time.sleep(2.5)
        chaos.broker_server.start()
        client = chaos.broker_server.client()
        recovered = RedisBroker(client, chaos.prefix).recover_expired(int(time.time() * 1000))
        chaos.proxy.resume()
        assert wait_until(lambda: book.sismember(chaos.bkey("done"), "0"), 15, 0.05)
        time.sleep(1.0)
        runs = int(book.hget(chaos.bkey("runs"), "0") or 0)
        print(f"recovered by the first client back: {recovered}; runs of the long task: {runs}")
        assert worker.alive()
        assert runs == 1
    finally:
        chaos.close()
