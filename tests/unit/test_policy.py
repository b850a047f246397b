"""Timeout/retry policy: limit precedence (WakaQ's rules) and the decision after a failed run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hexq import HexQ
from hexq.adapters.memory import FakeClock, MemoryBroker
from hexq.core.errors import ConfigError
from hexq.core.policy import (
    AppDefaults,
    GiveUp,
    Limits,
    Retry,
    TaskOptions,
    after_failure,
    check_limits,
    on_redelivery,
    resolve_limits,
    timeout_conflict,
)
from hexq.core.queues import Queue, check_timeouts

N = None

# (label, task (soft, hard, retries), queue (soft, hard, retries), app (soft, hard, retries),
#  expected (soft, hard, retries))
PRECEDENCE = [
    ("nothing set anywhere", (N, N, N), (N, N, N), (N, N, N), (N, N, 0)),
    ("app only", (N, N, N), (N, N, N), (30, 60, 3), (30.0, 60.0, 3)),
    ("queue beats app", (N, N, N), (300, 360, 5), (30, 60, 3), (300.0, 360.0, 5)),
    ("task beats queue and app", (420, 480, 7), (300, 360, 5), (30, 60, 3), (420.0, 480.0, 7)),
    ("each limit resolved on its own", (10, N, N), (N, 360, N), (N, N, 2), (10.0, 360.0, 2)),
    ("task retries 0 is set and wins", (N, N, 0), (N, N, 5), (N, N, 3), (N, N, 0)),
    ("queue retries 0 is set and wins", (N, N, N), (N, N, 0), (N, N, 3), (N, N, 0)),
    ("queue soft, app hard", (N, N, N), (20, N, N), (N, 60, N), (20.0, 60.0, 0)),
    ("task soft above app hard: soft dropped", (100, N, N), (N, N, N), (N, 60, N), (N, 60.0, 0)),
    ("task soft equal queue hard: soft dropped", (60, N, N), (N, 60, N), (N, N, N), (N, 60.0, 0)),
    ("app soft above task hard: soft dropped", (N, 20, N), (N, N, N), (30, 60, N), (N, 20.0, 0)),
    ("queue soft above task hard: soft dropped", (N, 5, 1), (10, 20, N), (N, N, N), (N, 5.0, 1)),
    ("soft only", (N, N, N), (N, N, N), (30, N, N), (30.0, N, 0)),
    ("hard only", (N, N, N), (N, 90, N), (N, N, N), (N, 90.0, 0)),
]


@pytest.mark.parametrize(("label", "task", "queue", "app", "expected"), PRECEDENCE,
                         ids=[p[0] for p in PRECEDENCE])
def test_resolve_limits_precedence_task_then_queue_then_app(
    label: str, task: tuple[Any, ...], queue: tuple[Any, ...], app: tuple[Any, ...], expected: tuple[Any, ...]
) -> None:
    limits = resolve_limits(
        TaskOptions(soft_timeout=task[0], hard_timeout=task[1], max_retries=task[2]),
        Queue("q", soft_timeout=queue[0], hard_timeout=queue[1], max_retries=queue[2]),
        AppDefaults(soft_timeout=app[0], hard_timeout=app[1], max_retries=app[2]),
    )
    assert (limits.soft_timeout, limits.hard_timeout, limits.max_retries) == expected


Timeouts = tuple[float | None, float | None]  # (soft, hard) at one level


def levels(task: Timeouts, queue: Timeouts, app: Timeouts) -> tuple[TaskOptions, Queue, AppDefaults]:
    return (TaskOptions(soft_timeout=task[0], hard_timeout=task[1]),
            Queue("q", soft_timeout=queue[0], hard_timeout=queue[1]),
            AppDefaults(soft_timeout=app[0], hard_timeout=app[1]))


# (label, task (soft, hard), queue (soft, hard), app (soft, hard), the conflict named)
CONFLICTS = [
    ("task soft above app hard", (100, N), (N, N), (N, 60),
     "soft_timeout 100s (from the task) is not below hard_timeout 60s (from the app)"),
    ("task soft equal queue hard", (60, N), (N, 60), (N, N),
     "soft_timeout 60s (from the task) is not below hard_timeout 60s (from queue 'q')"),
    ("app soft above task hard", (N, 20), (N, N), (30, 60),
     "soft_timeout 30s (from the app) is not below hard_timeout 20s (from the task)"),
    ("queue soft above task hard", (N, 5), (10, 20), (N, N),
     "soft_timeout 10s (from queue 'q') is not below hard_timeout 5s (from the task)"),
    ("queue soft above app hard", (N, N), (90.5, N), (N, 60),
     "soft_timeout 90.5s (from queue 'q') is not below hard_timeout 60s (from the app)"),
]


@pytest.mark.parametrize(("label", "task", "queue", "app", "conflict"), CONFLICTS, ids=[c[0] for c in CONFLICTS])
def test_a_soft_timeout_not_below_the_hard_one_across_levels_is_refused_naming_both(
    label: str, task: Timeouts, queue: Timeouts, app: Timeouts, conflict: str
) -> None:
    assert timeout_conflict(*levels(task, queue, app)) == conflict
    with pytest.raises(ConfigError) as refused:
        check_limits(*levels(task, queue, app), "task 'long'")
    assert str(refused.value) == (f"task 'long': {conflict}, so the soft timeout would never fire; lower "
                                  "soft_timeout, raise hard_timeout, or pass soft_timeout=None")


@pytest.mark.parametrize(("label", "task", "queue", "app", "conflict"), CONFLICTS, ids=[c[0] for c in CONFLICTS])
def test_at_run_time_a_conflict_drops_the_soft_timeout_and_says_why(
    label: str, task: Timeouts, queue: Timeouts, app: Timeouts, conflict: str
) -> None:
    limits = resolve_limits(*levels(task, queue, app))
    assert limits.soft_timeout is None and limits.conflict == conflict


@pytest.mark.parametrize(("task", "queue", "app"), [
    ((N, N), (N, N), (N, N)), ((10, N), (N, N), (N, 60)), ((N, N), (20, 30), (50, 60)), ((59.9, N), (N, 60), (N, N)),
], ids=repr)
def test_timeouts_that_work_together_are_accepted(task: Timeouts, queue: Timeouts, app: Timeouts) -> None:
    check_limits(*levels(task, queue, app), "task 'fine'")
    assert resolve_limits(*levels(task, queue, app)).conflict is None


def hexq_app(**options: Any) -> HexQ:
    return HexQ(url="memory://", broker=MemoryBroker(), clock=FakeClock(), **options)


def declare_task(**options: Any) -> None:
    def job() -> None: ...

    hexq_app().task(**options)(job)


ZERO_TIMEOUTS = [
    ("check, soft", lambda: check_timeouts(0, None, "HexQ"), "HexQ: soft_timeout of 0"),
    ("check, hard", lambda: check_timeouts(None, 0.0, "queue 'q'"), "queue 'q': hard_timeout of 0"),
    ("task options", lambda: TaskOptions(soft_timeout=0), "task options: soft_timeout of 0"),
    ("app defaults", lambda: AppDefaults(hard_timeout=0), "app defaults: hard_timeout of 0"),
    ("resolved limits", lambda: Limits(0.0, None, 0), "resolved limits: soft_timeout of 0"),
    ("queue", lambda: Queue("q", soft_timeout=0), "queue 'q': soft_timeout of 0"),
    ("queue, timedelta", lambda: Queue("q", hard_timeout=timedelta(0)), "queue 'q': hard_timeout of 0"),
    ("app", lambda: hexq_app(soft_timeout=0, hard_timeout=60), "HexQ: soft_timeout of 0"),
    ("app, queue", lambda: hexq_app(queues=[Queue("q", hard_timeout=0)]), "queue 'q': hard_timeout of 0"),
    ("task, soft", lambda: declare_task(soft_timeout=0), "task 'job': soft_timeout of 0"),
    ("task, hard", lambda: declare_task(hard_timeout=timedelta(seconds=0)), "task 'job': hard_timeout of 0"),
]


@pytest.mark.parametrize(("label", "declare", "message"), ZERO_TIMEOUTS, ids=[z[0] for z in ZERO_TIMEOUTS])
def test_a_timeout_of_zero_is_refused_where_it_is_declared(label: str, declare: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message} is not a timeout; use None for no timeout$"):
        declare()


def test_resolved_limits_are_floats_and_int() -> None:
    limits = resolve_limits(TaskOptions(soft_timeout=1, hard_timeout=2, max_retries=3), Queue("q"),
                            AppDefaults())
    assert type(limits.soft_timeout) is float and type(limits.hard_timeout) is float
    assert type(limits.max_retries) is int


def test_limits_refuse_hard_not_above_soft() -> None:
    with pytest.raises(ConfigError, match="hard_timeout"):
        Limits(soft_timeout=10.0, hard_timeout=10.0, max_retries=0)


def test_no_max_retries_anywhere_means_soft_timeout_is_not_retried() -> None:
    limits = resolve_limits(TaskOptions(), Queue("q"), AppDefaults())
    decision = after_failure("soft_timeout", limits, TaskOptions(), 0, None, 0.5)
    assert isinstance(decision, GiveUp)


def _limits(max_retries: int) -> Limits:
    return Limits(soft_timeout=None, hard_timeout=None, max_retries=max_retries)


RETRY_ON = TaskOptions(retry_on=(ConnectionError, KeyError), backoff=2.0, backoff_max=10.0)

# (label, kind, max_retries, retries_used, options, error, rand, expected)
AFTER_FAILURE = [
    ("soft timeout, first failure", "soft_timeout", 3, 0, TaskOptions(), None, 0.9, Retry(0.0, "soft timeout")),
    ("soft timeout, last retry", "soft_timeout", 3, 2, TaskOptions(), None, 0.9, Retry(0.0, "soft timeout")),
    ("soft timeout, retries used up", "soft_timeout", 3, 3, TaskOptions(), None, 0.9,
     GiveUp("soft timeout; gave up after 3 retries (max_retries=3)")),
    ("soft timeout, beyond max", "soft_timeout", 3, 7, TaskOptions(), None, 0.9,
     GiveUp("soft timeout; gave up after 7 retries (max_retries=3)")),
    ("soft timeout, max 0", "soft_timeout", 0, 0, TaskOptions(), None, 0.9,
     GiveUp("soft timeout; gave up after 0 retries (max_retries=0)")),
    ("hard timeout, first failure", "hard_timeout", 1, 0, TaskOptions(), None, 0.9, Retry(0.0, "hard timeout")),
    ("hard timeout, retries used up", "hard_timeout", 1, 1, TaskOptions(), None, 0.9,
     GiveUp("hard timeout; gave up after 1 retries (max_retries=1)")),
    ("exception without retry_on gives up at once", "exception", 5, 0, TaskOptions(), ValueError("boom"), 0.9,
     GiveUp("raised ValueError: boom")),
    ("exception not in retry_on gives up at once", "exception", 5, 0, RETRY_ON, ValueError("boom"), 0.9,
     GiveUp("raised ValueError: boom")),
    ("exception not in retry_on, retries used up", "exception", 1, 1, RETRY_ON, ValueError("v"), 0.9,
     GiveUp("raised ValueError: v")),
    ("retry_on, retry 0", "exception", 5, 0, RETRY_ON, ConnectionError("down"), 0.5,
     Retry(1.0, "raised ConnectionError: down")),
    ("retry_on, retry 1", "exception", 5, 1, RETRY_ON, ConnectionError("down"), 0.5,
     Retry(2.0, "raised ConnectionError: down")),
    ("retry_on, retry 2", "exception", 5, 2, RETRY_ON, ConnectionError("down"), 0.5,
     Retry(4.0, "raised ConnectionError: down")),
    ("retry_on, capped at backoff_max", "exception", 5, 3, RETRY_ON, ConnectionError("down"), 0.5,
     Retry(5.0, "raised ConnectionError: down")),
    ("retry_on, cap holds later", "exception", 9, 8, RETRY_ON, ConnectionError("down"), 0.25,
     Retry(2.5, "raised ConnectionError: down")),
    ("retry_on, rand 0 means no wait", "exception", 5, 2, RETRY_ON, ConnectionError("down"), 0.0,
     Retry(0.0, "raised ConnectionError: down")),
    ("retry_on subclass matches", "exception", 5, 0, RETRY_ON, ConnectionRefusedError("no"), 1.0,
     Retry(2.0, "raised ConnectionRefusedError: no")),
    ("retry_on second class matches", "exception", 5, 0, RETRY_ON, KeyError("k"), 1.0,
     Retry(2.0, "raised KeyError: 'k'")),
    ("retry_on, retries used up", "exception", 2, 2, RETRY_ON, ConnectionError("down"), 0.5,
     GiveUp("raised ConnectionError: down; gave up after 2 retries (max_retries=2)")),
    ("retry_on, max 0", "exception", 0, 0, RETRY_ON, ConnectionError("down"), 0.5,
     GiveUp("raised ConnectionError: down; gave up after 0 retries (max_retries=0)")),
    ("exception kind without error object", "exception", 5, 0, RETRY_ON, None, 0.5, GiveUp("exception")),
    ("crash is never retried here", "crash", 5, 0, TaskOptions(), None, 0.5, GiveUp("crash")),
]


@pytest.mark.parametrize(
    ("label", "kind", "max_retries", "used", "options", "error", "rand", "expected"),
    AFTER_FAILURE, ids=[a[0] for a in AFTER_FAILURE],
)
def test_after_failure(label: str, kind: str, max_retries: int, used: int, options: TaskOptions,
                       error: BaseException | None, rand: float, expected: Retry | GiveUp) -> None:
    decision = after_failure(kind, _limits(max_retries), options, used, error, rand)  # type: ignore[arg-type]
    assert decision == expected


def test_backoff_sequence_doubles_until_capped() -> None:
    options = TaskOptions(retry_on=(OSError,), backoff=1.5, backoff_max=20.0)
    delays = []
    for used in range(7):
        decision = after_failure("exception", _limits(7), options, used, OSError(), 1.0)
        assert isinstance(decision, Retry)
        delays.append(decision.delay)
    assert delays == [1.5, 3.0, 6.0, 12.0, 20.0, 20.0, 20.0]


def test_jitter_stays_below_the_ceiling() -> None:
    options = TaskOptions(retry_on=(OSError,), backoff=4.0, backoff_max=600.0)
    for rand in (0.0, 0.1, 0.5, 0.999999):
        decision = after_failure("exception", _limits(3), options, 1, OSError(), rand)
        assert isinstance(decision, Retry)
        assert 0.0 <= decision.delay < 8.0
        assert decision.delay == pytest.approx(8.0 * rand)


def test_a_task_retried_until_max_retries_then_gives_up() -> None:
    options = TaskOptions(retry_on=(OSError,))
    decisions = [after_failure("exception", _limits(3), options, used, OSError("x"), 0.5) for used in range(5)]
    assert [type(d) for d in decisions] == [Retry, Retry, Retry, GiveUp, GiveUp]


def test_backoff_does_not_overflow_with_many_retries() -> None:
    options = TaskOptions(retry_on=(OSError,), backoff=1.0, backoff_max=600.0)
    decision = after_failure("exception", _limits(5000), options, 1100, OSError(), 0.5)
    assert decision == Retry(300.0, "raised OSError: ")


REDELIVERY = [
    (0, 5, True),
    (1, 5, True),
    (4, 5, True),
    (5, 5, False),
    (6, 5, False),
    (0, 1, True),
    (1, 1, False),
]


@pytest.mark.parametrize(("crashes", "max_deliveries", "runs"), REDELIVERY)
def test_on_redelivery_thresholds(crashes: int, max_deliveries: int, runs: bool) -> None:
    verdict = on_redelivery(crashes, max_deliveries)
    assert verdict.run is runs
    if runs:
        assert verdict.reason == ""
    else:
        assert f"{crashes} times" in verdict.reason
        assert f"max_deliveries={max_deliveries}" in verdict.reason
