"""The worker parent: keeps ``concurrency`` children alive, enforces hard timeouts, renews leases,
recycles children, relays broadcasts, and makes sure a dead child's tasks go back to their queues.

Two halves that never wait on each other in production:

- ``watch()`` looks after the processes (hard deadlines, exits, replacements, memory) and never calls the
  broker, so a slow or black-holed Redis cannot delay a hard timeout;
- ``chores()`` does everything that talks to the broker (broadcast relay, heartbeats and lease renewal,
  recording hard timeouts, putting a dead child's tasks back), retrying through outages.

The worker entrypoint (``hexq.entrypoints.worker``) runs ``watch`` on the main thread and ``chores`` on a
thread of its own; ``step()`` runs both once, for tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import attrs

from hexq.core.errors import HexqError, MalformedPayloadError
from hexq.core.message import Codec
from hexq.core.ports import (
    BroadcastSubscription,
    Broker,
    ChildExit,
    Clock,
    Metrics,
    NoMetrics,
    OutgoingTask,
    ProcessControl,
    RunningBoard,
)
from hexq.core.registry import Registry
from hexq.core.services.runner import TaskRunner

log = logging.getLogger("hexq.worker")


def broadcast_queue(worker_id: str) -> str:
    """The worker's private queue for broadcasts; '@' cannot appear in a user queue name."""
    return f"@broadcast.{worker_id}"


@attrs.frozen
class SupervisorConfig:
    worker_id: str
    concurrency: int
    slots: int
    lease_ms: int
    max_mem_percent: float | None = None
    shutdown_timeout: float = 30.0
    heartbeat_interval: float = 1.0
    tick: float = 0.02
    info: dict[str, Any] = attrs.field(factory=dict)


# A child that dies this soon after starting, again and again, is crash-looping (a broken deploy, a
# refused password): it is restarted after a growing pause instead of at once.
FAST_DEATH_SECONDS = 2.0
SIGTERM, SIGKILL = 15, 9  # POSIX signal numbers, as reported in ChildExit (the core does not import signal)
RESPAWN_BACKOFF_MAX = 30.0


@attrs.define
class Child:
    index: int
    pid: int
    consumer: str
    started_at: float = 0.0
    terminating_since: float | None = None


@attrs.frozen
class DeadChild:
    """A child that exited, waiting for ``chores`` to settle its tasks with the broker."""

    consumer: str
    crashed: tuple[str, ...]  # task ids it was running when it died
    hard_timed_out: str | None = None  # the task it was killed for, recorded as a failed attempt


# child_main(index, consumer) runs in the new process and returns its exit code.
ChildMain = Callable[[int, str], int]


@attrs.define
class Supervisor:
    registry: Registry
    codec: Codec
    broker: Broker
    clock: Clock
    processes: ProcessControl
    config: SupervisorConfig
    child_main: ChildMain
    rand: Callable[[], float]
    metrics: Metrics = attrs.field(factory=NoMetrics)
    served: tuple[str, ...] = ()  # queues whose depths are reported to metrics
    stopping: bool = False
    children: dict[int, Child] = attrs.field(factory=dict)  # by index
    hard_killed: dict[int, str] = attrs.field(factory=dict)  # pid -> task id that ran past its hard timeout
    unrecovered: list[DeadChild] = attrs.field(factory=list)
    # Shared by the watch and chores halves when they run on two threads (the entrypoint passes a Lock).
    lock: AbstractContextManager[Any] = attrs.field(factory=nullcontext)
    spawned: int = 0
    board: RunningBoard | None = None
    _subscription: BroadcastSubscription | None = None
    _next_beat: float = 0.0
    _fast_deaths: dict[int, int] = attrs.field(factory=dict)  # index -> consecutive quick deaths
    _respawn_at: dict[int, float] = attrs.field(factory=dict)  # index -> when to start it again
    _next_watch: float = 0.0
    _next_subscribe: float = 0.0
    _outage_logged: bool = False
    _next_recovery: float = 0.0
    _recovery_delay: float = 0.0
    _recovery_failing: bool = False
    _beats: int = 0

    def request_stop(self) -> None:
        self.stopping = True

    def start(self) -> None:
        self.board = self.processes.board(self.config.concurrency, self.config.slots)
        self._subscribe()
        for index in range(self.config.concurrency):
            self._spawn(index)
        log.info("worker %s started %d children", self.config.worker_id, self.config.concurrency)

    def step(self) -> None:
        """Both halves once, on one thread (tests; the worker entrypoint runs them on two threads)."""
        self.watch()
        self.chores()

    def watch(self) -> None:
        """The process half: no broker calls."""
        self._enforce_hard_timeouts()
        self._reap()
        now = self.clock.monotonic()
        for index, due in list(self._respawn_at.items()):
            if now >= due and not self.stopping:
                del self._respawn_at[index]
                self._spawn(index)
        if now >= self._next_watch:
            self._next_watch = now + self.config.heartbeat_interval
            self._check_memory()
            self._escalate_slow_terminations()

    def chores(self) -> None:
        """The broker half: settle dead children, beat, then relay a broadcast (or wait ``tick`` for one)."""
        self._retry_recoveries()
        now = self.clock.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.config.heartbeat_interval
            self._heartbeat()
            self._report_depths()
        self._relay_broadcast()

    # -- children ----------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        self.spawned += 1
        consumer = f"{self.config.worker_id}.{index}.{self.spawned}"
        assert self.board is not None
        self.board.reset(index)
        pid = self.processes.start_child(lambda: self.child_main(index, consumer))
        with self.lock:
            self.children[index] = Child(index, pid, consumer, started_at=self.clock.monotonic())
        # No lease renewal here (no broker calls on this half): each reservation sets its own lease.

    def _reap(self) -> None:
        for exit_ in self.processes.reap():
            child = next((c for c in list(self.children.values()) if c.pid == exit_.pid), None)
            if child is None:
                continue
            assert self.board is not None
            running = [task_id for task_id, _, _ in self.board.running(child.index)]
            hard = self.hard_killed.pop(child.pid, None)
            crashed = tuple(t for t in running if t != hard)
            if exit_.code == 0 and not running:
                log.info("child %d (pid %d) exited", child.index, child.pid)
            elif hard is None:
                how = f"signal {exit_.signal}" if exit_.signal else f"exit code {exit_.code}"
                log.warning("child %d (pid %d) died (%s) while running %s", child.index, child.pid, how,
                            running or "nothing")
            with self.lock:
                self.unrecovered.append(DeadChild(child.consumer, crashed, hard))
                del self.children[child.index]
            if not self.stopping:
                self._replace(child, exit_)

    def _replace(self, child: Child, exit_: ChildExit) -> None:
        lived = self.clock.monotonic() - child.started_at
        # Only a child that ends itself soon after starting is crash-looping (an import error, a refused
        # password). One killed from outside (the OOM killer, an operator, a hard timeout) is replaced at once.
        killed = exit_.signal in (SIGKILL, SIGTERM)
        if exit_.code == 0 or killed or lived >= FAST_DEATH_SECONDS:
            self._fast_deaths.pop(child.index, None)
            self._spawn(child.index)
            return
        deaths = self._fast_deaths.get(child.index, 0) + 1
        self._fast_deaths[child.index] = deaths
        if deaths == 1:
            self._spawn(child.index)
            return
        delay = min(RESPAWN_BACKOFF_MAX, 0.5 * 2 ** (deaths - 2))
        log.error("child %d died %d times in a row within %.0fs of starting; starting it again in %.1fs",
                  child.index, deaths, FAST_DEATH_SECONDS, delay)
        self._respawn_at[child.index] = self.clock.monotonic() + delay

    def _settle(self, dead: DeadChild) -> None:
        """Record a hard timeout as a failed attempt, then put the dead child's other tasks back."""
        if dead.hard_timed_out is not None:
            payload = self.broker.fetch_payload(dead.hard_timed_out)
            runner = TaskRunner(self.registry, self.codec, self.broker, self.clock, dead.consumer, self.rand,
                                metrics=self.metrics)
            runner.fail_outside(dead.hard_timed_out, payload, "hard_timeout")
        count = self.broker.recover_consumer(dead.consumer, list(dead.crashed))
        self.metrics.recovered(count)
        if count:
            log.warning("put %d task(s) of %s back in their queues", count, dead.consumer)

    def _retry_recoveries(self, force: bool = False) -> None:
        now = self.clock.monotonic()
        if not self.unrecovered or (now < self._next_recovery and not force):
            return
        with self.lock:
            pending, self.unrecovered = self.unrecovered, []
        for index, dead in enumerate(pending):
            try:
                self._settle(dead)
            except HexqError as exc:
                # The consumer's lease is no longer renewed, so its tasks come back when it expires anyway.
                # Retry with a growing pause, and say so once per outage rather than on every attempt.
                self._recovery_delay = min(self.config.heartbeat_interval, max(0.1, self._recovery_delay * 2))
                self._next_recovery = now + self._recovery_delay
                if not self._recovery_failing:
                    log.warning("could not put back the tasks of %s yet (%s); retrying", dead.consumer, exc)
                    self._recovery_failing = True
                with self.lock:
                    self.unrecovered[:0] = pending[index:]
                return
        if self._recovery_failing:
            log.info("put back the tasks of dead children after the broker came back")
        self._recovery_failing = False
        self._recovery_delay = 0.0

    def _enforce_hard_timeouts(self) -> None:
        assert self.board is not None
        now = self.processes.monotonic()
        for child in list(self.children.values()):
            if child.pid in self.hard_killed:
                continue
            for task_id, _, hard in self.board.running(child.index):
                if hard and now >= hard:
                    log.error("task %s ran past its hard timeout: killing child %d (pid %d)", task_id,
                              child.index, child.pid)
                    self.hard_killed[child.pid] = task_id
                    self.processes.kill(child.pid)
                    break

    def _check_memory(self) -> None:
        limit = self.config.max_mem_percent
        if limit is None or any(c.terminating_since is not None for c in self.children.values()):
            return
        used = self.processes.memory_percent()
        if used < limit or not self.children:
            return
        biggest = max(self.children.values(), key=lambda c: self.processes.rss(c.pid))
        log.warning("memory at %.1f%% >= max_mem_percent %.1f%%: recycling child %d (pid %d)", used, limit,
                    biggest.index, biggest.pid)
        biggest.terminating_since = self.clock.monotonic()
        self.processes.terminate(biggest.pid)

    def _escalate_slow_terminations(self) -> None:
        now = self.clock.monotonic()
        for child in self.children.values():
            if child.terminating_since is not None and now - child.terminating_since > self.config.shutdown_timeout:
                log.error("child %d (pid %d) did not exit within %.0fs: killing it", child.index, child.pid,
                          self.config.shutdown_timeout)
                self.processes.kill(child.pid)

    # -- broker chores -----------------------------------------------------------------------------
    def _lease_until(self) -> int:
        return int(self.clock.now() * 1000) + self.config.lease_ms

    def _heartbeat(self) -> None:
        with self.lock:
            children = list(self.children.values())
        consumers = [c.consumer for c in children]
        info = dict(self.config.info, children=[c.pid for c in children])
        ok = self._safely(self.broker.renew_leases, consumers, self._lease_until())
        ok = ok and self._safely(self.broker.heartbeat, self.config.worker_id, json.dumps(info),
                                 int(self.clock.now() * 1000))
        if ok and self._outage_logged:
            log.info("broker reachable again")
            self._outage_logged = False

    def _report_depths(self) -> None:
        self._beats += 1
        if not self.served or isinstance(self.metrics, NoMetrics) or self._beats % 5:
            return
        try:
            stats = self.broker.queue_stats(self.served)
        except HexqError:
            return
        self.metrics.queue_depths({s.name: s.pending for s in stats}, {s.name: s.eta for s in stats},
                                  {s.name: s.in_flight for s in stats})

    def _safely(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
            return True
        except HexqError as exc:
            if not self._outage_logged:
                log.warning("broker call failed (%s); the worker keeps going and retries", exc)
                self._outage_logged = True
            return False

    def _subscribe(self) -> None:
        try:
            self._subscription = self.broker.subscribe_broadcast()
        except HexqError as exc:
            log.warning("cannot subscribe to broadcasts yet (%s)", exc)
            self._subscription = None
            self._next_subscribe = self.clock.monotonic() + 2.0

    def _relay_broadcast(self) -> None:
        if self._subscription is None:
            if self.clock.monotonic() >= self._next_subscribe:
                self._subscribe()
            if self._subscription is None:
                self.clock.sleep(self.config.tick)
                return
        try:
            payload = self._subscription.get(self.config.tick)
        except HexqError as exc:
            log.warning("broadcast subscription lost (%s); resubscribing", exc)
            self._close_subscription()
            self._next_subscribe = self.clock.monotonic() + 1.0
            return
        if payload is None:
            return
        try:
            message = self.codec.decode(payload)
        except MalformedPayloadError as exc:
            log.error("dropping a malformed broadcast: %s", exc)
            return
        # Through our private queue, under the same leases as any task: a child that is recycling or
        # crashes does not lose it.
        target = broadcast_queue(self.config.worker_id)
        # Every worker stores its own copy, so each copy needs its own storage id: acknowledging one
        # worker's copy must not delete another's.
        copy_id = f"{message.id}.{self.config.worker_id}"
        text = payload if isinstance(payload, str) else payload.decode()  # it decoded, so it is UTF-8
        if not self._safely(self.broker.enqueue, [OutgoingTask(copy_id, target, text)]):
            log.error("could not queue broadcast %s %s: broker unavailable", message.id, message.name)

    def _close_subscription(self) -> None:
        if self._subscription is not None:
            try:
                self._subscription.close()
            except Exception:
                pass
        self._subscription = None

    # -- stopping ----------------------------------------------------------------------------------
    def stop_children(self) -> None:
        """The watch half of shutdown: ask, wait up to ``shutdown_timeout``, then kill."""
        log.info("worker %s stopping: asking %d children to finish", self.config.worker_id, len(self.children))
        for child in list(self.children.values()):
            self.processes.terminate(child.pid)
        deadline = self.clock.monotonic() + self.config.shutdown_timeout
        while self.children and self.clock.monotonic() < deadline:
            self._enforce_hard_timeouts()
            self._reap()
            self.clock.sleep(0.02)
        for child in list(self.children.values()):
            log.error("child %d (pid %d) still running after %.0fs: killing it", child.index, child.pid,
                      self.config.shutdown_timeout)
            self.processes.kill(child.pid)
        while self.children:
            self._reap()
            if self.children:
                self.clock.sleep(0.01)

    def finish(self) -> None:
        """The broker half of shutdown, once every child is gone."""
        for _ in range(20):
            self._retry_recoveries(force=True)
            if not self.unrecovered:
                break
            self.clock.sleep(0.5)
        self._close_subscription()
        self._safely(self.broker.purge_queue, broadcast_queue(self.config.worker_id))
        self._safely(self.broker.forget_worker, self.config.worker_id)
        log.info("worker %s stopped", self.config.worker_id)

    def shutdown(self) -> None:
        self.stop_children()
        self.finish()


def served_queues(worker_id: str, queues: Sequence[str]) -> tuple[str, ...]:
    """What a child reserves from: its worker's broadcasts first, then the app's queues by priority."""
    return (broadcast_queue(worker_id), *queues)
