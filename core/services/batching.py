"""How many tasks a worker child reserves at a time, and how long it may wait when idle: pure decisions.

Reservations are batched to save round trips, but a batch is sized by its tasks' measured duration so that
it takes about ``preemptible_seconds`` (1 ms) to run when it comes from a queue below another one, and
``target_seconds`` (5 ms) when nothing can preempt it: a higher-priority task enqueued meanwhile waits at
most about that long, so priorities stay strict in practice while fast tasks are amortised. The child
driver (``hexq.entrypoints.child_driver``) asks this planner and tells it what it saw.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from hexq.core.ports import Delivery


@attrs.define
class BatchPlanner:
    queues: tuple[str, ...]  # the child's served queues, highest priority first ('@' = its broadcasts)
    max_tasks: int | None = None  # recycle the child after this many tasks
    prefetch_max: int = 64
    target_seconds: float = 0.005
    preemptible_seconds: float = 0.001
    idle_wait_max: float = 1.0
    backoff_max: float = 5.0
    done: int = 0
    _ewma: float = 0.0  # moving average of one task's duration, seconds
    _limit: int = 0  # the limit of the last reservation
    _preemptible: bool = False  # whether the next batch is expected from a queue some app queue ranks above

    @property
    def quota_reached(self) -> bool:
        return self.max_tasks is not None and self.done >= self.max_tasks

    def size(self, running: int) -> int:
        """The limit of the next reservation; ``running`` tasks are still in flight in this child."""
        size = self.prefetch_max
        if self._ewma > 0:
            # A batch from a queue with a higher one above it is what a new higher-priority task waits
            # behind, so it gets a small budget; a batch that nothing can preempt gets the large one.
            budget = self.preemptible_seconds if self._preemptible else self.target_seconds
            size = int(budget / self._ewma)
        elif self.done == 0:
            size = 1  # nothing measured yet: do not grab a batch of possibly long tasks
        # Free slots bound how many tasks run at once, not how many are reserved: sync tasks run one after
        # another from the batch, and the batch is sized by their measured duration.
        size = max(1, min(size, self.prefetch_max))
        if self.max_tasks is not None:
            size = max(1, min(size, self.max_tasks - self.done - running))
        self._limit = size
        return size

    def reserved(self, deliveries: Sequence[Delivery]) -> None:
        """Guess where the next batch comes from, as a reservation only says where it came from: from the
        same queue if this batch filled its limit (there is probably more), else from a lower one.
        Preemptible: some app queue ranks above it (the worker's broadcast queue, '@…', does not count)."""
        if not deliveries:
            return
        rank = self.queues.index(deliveries[0].queue) if deliveries[0].queue in self.queues else 0
        above = any(not queue.startswith("@") for queue in self.queues[:rank])
        self._preemptible = above or len(deliveries) < self._limit

    def ran(self, seconds: float) -> None:
        """One task took ``seconds``."""
        self.done += 1
        self._ewma = seconds if self._ewma == 0 else 0.8 * self._ewma + 0.2 * seconds
        self._ewma = max(self._ewma, 1e-6)

    def idle_wait(self, next_eta_ms: int | None, now: float) -> float:
        """How long an idle child may block for new work: until the next eta falls due, at most
        ``idle_wait_max`` (which also bounds how late it notices a stop request)."""
        wait = self.idle_wait_max
        if next_eta_ms is not None and next_eta_ms > 0:  # a corrupt (negative) eta must not spin us
            wait = min(wait, max(0.0, next_eta_ms / 1000 - now))
        return wait

    def backoff(self, failures: int) -> float:
        """The pause after ``failures`` reservations in a row failed (the broker is unreachable)."""
        return min(self.backoff_max, 0.1 * 2.0 ** min(failures, 6))
