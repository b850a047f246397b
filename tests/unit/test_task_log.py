"""The line logged when a task finishes (core/services/task_log.py): one per run, whatever the outcome."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from test_runner import make_world

from hexq import ConfigError, HexQ
from hexq.core.errors import SoftTimeout
from hexq.core.message import TaskMessage
from hexq.entrypoints.cli import build_parser
from hexq.entrypoints.logs import FORMAT, TaskContextFilter


class Lines:
    """The records at INFO or above from hexq's loggers, as a worker logging at INFO would show them."""

    def __init__(self, caplog: pytest.LogCaptureFixture) -> None:
        self._caplog = caplog
        caplog.set_level(logging.INFO, logger="hexq")

    def __iter__(self) -> Iterator[logging.LogRecord]:
        return iter([r for r in self._caplog.records if r.name.startswith("hexq")])

    def __getitem__(self, index: int) -> logging.LogRecord:
        return list(self)[index]

    def clear(self) -> None:
        self._caplog.clear()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture) -> Lines:
    return Lines(caplog)


def shown(records: Lines) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in records]


def test_a_success_is_one_info_line_with_the_name_id_queue_attempt_and_duration(
    lines: Lines,
) -> None:
    world = make_world()
    world.task("slowish", lambda: world.clock.advance(0.0034))
    world.send("slowish", task_id="18ed42")
    world.run()
    assert shown(lines) == [("INFO", "slowish[18ed42] succeeded in 0.003 s (queue default, attempt 1)")]
    [record] = lines
    assert record.name == "hexq.task"
    fields = ("task_name", "task_id", "task_queue", "task_attempt", "task_outcome")
    assert tuple(getattr(record, f) for f in fields) == ("slowish", "18ed42", "default", 1, "succeeded")
    assert record.task_duration == pytest.approx(0.0034)  # type: ignore[attr-defined]


def test_log_tasks_false_drops_the_success_line_and_keeps_failures(lines: Lines) -> None:
    world = make_world(log_tasks=False)

    def boom() -> None:
        raise ValueError("boom")

    world.task("boom", boom)
    world.send("add", 1, 2, task_id="ok")
    world.run()
    assert shown(lines) == []
    world.send("boom", task_id="bad")
    world.run()
    assert shown(lines) == [("ERROR", "boom[bad] failed in 0.000 s (queue default, attempt 1): raised ValueError: "
                                      "boom; dead-lettered")]


def test_a_failure_that_is_retried_is_one_error_line_with_its_traceback_and_the_retry(
    lines: Lines,
) -> None:
    world = make_world()

    def flaky() -> None:
        raise ConnectionError("down")

    world.task("flaky", flaky, retry_on=(ConnectionError,), max_retries=2, backoff=4.0)
    world.send("flaky", task_id="f1")
    world.run()
    # rand is 0.5: the first retry waits half of backoff * 2**0.
    assert shown(lines) == [("ERROR", "flaky[f1] failed in 0.000 s (queue default, attempt 1): raised "
                                      "ConnectionError: down; retrying in 2.000 s")]
    [record] = lines
    assert record.exc_info is not None and isinstance(record.exc_info[1], ConnectionError)
    assert record.task_outcome == "retried"  # type: ignore[attr-defined]
    lines.clear()
    world.clock.advance(2.0)
    world.run()
    world.clock.advance(4.0)
    world.run()
    assert shown(lines) == [
        ("ERROR", "flaky[f1] failed in 0.000 s (queue default, attempt 2): raised ConnectionError: down; "
                  "retrying in 4.000 s"),
        ("ERROR", "flaky[f1] failed in 0.000 s (queue default, attempt 3): raised ConnectionError: down; gave up "
                  "after 2 retries (max_retries=2); dead-lettered"),
    ]
    assert lines[-1].task_outcome == "dead_lettered"  # type: ignore[attr-defined]


def test_a_soft_timeout_is_one_warning_line(lines: Lines) -> None:
    world = make_world(max_retries=1)

    def slow() -> None:
        world.clock.advance(1.0)
        raise SoftTimeout("alarm")  # what the SIGALRM handler raises in a worker child

    world.task("slow", slow, soft_timeout=1.0)
    world.send("slow", task_id="s1")
    world.run()
    world.run()
    assert shown(lines) == [
        ("WARNING", "slow[s1] timed out in 1.000 s (queue default, attempt 1): soft timeout; retrying at once"),
        ("WARNING", "slow[s1] timed out in 1.000 s (queue default, attempt 2): soft timeout; gave up after 1 "
                    "retries (max_retries=1); dead-lettered"),
    ]
    assert all(r.exc_info is None for r in lines)


def test_a_hard_kill_recorded_by_the_worker_parent_is_one_warning_line_giving_the_hard_timeout(
    lines: Lines,
) -> None:
    world = make_world(max_retries=1)
    world.task("stuck", lambda: None, hard_timeout=60.0)
    world.send("stuck", task_id="h1")
    world.runner.fail_outside(world.reserve(), "hard_timeout", consumer=world.runner.consumer)
    world.runner.fail_outside(world.reserve(), "hard_timeout")
    assert shown(lines) == [
        ("WARNING", "stuck[h1] hard-killed after 60.000 s (queue default, attempt 1): hard timeout; retrying at "
                    "once"),
        ("WARNING", "stuck[h1] hard-killed after 60.000 s (queue default, attempt 2): hard timeout; gave up after 1 "
                    "retries (max_retries=1); dead-lettered"),
    ]


def test_a_failed_broadcast_says_it_is_not_retried(lines: Lines) -> None:
    world = make_world()

    def boom() -> None:
        raise ConnectionError("x")

    world.task("boom", boom, retry_on=(ConnectionError,), max_retries=5)
    world.send("boom", task_id="b1", broadcast=True)
    world.run()
    assert shown(lines) == [("ERROR", "boom[b1] failed in 0.000 s (queue default, attempt 1): raised "
                                      "ConnectionError: x; a broadcast is not retried; dead-lettered")]
    assert world.dead_reasons() == ["broadcast task failed"]


def test_the_attempt_counts_the_crashes_before_it(lines: Lines) -> None:
    world = make_world()
    world.send("add", 1, 1, task_id="c1")
    world.reserve()
    world.broker.recover_consumer("child-1", ["c1"])  # the process running it died
    world.run()
    assert shown(lines)[-1] == ("INFO", "add[c1] succeeded in 0.000 s (queue default, attempt 2)")


class Formatted(logging.Handler):
    """A worker's handler (its filter and format), keeping the formatted lines."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(TaskContextFilter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_the_worker_format_does_not_repeat_the_task_on_its_finish_line(lines: Lines) -> None:
    world = make_world()
    handler = Formatted()
    logging.getLogger("hexq").addHandler(handler)

    def chatty() -> None:
        logging.getLogger("hexq.worker").info("inside")

    world.task("chatty", chatty)
    world.send("chatty", task_id="k1")
    try:
        world.run()
    finally:
        logging.getLogger("hexq").removeHandler(handler)
    inside, finish = (line.split("] ", 1)[1] for line in handler.lines)  # after the time, level and pid
    # Lines logged while the task runs carry its context; its finish line says it all in its message.
    assert inside == "hexq.worker task=chatty id=k1 queue=default attempt=1: inside"
    assert finish == "hexq.task: chatty[k1] succeeded in 0.000 s (queue default, attempt 1)"
    assert lines[-1].task_id == "k1"  # type: ignore[attr-defined]  # the filter keeps the line's own fields


def test_log_tasks_is_an_app_option_a_cli_flag_and_reaches_the_inline_runner(
    lines: Lines,
) -> None:
    assert HexQ(url="memory://").log_tasks is True
    with pytest.raises(ConfigError, match="log_tasks must be True or False, got 'no'"):
        HexQ(url="memory://", log_tasks="no")  # type: ignore[arg-type]
    parse = build_parser().parse_args
    assert parse(["worker", "--app=x:app"]).log_tasks is None  # the app's
    assert parse(["worker", "--app=x:app", "--no-log-tasks"]).log_tasks is False
    assert parse(["worker", "--app=x:app", "--log-tasks"]).log_tasks is True

    for enabled in (True, False):
        app = HexQ(url="memory://", log_tasks=enabled)
        ran: list[Any] = []
        job = app.task(lambda ran=ran: ran.append(1), name="job")
        job.delay()
        assert ran == [1]
    assert [m for _, m in shown(lines) if "job[" in m] == [m for _, m in shown(lines) if "succeeded" in m]
    assert len([m for _, m in shown(lines) if "job[" in m]) == 1


def test_a_failure_whose_retry_would_miss_its_deadline_says_it_expired(lines: Lines) -> None:
    world = make_world()

    def flaky() -> None:
        raise ConnectionError("down")

    world.task("flaky", flaky, retry_on=(ConnectionError,), max_retries=2, backoff=4.0)
    message = TaskMessage("e1", "flaky", "default", enqueued_at=world.clock.now(), expires=world.clock.now() + 1.0)
    world.put(world.codec.encode(message), "e1")
    world.run()
    # The retry would wait 2 s, past the deadline 1 s away: not retried, and said so on the same line.
    assert shown(lines) == [("ERROR", "flaky[e1] failed in 0.000 s (queue default, attempt 1): raised ConnectionError:"
                                      " down; expired: its retry would start after its deadline; not retried")]
    assert lines[0].task_outcome == "expired"  # type: ignore[attr-defined]
