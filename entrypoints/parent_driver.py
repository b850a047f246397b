"""The one driver of the worker parent's state machine (``hexq.core.services.parent``).

It owns everything the machine must not do: the two threads, the lock between them, sleeping, starting and
signalling processes, and every broker call.

- The main thread watches processes every ``interval`` (20 ms): it reaps exits, reads the running board,
  feeds both to the machine with the time, and carries out process actions at once. It never calls the
  broker, so a slow or black-holed Redis cannot delay a hard timeout or the replacement of a child.
- The broker thread carries out broker actions in order and reports each result back to the machine.

The machine is not thread-safe: every call into it holds ``_lock``, and no I/O happens under the lock.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

from hexq.core.errors import HexqError
from hexq.core.ports import (
    Clock,
    Consumer,
    Delivery,
    Inspection,
    Metrics,
    ProcessControl,
    RunningBoard,
    Supervision,
)
from hexq.core.services.parent import WorkerParent
from hexq.core.services.parent_events import (
    Action,
    Beat,
    BrokerAction,
    CheckMemory,
    Finish,
    Kill,
    RequestCancel,
    Settle,
    Spawn,
    Terminate,
)
from hexq.core.services.tally import TallyBook

log = logging.getLogger("hexq.worker")

WATCH_INTERVAL = 0.02  # hard timeouts fire, and dead children are noticed, within about this much


class ParentBroker(Supervision, Consumer, Inspection, Protocol):
    """The broker roles a worker parent uses."""


# Records a task that ran past its hard timeout as a failed attempt of the dead consumer that owned it.
HardTimeoutRecorder = Callable[[Delivery, str], None]


class TallyTotals(Protocol):
    """The children's running counts of finished tasks (``adapters/posix/tally.py``)."""

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """(done, failed) per queue since the worker started."""
        ...


class ParentDriver:
    def __init__(self, machine: WorkerParent, processes: ProcessControl, board: RunningBoard,
                 broker: ParentBroker, clock: Clock, record_hard_timeout: HardTimeoutRecorder,
                 metrics: Metrics, served: Sequence[str] = (), interval: float = WATCH_INTERVAL,
                 tally: TallyTotals | None = None) -> None:
        self.machine = machine
        self._processes = processes
        self._board = board
        self._broker = broker
        self._clock = clock
        self._record_hard_timeout = record_hard_timeout
        self._metrics = metrics
        self._served = list(served)
        self._interval = interval
        self._tally = tally
        self._book = TallyBook()
        self._lock = threading.Lock()
        self._actions: queue.SimpleQueue[BrokerAction] = queue.SimpleQueue()
        self._stop_requested = False

    def request_stop(self) -> None:
        """Safe from a signal handler: only sets a flag that the main loop reads."""
        self._stop_requested = True

    def run(self) -> int:
        with self._lock:
            actions = self.machine.start(self._clock.monotonic())
        self._perform(actions)
        thread = threading.Thread(target=self._broker_loop, name="hexq-broker", daemon=True)
        thread.start()
        try:
            while not self.machine.finished:
                self._watch_once()
                self._clock.sleep(self._interval)
        finally:
            thread.join(timeout=5)
        return 0

    # -- the main thread: processes -------------------------------------------------------------------
    def _watch_once(self) -> None:
        now = self._clock.monotonic()
        actions: list[Action] = []
        if self._stop_requested:
            with self._lock:
                actions += self.machine.stop(now)
        exits = self._processes.reap()
        with self._lock:
            index_of = {child.pid: child.index for child in self.machine.children.values()}
            for exit_ in exits:
                row = self._board.running(index_of[exit_.pid]) if exit_.pid in index_of else []
                actions += self.machine.exited(exit_, row, now)
            rows = {index: self._board.running(index) for index in self.machine.children}
            actions += self.machine.tick(now, int(self._clock.now() * 1000), rows)
        self._perform(actions)

    def _perform(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self._board.reset(action.index)  # the child that used this row is dead and settled
                pid = self._processes.start_child(action.index, action.consumer)
                with self._lock:
                    self.machine.spawned(action.index, action.consumer, pid, self._clock.monotonic())
            elif isinstance(action, Terminate):
                self._processes.terminate(action.pid)
            elif isinstance(action, Kill):
                self._processes.kill(action.pid)
            elif isinstance(action, RequestCancel):
                self._board.request_cancel(action.index, action.task_ids)
                self._processes.interrupt(action.pid)
            elif isinstance(action, CheckMemory):
                self._perform(self._check_memory())
            else:
                self._actions.put(action)

    def _check_memory(self) -> list[Action]:
        with self._lock:
            pids = [child.pid for child in self.machine.children.values()]
        percent = self._processes.memory_percent()
        rss = {pid: self._processes.rss(pid) for pid in pids}
        with self._lock:
            return self.machine.memory(percent, rss, self._clock.monotonic())

    # -- the broker thread ----------------------------------------------------------------------------
    def _broker_loop(self) -> None:
        while not self.machine.finished:
            try:
                action = self._actions.get(timeout=self._interval)
            except queue.Empty:
                continue
            self._execute(action)

    def _execute(self, action: BrokerAction) -> None:
        error: BaseException | None = None
        try:
            self._do(action)
        except HexqError as exc:
            error = exc
        except Exception as exc:  # this thread must outlive any single failure
            log.exception("worker broker action %s failed", type(action).__name__)
            error = exc
        with self._lock:
            follow_up = self.machine.completed(action, error, self._clock.monotonic())
        self._perform(follow_up)

    def _do(self, action: BrokerAction) -> None:
        if isinstance(action, Settle):
            self._settle(action)
        elif isinstance(action, Beat):
            self._beat(action)
        elif isinstance(action, Finish):
            self._finish()

    def _settle(self, action: Settle) -> None:
        crashed = list(action.crashed)
        if action.hard_timed_out is not None:
            delivery = self._broker.lookup(action.hard_timed_out)
            if delivery is not None:
                try:
                    self._record_hard_timeout(delivery, action.consumer)
                except HexqError:
                    raise  # the broker: try the whole settlement again later
                except Exception:
                    # Never lose the task over a bug in recording its failure: it goes back with a crash
                    # counted, so a task that keeps failing this way still ends as a dead letter.
                    log.exception("could not record the hard timeout of task %s", delivery.id)
                    crashed.append(delivery.id)
        count = self._broker.recover_consumer(action.consumer, crashed)
        self._metrics.recovered(count)
        if count:
            log.warning("put %d task(s) of %s back in their queues", count, action.consumer)

    def _beat(self, action: Beat) -> None:
        requests = self._broker.renew_leases(list(action.consumers), action.lease_until_ms)
        with self._lock:
            told = self.machine.cancel_requested(requests, self._clock.monotonic())
        self._perform(told)
        sample = self._tally is not None and self._book.wants_depths(action.now_ms)
        stats = self._broker.queue_stats(self._served) if self._served and (sample or action.report_depths) else []
        info, tally = action.info, None
        if self._tally is not None:
            done, failed = self._tally.totals()
            depths = ({s.name: s.pending for s in stats}, {s.name: s.eta for s in stats}) if sample else ({}, {})
            tally = self._book.tally(done, failed, action.now_ms, *depths)
            info = self._with_counts(action.info, sum(done.values()), sum(failed.values()))
        self._broker.heartbeat(self.machine.config.worker_id, info, action.now_ms, tally)
        if tally is not None:
            self._book.sent(tally)
        if action.report_depths and stats:
            self._metrics.queue_depths({s.name: s.pending for s in stats}, {s.name: s.eta for s in stats},
                                       {s.name: s.in_flight for s in stats})

    def _with_counts(self, info: str, done: int, failed: int) -> str:
        """The heartbeat's info with what the dashboard's Workers page shows: tasks done and failed since the
        worker started, and the resident memory of the parent and its children."""
        fields = json.loads(info)
        pids = [fields.get("pid"), *fields.get("children", [])]
        rss = sum(self._processes.rss(pid) for pid in pids if isinstance(pid, int))
        return json.dumps({**fields, "done": done, "failed": failed, "rss": rss})

    def _finish(self) -> None:
        try:
            self._broker.forget_worker(self.machine.config.worker_id)
        except HexqError as exc:
            # The heartbeat stops counting for broadcasts after LeaseRules.live_worker_ms, and the next
            # worker's heartbeat forgets this one (and its private queue) after stale_worker_ms.
            log.warning("could not tidy up after this worker (%s); its heartbeat expires by itself", exc)
