"""The worker parent as a state machine that performs no I/O, in the way h11 is.

Facts go in: the start, a tick with the time and what the running board shows, a child's exit, memory
readings, the result of each broker action, the cancellation requests a beat found, a stop request. Actions
come out (``parent_events``): spawn, terminate, kill or interrupt a child (to tell it of cancellations),
check memory, settle a dead child's tasks, beat (renew leases and heartbeat), finish. Broadcasts need
nothing from the parent beyond its heartbeat: the broker stores a copy in the worker's private queue for every
worker whose heartbeat is fresh (``Producer.broadcast``), and the children serve that queue first. The
driver (``hexq.entrypoints.parent_driver``) owns the threads, the lock, sleeping, forking and every broker
call; this class never waits and never calls a port, so its tests feed facts and assert actions.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from hexq.core.errors import BrokerError
from hexq.core.ports import ChildExit
from hexq.core.services.outage import OutageLog
from hexq.core.services.parent_events import (
    Action,
    Beat,
    BrokerAction,
    CheckMemory,
    Child,
    Finish,
    Kill,
    RequestCancel,
    Settle,
    Spawn,
    Terminate,
)
from hexq.core.services.respawn import RespawnPolicy

log = logging.getLogger("hexq.worker")

# Running task ids of one child, as the board shows them: (task id, hard deadline; 0.0 = none).
BoardRow = Sequence[tuple[str, float]]
SETTLE_RETRY_MAX = 1.0  # seconds between attempts to settle a dead child's tasks during an outage
SETTLE_GIVE_UP_AFTER_STOP = 10.0  # at shutdown: leave what is still unsettled to lease expiry
DEPTHS_EVERY_BEATS = 5


@attrs.frozen
class ParentConfig:
    worker_id: str
    concurrency: int
    lease_ms: int
    max_mem_percent: float | None = None
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    info: Mapping[str, Any] = attrs.field(factory=dict)  # host, pid, queues...; each beat adds the children
    report_depths: bool = False
    # How long a cancelled task may go on running once its child was told, before the child is killed.
    cancel_grace: float = 5.0


@attrs.define
class WorkerParent:
    config: ParentConfig
    children: dict[int, Child] = attrs.field(factory=dict)  # by index
    respawns: RespawnPolicy = attrs.field(factory=RespawnPolicy)
    stopping: bool = False
    finished: bool = False
    _spawned: int = 0
    _next_beat: float = 0.0
    _beats: int = 0
    _next_memory_check: float = 0.0
    _stop_deadline: float | None = None
    _unsettled: list[tuple[float, Settle]] = attrs.field(factory=list)  # (when to try again, what)
    _settle_delay: float = 0.0
    _settling: int = 0  # Settle actions handed out and not completed yet
    _finishing: bool = False
    _outage: OutageLog = attrs.field(factory=lambda: OutageLog(log))

    # -- facts ---------------------------------------------------------------------------------------
    def start(self, now: float) -> list[Action]:
        log.info("worker %s starting %d children", self.config.worker_id, self.config.concurrency)
        return [self._spawn(index) for index in range(self.config.concurrency)]

    def spawned(self, index: int, consumer: str, pid: int, now: float) -> None:
        self.children[index] = Child(index, consumer, pid, started_at=now)

    def tick(self, now: float, wall_ms: int, board: Mapping[int, BoardRow]) -> list[Action]:
        actions: list[Action] = self._hard_timeouts(now, board) + self._cancel_overruns(now, board)
        if not self.stopping:
            actions += [self._spawn(index) for index in self.respawns.due(now)]
        actions += self._due_settles(now)
        if now >= self._next_beat:
            self._next_beat = now + self.config.heartbeat_interval
            actions.append(self._beat(wall_ms))
        if now >= self._next_memory_check:
            self._next_memory_check = now + self.config.heartbeat_interval
            actions += self._slow_terminations(now)
            if self._wants_memory():
                actions.append(CheckMemory())
        if self.stopping:
            actions += self._stop_progress(now)
        return actions

    def exited(self, exit_: ChildExit, board_row: BoardRow, now: float) -> list[Action]:
        """A child ended; ``board_row`` is what the board showed it running, read after it died."""
        child = next((c for c in self.children.values() if c.pid == exit_.pid), None)
        if child is None:
            return []
        del self.children[child.index]
        running = [task_id for task_id, _ in board_row]
        hard = child.hard_killed_for
        self._log_exit(child, exit_, running)
        actions: list[Action] = [self._settle(Settle(child.consumer, tuple(t for t in running if t != hard), hard))]
        if not self.stopping and self.respawns.exited(child.index, exit_, now - child.started_at, now):
            actions.append(self._spawn(child.index))
        return actions

    def cancel_requested(self, requests: Mapping[str, str], now: float) -> list[Action]:
        """A beat found these cancellation requests (task id -> the consumer that owns it) for the children's
        tasks. Each child holding some is told (again at every beat while they last: a request that reached
        it a moment too early or too late is heard the next time); one that no longer holds any is
        forgotten."""
        actions: list[Action] = []
        for child in self.children.values():
            wanted = sorted(task_id for task_id, consumer in requests.items() if consumer == child.consumer)
            child.cancelling = {task_id: child.cancelling.get(task_id) for task_id in wanted}
            if wanted and child.cancel_killed_for is None and child.hard_killed_for is None:
                actions.append(RequestCancel(child.index, child.pid, tuple(wanted)))
        return actions

    def memory(self, percent: float, rss_by_pid: Mapping[int, int], now: float) -> list[Action]:
        limit = self.config.max_mem_percent
        if limit is None or percent < limit or not self._wants_memory():
            return []
        biggest = max(self.children.values(), key=lambda c: rss_by_pid.get(c.pid, 0))
        log.warning("memory at %.1f%% >= max_mem_percent %.1f%%: recycling child %d (pid %d)", percent, limit,
                    biggest.index, biggest.pid)
        biggest.terminating_since = now
        return [Terminate(biggest.pid)]

    def completed(self, action: BrokerAction, error: BaseException | None, now: float) -> list[Action]:
        """The driver carried out ``action``; ``error`` is the broker error it met, if any."""
        if error is None:
            self._outage.succeeded(now)
        elif isinstance(error, BrokerError):
            self._outage.failed(now, error)
        if isinstance(action, Settle):
            self._settled(action, error, now)
        elif isinstance(action, Finish):
            self.finished = True
            log.info("worker %s stopped", self.config.worker_id)
        return []

    def stop(self, now: float) -> list[Action]:
        if self.stopping:
            return []
        self.stopping = True
        self._stop_deadline = now + self.config.shutdown_timeout
        log.info("worker %s stopping: asking %d children to finish", self.config.worker_id, len(self.children))
        for child in self.children.values():
            child.terminating_since = now
        return [Terminate(child.pid) for child in self.children.values()]

    # -- decisions -----------------------------------------------------------------------------------
    def _spawn(self, index: int) -> Spawn:
        self._spawned += 1
        return Spawn(index, f"{self.config.worker_id}.{index}.{self._spawned}")

    def _hard_timeouts(self, now: float, board: Mapping[int, BoardRow]) -> list[Action]:
        actions: list[Action] = []
        for child in self.children.values():
            if child.hard_killed_for is not None:
                continue
            for task_id, hard in board.get(child.index, ()):
                if hard and now >= hard:
                    log.error("task %s ran past its hard timeout: killing child %d (pid %d)", task_id, child.index,
                              child.pid)
                    child.hard_killed_for = task_id
                    actions.append(Kill(child.pid))
                    break
        return actions

    def _cancel_overruns(self, now: float, board: Mapping[int, BoardRow]) -> list[Action]:
        """A cancelled task still running ``cancel_grace`` after it was first seen running since the request
        (it swallowed TaskCancelled, or blocks the signal) is stopped the hard way: its child is killed. The
        task, marked cancelled, is then discarded by the settlement, not put back."""
        actions: list[Action] = []
        for child in self.children.values():
            if not child.cancelling or child.cancel_killed_for is not None or child.hard_killed_for is not None:
                continue
            running = {task_id for task_id, _ in board.get(child.index, ())}
            for task_id, since in child.cancelling.items():
                if task_id not in running:
                    continue
                if since is None:
                    child.cancelling[task_id] = since = now
                if now - since >= self.config.cancel_grace:
                    log.error("task %s still runs %.1fs after its cancellation was requested: killing child %d "
                              "(pid %d)", task_id, now - since, child.index, child.pid)
                    child.cancel_killed_for = task_id
                    actions.append(Kill(child.pid))
                    break
        return actions

    def _wants_memory(self) -> bool:
        # One recycling at a time: the memory of a child that is exiting is about to be returned.
        return (self.config.max_mem_percent is not None and bool(self.children) and not self.stopping
                and all(c.terminating_since is None for c in self.children.values()))

    def _slow_terminations(self, now: float) -> list[Action]:
        if self.stopping:
            return []  # the shutdown deadline decides
        slow = [c for c in self.children.values() if c.terminating_since is not None
                and now - c.terminating_since > self.config.shutdown_timeout]
        for child in slow:
            log.error("child %d (pid %d) did not exit within %.0fs: killing it", child.index, child.pid,
                      self.config.shutdown_timeout)
        return [Kill(c.pid) for c in slow]

    def _stop_progress(self, now: float) -> list[Action]:
        assert self._stop_deadline is not None
        if self.children:
            if now < self._stop_deadline:
                return []
            late = [c for c in self.children.values() if not c.killed_at_stop]
            for child in late:
                log.error("child %d (pid %d) still running after %.0fs: killing it", child.index, child.pid,
                          self.config.shutdown_timeout)
                child.killed_at_stop = True  # killed once; its running tasks are recovered as crashes
            return [Kill(c.pid) for c in late]
        unsettled = self._settling or self._unsettled
        if self._finishing or (unsettled and now < self._stop_deadline + SETTLE_GIVE_UP_AFTER_STOP):
            return []
        self._finishing = True
        if unsettled:
            log.warning("leaving %d dead child(ren)'s tasks to lease expiry: the broker is unreachable",
                        len(self._unsettled) + self._settling)
        return [Finish()]

    def _beat(self, wall_ms: int) -> Beat:
        self._beats += 1
        children = sorted(self.children.values(), key=lambda c: c.index)
        info = json.dumps({**self.config.info, "children": [c.pid for c in children]})
        return Beat(tuple(c.consumer for c in children), wall_ms + self.config.lease_ms, info, wall_ms,
                    self.config.report_depths and self._beats % DEPTHS_EVERY_BEATS == 0)

    def _settle(self, action: Settle) -> Settle:
        self._settling += 1
        return action

    def _settled(self, action: Settle, error: BaseException | None, now: float) -> None:
        self._settling -= 1
        if error is None:
            self._settle_delay = 0.0
            return
        # The consumer's lease is no longer renewed, so its tasks come back when it expires anyway; until then
        # try again with a growing pause.
        self._settle_delay = min(SETTLE_RETRY_MAX, max(0.1, self._settle_delay * 2))
        self._unsettled.append((now + self._settle_delay, action))

    def _due_settles(self, now: float) -> list[Action]:
        due = [action for when, action in self._unsettled if when <= now]
        self._unsettled = [(when, action) for when, action in self._unsettled if when > now]
        return [self._settle(action) for action in due]

    def _log_exit(self, child: Child, exit_: ChildExit, running: list[str]) -> None:
        if exit_.code == 0 and not running:
            log.info("child %d (pid %d) exited", child.index, child.pid)
        elif child.cancel_killed_for is not None:
            log.warning("child %d (pid %d) killed: its cancelled task %s did not stop; the task is dropped, its "
                        "other tasks go back to their queues", child.index, child.pid, child.cancel_killed_for)
        elif child.hard_killed_for is None:
            how = f"signal {exit_.signal}" if exit_.signal else f"exit code {exit_.code}"
            log.warning("child %d (pid %d) died (%s) while running %s", child.index, child.pid, how,
                        running or "nothing")
