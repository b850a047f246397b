"""The batch planner: how many tasks a child reserves, and how long it waits, from what it observed."""

from __future__ import annotations

from hexq.core.ports import Delivery
from hexq.core.services.batching import BatchPlanner

QUEUES = ("@broadcast.w1", "high", "low")


def batch(queue: str, n: int) -> list[Delivery]:
    return [Delivery(f"{queue}-{i}", queue, "{}") for i in range(n)]


def test_the_first_reservation_takes_one_task_and_then_about_five_ms_of_work() -> None:
    planner = BatchPlanner(QUEUES)
    assert planner.size(running=0) == 1
    planner.reserved(batch("high", 1))  # filled its limit from the top app queue: nothing can preempt it
    planner.ran(0.0001)  # 0.1 ms per task
    assert planner.size(running=0) == 50  # the 5 ms budget
    planner.reserved(batch("high", 3))  # the top queue ran dry: the next batch probably comes from below
    assert planner.size(running=0) == 10  # the 1 ms budget


def test_a_batch_from_a_lower_queue_gets_the_small_budget_so_high_work_waits_little() -> None:
    planner = BatchPlanner(QUEUES)
    planner.ran(0.002)  # 2 ms tasks
    planner.size(running=0)
    planner.reserved(batch("low", 1))
    assert planner.size(running=0) == 1  # one 2 ms task at a time behind which a high task may wait
    planner.reserved(batch("high", 1))
    planner.ran(0.0001)
    assert planner.size(running=0) > 1


def test_the_broadcast_queue_does_not_make_the_top_app_queue_preemptible() -> None:
    planner = BatchPlanner(QUEUES, prefetch_max=64)
    planner.ran(0.0001)
    limit = planner.size(running=0)
    planner.reserved(batch("high", limit))
    assert planner.size(running=0) == 50


def test_the_batch_never_passes_the_recycling_quota_nor_the_prefetch_maximum() -> None:
    planner = BatchPlanner(QUEUES, max_tasks=5, prefetch_max=8)
    planner.ran(1e-7)
    assert planner.size(running=2) == 2  # 5 - 1 done - 2 still running
    assert BatchPlanner(QUEUES, prefetch_max=8, done=1, ewma=1e-7).size(running=0) == 8
    for _ in range(4):
        planner.ran(0.001)
    assert planner.quota_reached


def test_idle_wait_ends_at_the_next_eta_and_a_corrupt_eta_never_spins() -> None:
    planner = BatchPlanner(QUEUES, idle_wait_max=1.0)
    assert planner.idle_wait(None, now=100.0) == 1.0
    assert planner.idle_wait(100_250, now=100.0) == 0.25
    assert planner.idle_wait(99_000, now=100.0) == 0.0  # due already: reserve again at once
    assert planner.idle_wait(-5, now=100.0) == 1.0


def test_backoff_grows_and_is_capped() -> None:
    planner = BatchPlanner(QUEUES, backoff_max=5.0)
    assert [planner.backoff(n) for n in (1, 2, 3)] == [0.2, 0.4, 0.8]
    assert planner.backoff(50) == 5.0
