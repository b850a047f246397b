"""The task lifecycle state machine: every transition in the table, and every one that is not."""

from __future__ import annotations

import itertools

import pytest

from hexq.core.errors import HexqError
from hexq.core.lifecycle import TERMINAL, TRANSITIONS, Event, InvalidTransition, State, advance

EXPECTED = {
    (State.QUEUED, Event.RESERVE): State.RESERVED,
    (State.RESERVED, Event.START): State.RUNNING,
    (State.RESERVED, Event.RELEASE): State.QUEUED,
    (State.RESERVED, Event.WORKER_LOST): State.QUEUED,
    (State.RESERVED, Event.REJECT): State.DEAD,
    (State.RUNNING, Event.SUCCEED): State.DONE,
    (State.RUNNING, Event.FAIL_RETRYABLE): State.RETRY,
    (State.RUNNING, Event.FAIL_FINAL): State.DEAD,
    (State.RUNNING, Event.WORKER_LOST): State.QUEUED,
    (State.RETRY, Event.REQUEUE): State.QUEUED,
    (State.DEAD, Event.REQUEUE): State.QUEUED,
}


def test_table_is_exactly_the_documented_lifecycle() -> None:
    assert TRANSITIONS == EXPECTED


@pytest.mark.parametrize(("state", "event"), list(TRANSITIONS), ids=lambda p: p.value)
def test_every_transition_in_the_table(state: State, event: Event) -> None:
    assert advance(state, event) is TRANSITIONS[(state, event)]


INVALID = [pair for pair in itertools.product(State, Event) if pair not in TRANSITIONS]


@pytest.mark.parametrize(("state", "event"), INVALID, ids=lambda p: p.value)
def test_every_other_pair_raises_invalid_transition(state: State, event: Event) -> None:
    with pytest.raises(InvalidTransition) as info:
        advance(state, event)
    assert info.value.state is state and info.value.event is event
    assert str(info.value) == f"a task that is {state.value} cannot {event.value}"
    assert isinstance(info.value, HexqError)


def test_invalid_pairs_were_enumerated() -> None:
    assert len(INVALID) == len(State) * len(Event) - len(TRANSITIONS) > 0


def test_done_has_no_exits_and_dead_only_requeue() -> None:
    assert {State.DONE, State.DEAD} == TERMINAL
    assert [e for (s, e) in TRANSITIONS if s is State.DONE] == []
    # A dead letter leaves its terminal state only by an operator's explicit requeue.
    assert [e for (s, e) in TRANSITIONS if s is State.DEAD] == [Event.REQUEUE]


def test_every_state_is_reachable_from_queued() -> None:
    seen, frontier = {State.QUEUED}, [State.QUEUED]
    while frontier:
        state = frontier.pop()
        for (source, _), target in TRANSITIONS.items():
            if source is state and target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(State)


def test_every_non_terminal_state_can_reach_a_terminal_one() -> None:
    for start in set(State) - TERMINAL:
        seen, frontier = {start}, [start]
        while frontier:
            state = frontier.pop()
            for (source, _), target in TRANSITIONS.items():
                if source is state and target not in seen:
                    seen.add(target)
                    frontier.append(target)
        assert seen & TERMINAL, start


WALKS = [
    ("success", [Event.RESERVE, Event.START, Event.SUCCEED], State.DONE),
    ("retry then success", [Event.RESERVE, Event.START, Event.FAIL_RETRYABLE, Event.REQUEUE, Event.RESERVE,
                            Event.START, Event.SUCCEED], State.DONE),
    ("worker lost then success", [Event.RESERVE, Event.START, Event.WORKER_LOST, Event.RESERVE, Event.START,
                                  Event.SUCCEED], State.DONE),
    ("released at shutdown", [Event.RESERVE, Event.RELEASE], State.QUEUED),
    ("rejected", [Event.RESERVE, Event.REJECT], State.DEAD),
    ("dead then requeued", [Event.RESERVE, Event.START, Event.FAIL_FINAL, Event.REQUEUE], State.QUEUED),
]


@pytest.mark.parametrize(("label", "events", "final"), WALKS, ids=[w[0] for w in WALKS])
def test_walks(label: str, events: list[Event], final: State) -> None:
    state = State.QUEUED
    for event in events:
        state = advance(state, event)
    assert state is final


def test_done_task_cannot_start_again() -> None:
    with pytest.raises(InvalidTransition, match="a task that is done cannot start"):
        advance(State.DONE, Event.START)
