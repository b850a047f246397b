"""A ProcessControl that starts nothing and a board kept in a dict, for tests of the worker parent."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hexq.core.ports import ChildExit


@attrs.define
class MemoryBoard:
    """The RunningBoard kept in a dict: enough when parent and children share one process."""

    slots: dict[tuple[int, int], tuple[str, float]] = attrs.field(factory=dict)
    cancels: dict[int, frozenset[str]] = attrs.field(factory=dict)

    def started(self, child: int, slot: int, task_id: str, hard_deadline: float) -> None:
        self.slots[(child, slot)] = (task_id, hard_deadline)

    def finished(self, child: int, slot: int) -> None:
        self.slots.pop((child, slot), None)

    def running(self, child: int) -> list[tuple[str, float]]:
        return [v for (c, _), v in sorted(self.slots.items()) if c == child]

    def reset(self, child: int) -> None:
        for key in [k for k in self.slots if k[0] == child]:
            del self.slots[key]
        self.cancels.pop(child, None)

    def request_cancel(self, child: int, task_ids: Sequence[str]) -> None:
        self.cancels[child] = frozenset(task_ids)

    def cancel_requests(self, child: int) -> frozenset[str]:
        return self.cancels.get(child, frozenset())


@attrs.define
class FakeProcessControl:
    """Children are recorded, never run; tests end them with ``exit(pid, ...)`` and set memory figures."""

    next_pid: int = 100
    started: dict[int, tuple[int, str]] = attrs.field(factory=dict)  # pid -> (index, consumer)
    alive: set[int] = attrs.field(factory=set)
    terminated: list[int] = attrs.field(factory=list)
    killed: list[int] = attrs.field(factory=list)
    interrupted: list[int] = attrs.field(factory=list)
    exits: list[ChildExit] = attrs.field(factory=list)
    memory: float = 10.0
    rss_by_pid: dict[int, int] = attrs.field(factory=dict)

    def start_child(self, index: int, consumer: str) -> int:
        self.next_pid += 1
        self.started[self.next_pid] = (index, consumer)
        self.alive.add(self.next_pid)
        return self.next_pid

    def exit(self, pid: int, code: int | None = 0, signal: int | None = None) -> None:
        """The child ``pid`` ends (as a test decides); the next ``reap`` reports it."""
        if pid in self.alive:
            self.alive.discard(pid)
            self.exits.append(ChildExit(pid, code, signal))

    def terminate(self, pid: int) -> None:
        self.terminated.append(pid)

    def kill(self, pid: int) -> None:
        self.killed.append(pid)
        self.exit(pid, None, 9)

    def interrupt(self, pid: int) -> None:
        self.interrupted.append(pid)

    def reap(self) -> list[ChildExit]:
        exits, self.exits = self.exits, []
        return exits

    def memory_percent(self) -> float:
        return self.memory

    def rss(self, pid: int) -> int:
        return self.rss_by_pid.get(pid, 0) if pid in self.alive else 0
