"""What each dashboard page shows, read through the broker's ports and turned into plain view records.

Nothing here knows HTTP or HTML: the routes render these records with Jinja2 (autoescaped), so every string
that came from a task (arguments, reasons, tracebacks, ids) reaches the page as text, never as markup.
"""

from __future__ import annotations

import json
import pprint
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from hexq.core.errors import HexqError
from hexq.core.outcome import decode_outcome
from hexq.core.ports import (
    Administration,
    Cancelled,
    Canceller,
    CronStore,
    DeadLetter,
    Delivery,
    InFlight,
    Inspection,
    MinuteTally,
    Results,
)
from hexq.core.rules import MINUTE_MS, minute_of
from hexq.core.services.cancelling import TaskCancelling
from hexq.core.status import TaskStatus
from hexq.entrypoints.dashboard.chart import History

if TYPE_CHECKING:
    from hexq.entrypoints.app import HexQ

# A worker whose heartbeat is older than this is shown as silent (it beats every second).
SILENT_AFTER_SECONDS = 10.0
DEAD_PAGE_SIZE = 100
IN_FLIGHT_SHOWN = 200
HISTORY_MINUTES = 60


class DashboardBroker(Inspection, Administration, CronStore, Results, Canceller, Protocol):
    """The broker roles the dashboard uses (Results for a task's status and kept outcome), and ``lookup``
    (read-only) for a task's payload and crash count."""

    def lookup(self, task_id: str) -> Delivery | None: ...


def utc_text(epoch_seconds: float | None) -> str:
    if not epoch_seconds:
        return "-"
    return datetime.fromtimestamp(epoch_seconds, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def bytes_text(count: int | None) -> str:
    if count is None:
        return "-"
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def worker_of(consumer: str) -> str:
    """A consumer is ``<worker id>.<child index>.<spawn number>`` (the worker parent names them)."""
    parts = consumer.rsplit(".", 2)
    return parts[0] if len(parts) == 3 else consumer


@attrs.frozen
class QueueRow:
    name: str
    priority: int
    pending: int
    eta: int
    in_flight: int
    expired: int = 0  # dropped unrun at their deadline, ever (QueueStats.expired)


@attrs.frozen
class Overview:
    queues: list[QueueRow]
    dead: int
    workers: int
    in_flight: int


@attrs.frozen
class WorkerRow:
    worker_id: str
    host: str
    pid: str
    children: list[int]
    queues: list[str]
    heartbeat_age: float
    silent: bool
    rss: int | None
    done: int | None
    failed: int | None

    @property
    def heartbeat_text(self) -> str:
        return age_text(self.heartbeat_age)

    @property
    def memory_text(self) -> str:
        return bytes_text(self.rss)


@attrs.frozen
class InFlightRow:
    id: str
    queue: str
    consumer: str
    worker: str
    age: float

    @property
    def age_text(self) -> str:
        return age_text(self.age)


@attrs.frozen
class DecodedPayload:
    """A payload as the page shows it: the envelope's fields when it decodes, else the raw text and why."""

    raw: str
    name: str | None = None
    args: str = ""
    kwargs: str = ""
    retries: int | None = None
    enqueued_at: float | None = None
    eta: float | None = None
    error: str | None = None

    @property
    def enqueued_text(self) -> str:
        return utc_text(self.enqueued_at)

    @property
    def eta_text(self) -> str:
        return utc_text(self.eta) if self.eta else "-"


@attrs.frozen
class DeadRow:
    id: str
    queue: str
    reason: str
    failed_at_ms: int
    payload: DecodedPayload
    traceback: str = ""  # the failure's, kept with the dead letter ("" when none: see DeadLetter)

    @property
    def failed_text(self) -> str:
        return utc_text(self.failed_at_ms / 1000)

    @property
    def summary(self) -> str:
        """The reason's first line (the rest, when a reason has several lines, is ``details``)."""
        return self.reason.split("\n", 1)[0]

    @property
    def details(self) -> str:
        return self.reason.split("\n", 1)[1].strip() if "\n" in self.reason else ""


@attrs.frozen
class DeadPage:
    rows: list[DeadRow]
    total: int
    query: str


@attrs.frozen
class ScheduleRow:
    cron: str
    task: str
    queue: str
    timezone: str
    next_fire: str
    last_fired: str


@attrs.frozen
class OutcomeView:
    """A kept outcome (``keep_result``) as the task page shows it."""

    status: str
    finished_at_ms: int
    result: str | None = None  # the return value, pretty-printed (succeeded only)
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""
    unreadable: str = ""  # why the stored record could not be read

    @property
    def finished_text(self) -> str:
        return utc_text(self.finished_at_ms / 1000) if self.finished_at_ms else "-"


@attrs.frozen
class TaskPage:
    id: str
    state: str  # a TaskStatus value ("queued", "scheduled", "running", "succeeded", ...), "dead" or "unknown"
    queue: str
    crashes: int
    payload: DecodedPayload | None
    running: InFlightRow | None
    dead: list[DeadRow]
    outcome: OutcomeView | None = None

    @property
    def attempts(self) -> int | None:
        """Runs started so far: retries used, plus crashes, plus the one running now (or the last, if dead)."""
        if self.payload is None or self.payload.retries is None:
            return None
        if self.running is None and self.state not in ("queued", "scheduled"):
            return self.payload.retries + 1  # the run that gave up (crash counts are cleared with the task)
        return self.payload.retries + self.crashes + (1 if self.running is not None else 0)


def _shown(value: Any) -> str:
    return pprint.pformat(value, width=100, sort_dicts=False)


class DashboardData:
    """Reads one app's state through its broker for the pages."""

    def __init__(self, app: HexQ, broker: DashboardBroker | None = None) -> None:
        self.app = app
        self.broker: DashboardBroker = broker if broker is not None else app.broker

    def now(self) -> float:
        return self.app.clock.now()

    @property
    def broker_url(self) -> str:
        """The broker's URL with any password replaced by ``***``."""
        return self.app.connection.redacted

    def decode(self, payload: str | bytes | None) -> DecodedPayload | None:
        if payload is None:
            return None
        raw = payload if isinstance(payload, str) else payload.decode("utf-8", errors="backslashreplace")
        try:
            message = self.app.codec.decode(payload)
        except HexqError as exc:
            return DecodedPayload(raw=raw, error=f"{type(exc).__name__}: {exc}")
        return DecodedPayload(raw=raw, name=message.name, args=_shown(list(message.args)),
                              kwargs=_shown(message.kwargs), retries=message.retries,
                              enqueued_at=message.enqueued_at or None, eta=message.eta)

    # -- pages -----------------------------------------------------------------------------------------
    def overview(self) -> Overview:
        names = self.app.queues.names
        stats = self.broker.queue_stats(names)
        rows = [QueueRow(s.name, self.app.queues.get(s.name).priority, s.pending, s.eta, s.in_flight, s.expired)
                for s in stats]
        return Overview(rows, self.broker.dead_count(), len(self.broker.workers()),
                        sum(s.in_flight for s in stats))

    def _tallies(self) -> tuple[int, dict[int, MinuteTally]]:
        now_ms = int(self.now() * 1000)
        found = self.broker.tallies(now_ms - (HISTORY_MINUTES - 1) * MINUTE_MS, now_ms)
        return now_ms, {t.minute_ms: t for t in found}

    def history(self) -> History:
        """The last hour, minute by minute, oldest first; the last minute is the current one, still counting.
        Done and failed are summed over the queues (0 for a minute nobody counted in); the depths are the
        sampled sums (None for a minute with no sample)."""
        now_ms, by_minute = self._tallies()
        minutes = [minute_of(now_ms) - (HISTORY_MINUTES - 1 - i) * MINUTE_MS for i in range(HISTORY_MINUTES)]
        tallies = [by_minute.get(m) for m in minutes]
        return History(
            HISTORY_MINUTES,
            done=[float(sum(t.done.values())) if t else 0.0 for t in tallies],
            failed=[float(sum(t.failed.values())) if t else 0.0 for t in tallies],
            pending=[float(sum(t.pending.values())) if t and t.pending else None for t in tallies],
            eta=[float(sum(t.eta.values())) if t and t.eta else None for t in tallies])

    def rates(self) -> dict[str, tuple[int, int]]:
        """Per queue, (done, failed) over the last 60 seconds: this minute's counts so far plus the share of
        the previous minute's that falls within the window."""
        now_ms, by_minute = self._tallies()
        current = by_minute.get(minute_of(now_ms))
        previous = by_minute.get(minute_of(now_ms) - MINUTE_MS)
        left = 1 - (now_ms % MINUTE_MS) / MINUTE_MS
        empty = MinuteTally(0)
        now, before = current or empty, previous or empty
        return {queue: (round(now.done.get(queue, 0) + before.done.get(queue, 0) * left),
                        round(now.failed.get(queue, 0) + before.failed.get(queue, 0) * left))
                for queue in self.app.queues.names}

    def workers(self) -> list[WorkerRow]:
        now_ms = self.now() * 1000
        rows = []
        for beat in self.broker.workers():
            info = _json_object(beat.info)
            age = (now_ms - beat.last_beat_ms) / 1000
            rows.append(WorkerRow(
                worker_id=beat.worker_id, host=str(info.get("host", "?")), pid=str(info.get("pid", "?")),
                children=[c for c in info.get("children", []) if isinstance(c, int)],
                queues=[str(q) for q in info.get("queues", [])], heartbeat_age=age,
                silent=age > SILENT_AFTER_SECONDS, rss=_int_or_none(info.get("rss")),
                done=_int_or_none(info.get("done")), failed=_int_or_none(info.get("failed"))))
        return rows

    def in_flight(self, limit: int = IN_FLIGHT_SHOWN) -> list[InFlightRow]:
        now_ms = self.now() * 1000
        return [self._in_flight_row(f, now_ms) for f in self.broker.in_flight(limit)]

    @staticmethod
    def _in_flight_row(flying: InFlight, now_ms: float) -> InFlightRow:
        return InFlightRow(flying.id, flying.queue, flying.consumer, worker_of(flying.consumer),
                           (now_ms - flying.since_ms) / 1000)

    def dead_row(self, letter: DeadLetter) -> DeadRow:
        decoded = self.decode(letter.payload) or DecodedPayload(raw="", error="no payload was kept")
        return DeadRow(letter.id, letter.queue, letter.reason, letter.failed_at_ms, decoded, letter.traceback)

    def dead(self, query: str = "", limit: int = DEAD_PAGE_SIZE) -> DeadPage:
        query = query.strip()
        letters = self.find_dead(query) if query else self.broker.dead_letters(limit)
        return DeadPage([self.dead_row(d) for d in letters], self.broker.dead_count(), query)

    def find_dead(self, task_id: str) -> list[DeadLetter]:
        return self.broker.find_dead(task_id)

    def schedules(self) -> list[ScheduleRow]:
        now = datetime.fromtimestamp(self.now(), tz=timezone.utc)
        rows = []
        for cron in self.app.schedules:
            last = self.broker.last_cron_tick(cron.key)
            try:
                queue = self.app.registry.queue_for(self.app.registry.get(cron.task_name), cron.queue)
            except HexqError as exc:
                queue = f"({exc})"
            rows.append(ScheduleRow(
                cron=cron.schedule.expression, task=cron.task_name, queue=queue, timezone=cron.schedule.timezone,
                next_fire=utc_text(cron.schedule.next_after(now).timestamp()),
                last_fired=utc_text(last / 1000) if last is not None else "never"))
        return rows

    def task(self, task_id: str) -> TaskPage:
        now_ms = int(self.now() * 1000)
        state = self.broker.task_state(task_id, now_ms)
        outcome = self._outcome(state.outcome) if state.outcome is not None else None
        delivery = self.broker.lookup(task_id)
        dead = [self.dead_row(d) for d in self.find_dead(task_id)]
        running = None
        if delivery is not None and delivery.queue:
            running = next((self._in_flight_row(f, now_ms) for f in self.broker.in_flight(10_000)
                            if f.id == task_id), None)
        if delivery is not None:
            live = state.live.value if state.live is not None else ("running" if delivery.queue else "queued")
            payload = self.decode(delivery.payload)
            queue = delivery.queue or _queue_of(delivery.payload)
            return TaskPage(task_id, live, queue, delivery.crashes, payload, running, dead, outcome)
        ended = outcome.status if outcome is not None and not outcome.unreadable else None
        if dead:
            return TaskPage(task_id, ended or "dead", dead[0].queue, 0, dead[0].payload, None, dead, outcome)
        return TaskPage(task_id, ended or "unknown", "", 0, None, None, [], outcome)

    @staticmethod
    def _outcome(document: str) -> OutcomeView:
        try:
            outcome = decode_outcome(document)
        except HexqError as exc:
            return OutcomeView("unreadable", 0, unreadable=f"{type(exc).__name__}: {exc}")
        error = outcome.error
        return OutcomeView(outcome.status.value, outcome.finished_at_ms,
                           _shown(outcome.value) if outcome.status is TaskStatus.SUCCEEDED else None,
                           error.type if error else "", error.message if error else "",
                           error.traceback if error else "")

    # -- actions (the routes check the token and CSRF first) ---------------------------------------------
    def requeue(self, ids: Sequence[str] | None) -> int:
        return self.broker.requeue_dead(ids)

    def delete(self, ids: Sequence[str] | None) -> int:
        return self.broker.purge_dead() if ids is None else self.broker.delete_dead(ids)

    def cancel(self, task_id: str) -> Cancelled:
        """What ``app.cancel()`` does (its "cancelled" outcome kept), through this dashboard's broker."""
        return TaskCancelling(self.app.registry, self.app.codec, self.broker, self.app.clock).cancel(task_id)

    def purge(self, queue: str) -> int:
        """Delete a queue's pending and eta tasks (what ``hexq purge`` does); how many. The queue must be the
        app's: ``HexqError`` otherwise."""
        self.app.queues.get(queue)
        pending, eta = self.broker.purge_queue(queue)
        return pending + eta


def _queue_of(payload: str | bytes | None) -> str:
    if not isinstance(payload, str):
        return ""
    try:
        document = json.loads(payload)
    except ValueError:
        return ""
    queue = document.get("queue") if isinstance(document, dict) else None
    return queue if isinstance(queue, str) else ""


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
