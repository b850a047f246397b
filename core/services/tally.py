"""The worker parent's share of the dashboard's per-minute counters: what each heartbeat adds.

Children count finished tasks in shared memory (one store per task, no system call, no broker command); the
parent reads the running totals at each beat and sends the increase since the last beat that the broker took,
in the heartbeat's own round trip (``Supervision.heartbeat(..., tally)``). A beat that fails sends nothing
new: its counts go with the next one. Once a minute the parent also samples the depths of the queues it serves,
which costs one ``queue_stats`` read per worker per minute.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from hexq.core.ports import MinuteTally
from hexq.core.rules import minute_of

Totals = Mapping[str, int]  # queue -> count since the worker started


@attrs.define
class TallyBook:
    _sent_done: dict[str, int] = attrs.field(factory=dict)
    _sent_failed: dict[str, int] = attrs.field(factory=dict)
    _sampled_minute: int | None = None

    def wants_depths(self, now_ms: int) -> bool:
        """True at the first beat of each minute: time to sample the depths of the served queues."""
        return self._sampled_minute != minute_of(now_ms)

    def tally(self, done: Totals, failed: Totals, now_ms: int, pending: Totals | None = None,
              eta: Totals | None = None) -> MinuteTally:
        """What to add to the counters of the current minute: the totals' increase since the last ``sent``."""
        return MinuteTally(minute_of(now_ms), _increase(done, self._sent_done), _increase(failed, self._sent_failed),
                           dict(pending or {}), dict(eta or {}))

    def sent(self, tally: MinuteTally) -> None:
        """The broker took ``tally``: later ones count from here."""
        for queue, count in tally.done.items():
            self._sent_done[queue] = self._sent_done.get(queue, 0) + count
        for queue, count in tally.failed.items():
            self._sent_failed[queue] = self._sent_failed.get(queue, 0) + count
        if tally.pending or tally.eta:
            self._sampled_minute = tally.minute_ms


def _increase(totals: Totals, sent: Mapping[str, int]) -> dict[str, int]:
    return {queue: total - sent.get(queue, 0) for queue, total in totals.items() if total > sent.get(queue, 0)}
