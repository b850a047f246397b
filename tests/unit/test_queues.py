"""Queue specs, priority order, name validation and worker queue selection."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from hexq.core.errors import ConfigError, UnknownQueueError
from hexq.core.queues import Queue, QueueSet, check_queue_name

SPECS: list[tuple[str, Any, Queue]] = [
    ("Queue instance", Queue("a", priority=3, max_retries=2), Queue("a", priority=3, max_retries=2)),
    ("(priority, name)", (0, "a"), Queue("a", priority=0)),
    ("(name, priority)", ("a", 4), Queue("a", priority=4)),
    ("list form", [2, "a"], Queue("a", priority=2)),
    ("bare name", "a", Queue("a")),
]


@pytest.mark.parametrize(("label", "spec", "expected"), SPECS, ids=[s[0] for s in SPECS])
def test_create_accepts_wakaq_spec_forms(label: str, spec: Any, expected: Queue) -> None:
    assert Queue.create(spec) == expected


BAD_SPECS = [None, 5, ("a", "b"), (1, 2), (1, "a", 3), ("a",), {"name": "a"}, (True, "a"), ("a", 1.5)]


@pytest.mark.parametrize("spec", BAD_SPECS, ids=repr)
def test_create_refuses_other_shapes(spec: Any) -> None:
    with pytest.raises(ConfigError):
        Queue.create(spec)


def test_queue_timeouts_accept_timedelta_and_validate() -> None:
    queue = Queue("a", soft_timeout=timedelta(minutes=5), hard_timeout=360)
    assert (queue.soft_timeout, queue.hard_timeout) == (300.0, 360.0)


BAD_QUEUES: list[tuple[str, dict[str, Any], str]] = [
    ("negative soft", {"soft_timeout": -1}, "soft_timeout must be zero or positive"),
    ("negative hard", {"hard_timeout": timedelta(seconds=-1)}, "hard_timeout must be zero or positive"),
    ("hard equal soft", {"soft_timeout": 10, "hard_timeout": 10}, "hard_timeout .* greater than soft"),
    ("hard below soft", {"soft_timeout": 10, "hard_timeout": 5}, "queue 'a'"),
    ("soft as str", {"soft_timeout": "10"}, "seconds"),
    ("negative retries", {"max_retries": -1}, "max_retries"),
    ("bool retries", {"max_retries": True}, "max_retries"),
    ("str priority", {"priority": "1"}, "priority must be an int"),
    ("bool priority", {"priority": False}, "priority must be an int"),
]


@pytest.mark.parametrize(("label", "options", "message"), BAD_QUEUES, ids=[b[0] for b in BAD_QUEUES])
def test_queue_refuses_bad_options(label: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Queue("a", **options)


# -- priorities -------------------------------------------------------------------------------------


def test_queues_sorted_by_priority_lower_number_first() -> None:
    queues = QueueSet.build([(2, "low"), "plain", (0, "high"), ("med", 1)])
    assert queues.names == ["high", "med", "low", "plain"]
    assert [q.priority for q in queues.ordered] == [0, 1, 2, 3]


def test_wakaq_readme_queues() -> None:
    queues = QueueSet.build([
        (0, "a-high-priority-queue"),
        (1, "a-medium-priority-queue"),
        (2, "a-low-priority-queue"),
        Queue("another-queue", priority=3, max_retries=5, soft_timeout=300, hard_timeout=360),
        "default-lowest-priority-queue",
    ])
    assert queues.names == ["a-high-priority-queue", "a-medium-priority-queue", "a-low-priority-queue",
                            "another-queue", "default-lowest-priority-queue"]
    assert queues.default.name == "default-lowest-priority-queue"
    assert queues.get("another-queue").max_retries == 5


def test_bare_names_sort_after_every_numbered_queue_in_declaration_order() -> None:
    queues = QueueSet.build(["z-first", (5, "numbered"), "a-second", Queue("m-third")])
    assert queues.names == ["numbered", "z-first", "a-second", "m-third"]
    assert {q.priority for q in queues.ordered[1:]} == {6}


def test_default_queue_is_the_lowest_priority_one() -> None:
    assert QueueSet.build([(0, "high"), (9, "low"), (3, "mid")]).default.name == "low"
    assert QueueSet.build(["only"]).default.name == "only"
    assert QueueSet.build([(1, "b"), "plain1", "plain2"]).default.name == "plain2"


def test_equal_priorities_keep_declaration_order() -> None:
    assert QueueSet.build([(1, "b"), (1, "a"), (0, "c")]).names == ["c", "b", "a"]


def test_only_bare_names_keep_their_order() -> None:
    queues = QueueSet.build(["c", "a", "b"])
    assert queues.names == ["c", "a", "b"]
    assert queues.default.name == "b"


def test_no_queues_means_one_default_queue() -> None:
    queues = QueueSet.build([])
    assert queues.names == ["default"]
    assert queues.default.name == "default"


@pytest.mark.parametrize("specs", [["a", "a"], ["a", (1, "a")], [Queue("a"), ("a", 2), "b"]], ids=repr)
def test_duplicate_names_are_refused(specs: list[Any]) -> None:
    with pytest.raises(ConfigError, match=r"unique, repeated: \['a'\]"):
        QueueSet.build(specs)


# -- names ------------------------------------------------------------------------------------------

GOOD_NAMES = ["a", "high", "A-b_c.d", "0", "x" * 200, "default-lowest-priority-queue"]
BAD_NAMES = ["", "a:b", "a{b}", "{", "}", "has space", " lead", "tab\there", "x" * 201, "é", "a/b", "*"]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_valid_queue_names(name: str) -> None:
    assert check_queue_name(name) == name
    assert Queue(name).name == name


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_queue_names_are_refused_with_clear_message(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        Queue(name)
    message = str(info.value)
    assert repr(name) in message
    assert "letters, digits" in message and "1-200" in message


@pytest.mark.parametrize("name", [None, 5, b"abc"], ids=repr)
def test_non_string_queue_names_are_refused(name: Any) -> None:
    with pytest.raises(ConfigError, match="invalid queue name"):
        check_queue_name(name)


@pytest.mark.parametrize("name", ["high\n", "x" * 200 + "\n"], ids=repr)
def test_trailing_newline_is_not_a_valid_queue_name(name: str) -> None:
    with pytest.raises(ConfigError):
        Queue(name)


# -- selection --------------------------------------------------------------------------------------

QUEUES = QueueSet.build([(0, "high"), (1, "med"), (2, "low"), "default"])

SELECTIONS: list[tuple[str, list[str] | None, list[str], list[str]]] = [
    ("everything", None, [], ["high", "med", "low", "default"]),
    ("empty include means all", [], [], ["high", "med", "low", "default"]),
    ("include keeps priority order", ["default", "high"], [], ["high", "default"]),
    ("exclude", None, ["med", "default"], ["high", "low"]),
    ("include and exclude", ["high", "med"], ["high"], ["med"]),
]


@pytest.mark.parametrize(("label", "include", "exclude", "expected"), SELECTIONS,
                         ids=[s[0] for s in SELECTIONS])
def test_select(label: str, include: list[str] | None, exclude: list[str], expected: list[str]) -> None:
    assert QUEUES.select(include, exclude) == expected


@pytest.mark.parametrize(("include", "exclude"), [(["nope"], []), (None, ["nope"]), (["high"], ["nope"])])
def test_select_unknown_queue_raises(include: list[str] | None, exclude: list[str]) -> None:
    with pytest.raises(UnknownQueueError) as info:
        QUEUES.select(include, exclude)
    assert info.value.queue == "nope"
    assert info.value.known == ["high", "med", "low", "default"]
    assert "'nope'" in str(info.value)


def test_select_nothing_left_raises() -> None:
    with pytest.raises(ConfigError, match="no queue left"):
        QUEUES.select(["high"], ["high"])
    with pytest.raises(ConfigError, match="no queue left"):
        QUEUES.select(None, QUEUES.names)


def test_get_returns_queue_or_raises_unknown() -> None:
    assert QUEUES.get("low").priority == 2
    with pytest.raises(UnknownQueueError, match="known queues are"):
        QUEUES.get("Low")
