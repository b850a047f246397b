"""The worker parent: keeps ``concurrency`` children alive, enforces hard timeouts, renews leases,
recycles children, relays broadcasts, and makes sure a dead child's tasks go back to their queues."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from hexq.core.errors import HexqError, MalformedPayloadError
from hexq.core.message import Codec
from hexq.core.ports import (
    BroadcastSubscription,
    Broker,
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


@attrs.define
class Child:
    index: int
    pid: int
    consumer: str
    terminating_since: float | None = None


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
    unrecovered: list[tuple[str, list[str]]] = attrs.field(factory=list)
    spawned: int = 0
    board: RunningBoard | None = None
    _subscription: BroadcastSubscription | None = None
    _next_beat: float = 0.0
    _next_subscribe: float = 0.0
    _outage_logged: bool = False
    _beats: int = 0

    def request_stop(self) -> None:
        self.stopping = True

    def run(self) -> int:
        self.board = self.processes.board(self.config.concurrency, self.config.slots)
        self._subscribe()
        for index in range(self.config.concurrency):
            self._spawn(index)
        log.info("worker %s started %d children", self.config.worker_id, self.config.concurrency)
        while not self.stopping:
            self.step()
        self.shutdown()
        return 0

    def step(self) -> None:
        """One tick: relay a broadcast (or wait ``tick`` for one), then watch over the children."""
        self._relay_broadcast()
        self._enforce_hard_timeouts()
        self._reap()
        now = self.clock.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.config.heartbeat_interval
            self._heartbeat()
            self._report_depths()
            self._check_memory()
            self._retry_recoveries()
            self._escalate_slow_terminations()

    # -- children ----------------------------------------------------------------------------------
    def _spawn(self, index: int) -> None:
        self.spawned += 1
        consumer = f"{self.config.worker_id}.{index}.{self.spawned}"
        assert self.board is not None
        self.board.reset(index)
        pid = self.processes.start_child(lambda: self.child_main(index, consumer))
        self.children[index] = Child(index, pid, consumer)
        # A fresh lease at once: the child may reserve before our next heartbeat.
        self._safely(self.broker.renew_leases, [consumer], self._lease_until())

    def _reap(self) -> None:
        for exit_ in self.processes.reap():
            child = next((c for c in self.children.values() if c.pid == exit_.pid), None)
            if child is None:
                continue
            assert self.board is not None
            running = [task_id for task_id, _, _ in self.board.running(child.index)]
            hard = self.hard_killed.pop(child.pid, None)
            if hard is not None:
                self._fail_hard_timeout(child, hard)
                running = [t for t in running if t != hard]
            if exit_.code == 0 and not running:
                log.info("child %d (pid %d) exited", child.index, child.pid)
            elif hard is None:
                how = f"signal {exit_.signal}" if exit_.signal else f"exit code {exit_.code}"
                log.warning("child %d (pid %d) died (%s) while running %s", child.index, child.pid, how,
                            running or "nothing")
            self._recover(child.consumer, running)
            del self.children[child.index]
            if not self.stopping:
                self._spawn(child.index)

    def _recover(self, consumer: str, crashed: list[str]) -> None:
        try:
            count = self.broker.recover_consumer(consumer, crashed)
            self.metrics.recovered(count)
            if count:
                log.warning("put %d task(s) of %s back in their queues", count, consumer)
        except HexqError as exc:
            # The consumer's lease is no longer renewed, so its tasks come back when it expires anyway.
            log.warning("could not recover tasks of %s yet (%s); will retry", consumer, exc)
            self.unrecovered.append((consumer, crashed))

    def _retry_recoveries(self) -> None:
        pending, self.unrecovered = self.unrecovered, []
        for consumer, crashed in pending:
            self._recover(consumer, crashed)

    def _enforce_hard_timeouts(self) -> None:
        assert self.board is not None
        now = self.processes.monotonic()
        for child in self.children.values():
            if child.pid in self.hard_killed:
                continue
            for task_id, _, hard in self.board.running(child.index):
                if hard and now >= hard:
                    log.error("task %s ran past its hard timeout: killing child %d (pid %d)", task_id,
                              child.index, child.pid)
                    self.hard_killed[child.pid] = task_id
                    self.processes.kill(child.pid)
                    break

    def _fail_hard_timeout(self, child: Child, task_id: str) -> None:
        runner = TaskRunner(self.registry, self.codec, self.broker, self.clock, child.consumer, self.rand)
        try:
            payload = self.broker.fetch_payload(task_id)
            runner.fail_outside(task_id, payload, "hard_timeout")
        except HexqError as exc:
            log.warning("could not record the hard timeout of %s (%s); it will be redelivered", task_id, exc)

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
        consumers = [c.consumer for c in self.children.values()]
        info = dict(self.config.info, children=[c.pid for c in self.children.values()])
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
        if not self._safely(self.broker.enqueue, [OutgoingTask(copy_id, target, payload)]):
            log.error("could not queue broadcast %s %s: broker unavailable", message.id, message.name)

    def _close_subscription(self) -> None:
        if self._subscription is not None:
            try:
                self._subscription.close()
            except Exception:
                pass
        self._subscription = None

    # -- stopping ----------------------------------------------------------------------------------
    def shutdown(self) -> None:
        log.info("worker %s stopping: asking %d children to finish", self.config.worker_id, len(self.children))
        for child in self.children.values():
            self.processes.terminate(child.pid)
        deadline = self.clock.monotonic() + self.config.shutdown_timeout
        while self.children and self.clock.monotonic() < deadline:
            self._enforce_hard_timeouts()
            self._reap()
            self._renew_only()
            self.clock.sleep(0.02)
        for child in list(self.children.values()):
            log.error("child %d (pid %d) still running after %.0fs: killing it", child.index, child.pid,
                      self.config.shutdown_timeout)
            self.processes.kill(child.pid)
        while self.children:
            self._reap()
            if self.children:
                self.clock.sleep(0.01)
        self._retry_recoveries()
        self._close_subscription()
        self._safely(self.broker.purge_queue, broadcast_queue(self.config.worker_id))
        self._safely(self.broker.forget_worker, self.config.worker_id)
        log.info("worker %s stopped", self.config.worker_id)

    def _renew_only(self) -> None:
        now = self.clock.monotonic()
        if now >= self._next_beat:
            self._next_beat = now + self.config.heartbeat_interval
            self._safely(self.broker.renew_leases, [c.consumer for c in self.children.values()],
                         self._lease_until())


def served_queues(worker_id: str, queues: Sequence[str]) -> tuple[str, ...]:
    """What a child reserves from: its worker's broadcasts first, then the app's queues by priority."""
    return (broadcast_queue(worker_id), *queues)
