"""The scheduler: enqueues each CronTask at its fire times, exactly once however many schedulers run.

Every scheduler computes the same ticks; ``Broker.claim_cron_tick`` is an atomic compare-and-set on the
last fired tick, so only the first scheduler to claim a tick enqueues it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone

import attrs

from hexq.core.cron import CronTask, plan_tick
from hexq.core.outgoing import TaskFactory
from hexq.core.ports import Clock, CronStore, NoTracing, Tracing
from hexq.core.registry import Registry

log = logging.getLogger("hexq.scheduler")


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


@attrs.define
class Scheduler:
    registry: Registry
    factory: TaskFactory
    broker: CronStore
    clock: Clock
    schedules: Sequence[CronTask]
    tracing: Tracing = attrs.field(factory=NoTracing)
    max_sleep: float = 1.0  # the longest wait tick() returns: how often the schedules are looked at again
    fired: int = 0
    _watched_since: dict[str, datetime] = attrs.field(factory=dict)

    def check(self) -> None:
        """Refuse to start with a schedule naming a task that does not exist."""
        for cron in self.schedules:
            task = self.registry.get(cron.task_name)
            self.registry.queue_for(task, cron.queue)

    def tick(self) -> float:
        """Fire whatever is due now; return seconds until the next tick of any schedule."""
        now = _utc(self.clock.now())
        soonest: datetime | None = None
        for cron in self.schedules:
            last_ms = self.broker.last_cron_tick(cron.key)
            # Ticks before any scheduler watched are not replayed; after a recorded tick, ticks missed
            # while no scheduler ran are subject to the misfire grace.
            since = self._watched_since.setdefault(cron.key, now)
            reference = _utc(last_ms / 1000) if last_ms is not None else since
            plan = plan_tick(cron, reference, now)
            if plan.skipped:
                log.warning("schedule %s missed ticks older than its misfire grace (%.0fs); skipped them",
                            cron.key, cron.misfire_grace)
            if plan.fire is not None:
                self._fire(cron, plan.fire)
            if soonest is None or plan.next_check < soonest:
                soonest = plan.next_check
        if soonest is None:
            return self.max_sleep
        return max(0.0, (soonest - _utc(self.clock.now())).total_seconds())

    def _fire(self, cron: CronTask, fire: datetime) -> None:
        task = self.registry.get(cron.task_name)
        queue = self.registry.queue_for(task, cron.queue)
        now = self.clock.now()
        fire_ms = round(fire.timestamp() * 1000)
        # A unique task's tick is unique too (its identity: the schedule's arguments): a tick that finds the
        # previous run still waiting or running is recorded as fired and stores nothing. Each tick starts a trace
        # of its own (when tracing); a tick another scheduler fired first ends its span with nothing sent.
        span = self.tracing.send(task.name, 1, cron=cron.key)
        try:
            outgoing = self.factory.new(task.name, queue, cron.args, cron.kwargs, now, unique_ms=task.options.unique_ms,
                                        trace=span.carrier)
            claimed = self.broker.claim_cron_tick(cron.key, fire_ms, outgoing)
        except BaseException as exc:
            span.end((), exc)
            raise
        span.end((outgoing,) if claimed else ())
        if claimed:
            self.fired += 1
            log.info("fired %s for %s (%.0f ms late)", cron.task_name, fire.isoformat(),
                     (now - fire.timestamp()) * 1000)
        else:
            log.debug("tick %s of %s already fired by another scheduler", fire.isoformat(), cron.key)
