"""The task lifecycle as an explicit state machine, in one table that tests walk."""

from __future__ import annotations

import enum

from hexq.core.errors import HexqError


class State(enum.Enum):
    QUEUED = "queued"  # in a queue list, or waiting in an eta set
    RESERVED = "reserved"  # owned by a worker child under its lease, not started yet
    RUNNING = "running"
    DONE = "done"
    RETRY = "retry"  # waiting in an eta set (backoff) or queued again for another attempt
    DEAD = "dead"  # in the dead-letter list with its reason


class Event(enum.Enum):
    RESERVE = "reserve"
    START = "start"
    SUCCEED = "succeed"
    FAIL_RETRYABLE = "fail_retryable"
    FAIL_FINAL = "fail_final"
    RELEASE = "release"  # handed back unstarted (shutdown)
    WORKER_LOST = "worker_lost"  # the child died or its lease expired: back to the queue
    REJECT = "reject"  # undecodable, unknown task, too many crashes
    REQUEUE = "requeue"  # a retry becomes due, or an operator requeues a dead letter


TRANSITIONS: dict[tuple[State, Event], State] = {
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

TERMINAL = frozenset({State.DONE, State.DEAD})


class InvalidTransition(HexqError):
    def __init__(self, state: State, event: Event) -> None:
        super().__init__(f"a task that is {state.value} cannot {event.value}")
        self.state = state
        self.event = event


def advance(state: State, event: Event) -> State:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None
