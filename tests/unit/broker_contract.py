"""The Broker contract, one test per promise in the docstrings of ``hexq.core.ports.broker``, by role.

Each role's promises are one class (``ProducerContract`` ... ``AdministrationContract``); ``BrokerContract``
combines them. An adapter's test module subclasses ``BrokerContract`` and provides a ``make_broker`` fixture:
a function that takes ``LeaseRules`` and returns a broker on an empty store (each test calls it at most once),
closing what it made at teardown. Every adapter (memory, fakeredis, real Redis) runs the same tests. Tests
assert on state that the ports expose.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hexq.core.errors import BrokerUnavailableError
from hexq.core.message import Codec, TaskMessage
from hexq.core.ports import (
    Broker,
    Cancelled,
    DeadLetter,
    Delivery,
    InFlight,
    MinuteTally,
    OutcomeRecord,
    OutgoingTask,
    QueueStats,
    TaskState,
    UniqueLock,
    Unrun,
)
from hexq.core.queues import broadcast_queue
from hexq.core.rate_limit import QueueRate, RateLimit, RateLimits
from hexq.core.rules import LeaseRules, minute_of
from hexq.core.status import TaskStatus
from hexq.core.unique import unique_id

T0 = 1_700_000_000_000  # a realistic epoch-ms "now"
LEASE = 30_000
GRACE = LeaseRules().expiry_grace_ms  # how long an expired lease is only suspected (see Consumer.reserve)
STALE_WORKER = LeaseRules().stale_worker_ms
LIVE_WORKER = LeaseRules().live_worker_ms

MakeBroker = Callable[[LeaseRules], Broker]


def broker_factory(build: MakeBroker) -> Iterator[MakeBroker]:
    """The body of a ``make_broker`` fixture: ``yield from broker_factory(lambda rules: ...)``."""
    made: list[Broker] = []

    def make(rules: LeaseRules) -> Broker:
        made.append(build(rules))
        return made[-1]

    yield make
    for broker in made:
        broker.close()


def task(task_id: str, queue: str = "default", payload: str | None = None, eta_ms: int | None = None,
         dedup_key: str | None = None) -> OutgoingTask:
    return OutgoingTask(task_id, queue, payload if payload is not None else f"p-{task_id}", eta_ms, dedup_key)


def unique_task(name: str, key: str = "k", *, window_ms: int = 60_000, queue: str = "default",
                eta_ms: int | None = None, since_ms: int = T0) -> OutgoingTask:
    """A unique task named ``name`` (its id is 65 characters, ``id_of(name)`` ends it) holding lock ``key``."""
    lock = UniqueLock(hashlib.sha256(key.encode()).hexdigest()[:32], since_ms, window_ms)
    return OutgoingTask(unique_id(name.ljust(32, "0"), lock), queue, f"p-{name}", eta_ms, None, lock)


def take(broker: Broker, queues: list[str] | str = "default", limit: int = 100, now_ms: int = T0,
         consumer: str = "c1", lease_ms: int = LEASE, acks: tuple[str, ...] = ()) -> list[Delivery]:
    names = [queues] if isinstance(queues, str) else queues
    return list(broker.reserve(consumer, names, limit, now_ms, lease_ms, acks).deliveries)


def settle(broker: Broker, now_ms: int) -> None:
    """A reservation that serves no queue and takes nothing: only its expired-lease step has an effect."""
    assert take(broker, [], limit=0, now_ms=now_ms, consumer="bystander") == []


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


Waiters = dict[str, tuple[threading.Thread, list[str]]]


def waiting(broker: Broker, consumers: list[tuple[str, str]], limit: int, wait: float = 5.0) -> Waiters:
    """Each (consumer, queue) in a thread of its own: an empty reservation (so it is idle), then waiting
    ones (a wake-up may be spurious) until one takes something or ``wait`` s passed; ``finished`` reads
    what it got."""
    def run(consumer: str, queue: str, out: list[str]) -> None:
        end = time.monotonic() + wait
        first = True
        while not out and (left := end - time.monotonic()) > 0:
            try:
                out += ids(list(broker.reserve(consumer, [queue], limit, T0, LEASE, (), 0.0 if first else left)
                                .deliveries))
            except BrokerUnavailableError:
                # Callers retry (as workers do): SQLite may refuse one of two threads' writes at once
                # ("database is locked") without waiting for its busy timeout.
                time.sleep(0.01)
                continue
            first = False

    out: Waiters = {}
    for consumer, queue in consumers:
        out[consumer] = (threading.Thread(target=run, args=(consumer, queue, got := [])), got)
        out[consumer][0].start()
    return out


def finished(waiters: Waiters, consumer: str, within: float) -> list[str]:
    """What the waiter took, once it returned, which must be within ``within`` s (its wait is longer)."""
    thread, got = waiters[consumer]
    thread.join(within)
    assert not thread.is_alive(), f"{consumer} was not woken within {within} s"
    return got


def stats(broker: Broker, queue: str = "default") -> tuple[int, int, int]:
    (row,) = broker.queue_stats([queue])
    return row.pending, row.eta, row.in_flight


def payload_of(broker: Broker, task_id: str) -> str | bytes | None:
    found = broker.lookup(task_id)
    return None if found is None else found.payload


def owners(broker: Broker) -> list[tuple[str, str]]:
    return [(r.id, r.consumer) for r in broker.in_flight()]


class _Contract:
    @pytest.fixture
    def broker(self, make_broker: MakeBroker) -> Broker:
        return make_broker(LeaseRules())


class ProducerContract(_Contract):
    def test_fifo_within_a_queue_across_batches(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        broker.enqueue([task("c")])
        got = take(broker)
        assert ids(got) == ["a", "b", "c"]
        assert [d.payload for d in got] == ["p-a", "p-b", "p-c"]
        assert all(d.queue == "default" and d.crashes == 0 for d in got)

    def test_eta_task_is_invisible_until_due(self, broker: Broker) -> None:
        broker.enqueue([task("later", eta_ms=T0 + 5000), task("now")])
        reservation = broker.reserve("c1", ["default"], 10, T0, LEASE)
        assert ids(list(reservation.deliveries)) == ["now"]
        assert reservation.next_eta_ms == T0 + 5000
        assert stats(broker) == (0, 1, 1)
        assert take(broker, now_ms=T0 + 4999) == []
        got = take(broker, now_ms=T0 + 5000)
        assert ids(got) == ["later"]
        assert got[0].payload == "p-later"
        assert stats(broker)[1] == 0

    def test_due_eta_tasks_go_to_the_tail_in_eta_order(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("e2", eta_ms=T0 + 20), task("e1", eta_ms=T0 + 10)])
        broker.enqueue([task("b")])
        assert ids(take(broker, now_ms=T0 + 100)) == ["a", "b", "e1", "e2"]

    def test_eta_dedup_key_replaces_the_waiting_task(self, broker: Broker) -> None:
        assert broker.enqueue([task("first", payload="old", eta_ms=T0 + 1000, dedup_key="k")]) == ["first"]
        # Stored under the waiting task's id: what enqueue returns for it.
        assert broker.enqueue([task("second", payload="new", eta_ms=T0 + 2000, dedup_key="k")]) == ["first"]
        assert stats(broker) == (0, 1, 0)
        assert take(broker, now_ms=T0 + 1500) == []
        got = take(broker, now_ms=T0 + 2000)
        assert [(d.id, d.payload) for d in got] == [("first", "new")]

    def test_eta_dedup_within_one_call_returns_the_first_ones_id(self, broker: Broker) -> None:
        assert broker.enqueue([task("a", eta_ms=T0 + 10, dedup_key="k"), task("plain"),
                               task("b", payload="newer", eta_ms=T0 + 20, dedup_key="k"),
                               task("c", "other", eta_ms=T0 + 10, dedup_key="k")]) == ["a", "plain", "a", "c"]
        assert [(d.id, d.payload) for d in take(broker, now_ms=T0 + 20)] == [("plain", "p-plain"), ("a", "newer")]

    def test_dedup_is_per_queue(self, broker: Broker) -> None:
        broker.enqueue([task("a", "q1", eta_ms=T0 + 10, dedup_key="k"), task("b", "q2", eta_ms=T0 + 10, dedup_key="k")])
        assert stats(broker, "q1")[1] == 1
        assert stats(broker, "q2")[1] == 1

    def test_no_dedup_without_a_key(self, broker: Broker) -> None:
        broker.enqueue([task("a", eta_ms=T0 + 10), task("b", eta_ms=T0 + 10)])
        assert stats(broker) == (0, 2, 0)
        assert ids(take(broker, now_ms=T0 + 10)) == ["a", "b"]

    def test_dedup_key_is_forgotten_once_the_task_became_runnable(self, broker: Broker) -> None:
        broker.enqueue([task("a", eta_ms=T0 + 10, dedup_key="k")])
        take(broker, "other", now_ms=T0 + 10)  # promotes nothing: not a served queue
        assert stats(broker) == (0, 1, 0)
        take(broker, now_ms=T0 + 10, limit=0)
        broker.enqueue([task("b", eta_ms=T0 + 50, dedup_key="k")])
        assert stats(broker)[1] == 1
        assert ids(take(broker, now_ms=T0 + 50)) == ["a", "b"]

    # -- broadcast ---------------------------------------------------------------------------------
    def test_broadcast_stores_a_copy_for_each_live_worker_and_none_for_stale_ones(self, broker: Broker) -> None:
        now = T0 + LIVE_WORKER
        broker.heartbeat("gone", "{}", T0 - 1)  # silent for one millisecond more than the live age
        broker.heartbeat("edge", "{}", T0)  # exactly the live age: still live
        broker.heartbeat("fresh", "{}", now)
        assert broker.broadcast(task("b", payload="hello"), now) == 2
        copies = {w: take(broker, broadcast_queue(w)) for w in ("gone", "edge", "fresh")}
        assert copies["gone"] == []
        assert [(d.queue, d.payload, d.crashes) for w in ("edge", "fresh") for d in copies[w]] == [
            (broadcast_queue("edge"), "hello", 0), (broadcast_queue("fresh"), "hello", 0)]
        copy_ids = [d.id for w in ("edge", "fresh") for d in copies[w]]
        # Ids of their own (never the task's), short enough for any task id a worker can run.
        assert len(set(copy_ids)) == 2 and "b" not in copy_ids
        assert all(len(i) <= len("b") + 11 for i in copy_ids)
        assert stats(broker) == (0, 0, 0)  # nothing in the queue the task was sent to

    def test_broadcast_with_no_live_worker_stores_nothing(self, broker: Broker) -> None:
        assert broker.broadcast(task("b"), T0) == 0
        broker.heartbeat("w1", "{}", T0)
        assert broker.broadcast(task("c"), T0 + LIVE_WORKER + 1) == 0
        assert take(broker, broadcast_queue("w1")) == [] and broker.in_flight() == []

    def test_a_worker_that_starts_after_the_broadcast_does_not_get_it(self, broker: Broker) -> None:
        broker.heartbeat("early", "{}", T0)
        assert broker.broadcast(task("b"), T0) == 1
        broker.heartbeat("late", "{}", T0 + 1)
        assert take(broker, broadcast_queue("late")) == []
        assert len(take(broker, broadcast_queue("early"))) == 1

    def test_broadcast_copies_keep_the_order_of_broadcasts(self, broker: Broker) -> None:
        broker.heartbeat("w1", "{}", T0)
        for name in ("first", "second", "third"):
            broker.broadcast(task(name, payload=name), T0)
        assert [d.payload for d in take(broker, broadcast_queue("w1"))] == ["first", "second", "third"]

    def test_each_copy_of_a_broadcast_is_settled_on_its_own(self, broker: Broker) -> None:
        for worker in ("w1", "w2", "w3"):
            broker.heartbeat(worker, "{}", T0)
        assert broker.broadcast(task("b", payload="hello"), T0) == 3
        (one,) = take(broker, broadcast_queue("w1"), consumer="c1")
        (two,) = take(broker, broadcast_queue("w2"), consumer="c2")
        (three,) = take(broker, broadcast_queue("w3"), consumer="c3")
        broker.ack("c1", [one.id])
        broker.dead_letter("c3", three.id, three.queue, three.payload, "r", T0)  # type: ignore[arg-type]
        assert payload_of(broker, one.id) is None and payload_of(broker, two.id) == "hello"
        assert broker.recover_consumer("c2", [two.id]) == 1  # c2 died running it: back, crash counted
        assert [(d.id, d.payload, d.crashes) for d in take(broker, broadcast_queue("w2"))] == [(two.id, "hello", 1)]

    @pytest.mark.parametrize("live_ms", [1000, 60_000])
    def test_a_non_default_live_worker_age_is_honoured(self, make_broker: MakeBroker, live_ms: int) -> None:
        broker = make_broker(LeaseRules(live_worker_ms=live_ms))
        broker.heartbeat("w1", "{}", T0)
        assert broker.broadcast(task("b"), T0 + live_ms) == 1
        assert broker.broadcast(task("c"), T0 + live_ms + 1) == 0

    def test_a_broadcast_wakes_an_idle_child_of_every_worker(self, broker: Broker) -> None:
        broker.heartbeat("w1", "{}", T0)
        broker.heartbeat("w2", "{}", T0)
        got = waiting(broker, [("w1.0", broadcast_queue("w1")), ("w2.0", broadcast_queue("w2"))], limit=10)
        time.sleep(0.2)  # both waiting
        assert broker.broadcast(task("b", payload="hello"), T0) == 2
        assert len(finished(got, "w1.0", 2.0)) == 1
        assert len(finished(got, "w2.0", 2.0)) == 1


class ConsumerContract(_Contract):
    # -- reserve -----------------------------------------------------------------------------------
    def test_empty_reserve_returns_nothing(self, broker: Broker) -> None:
        reservation = broker.reserve("c1", ["default", "other"], 10, T0, LEASE)
        assert reservation.deliveries == ()
        assert reservation.next_eta_ms is None

    def test_limit_is_respected_and_the_rest_stays_queued(self, broker: Broker) -> None:
        broker.enqueue([task(str(i)) for i in range(5)])
        assert ids(take(broker, limit=2)) == ["0", "1"]
        assert stats(broker) == (3, 0, 2)
        assert ids(take(broker, limit=10)) == ["2", "3", "4"]

    def test_strict_priority_serves_only_the_first_non_empty_queue(self, broker: Broker) -> None:
        broker.enqueue([task("low1", "low"), task("high1", "high"), task("high2", "high"), task("low2", "low")])
        assert ids(take(broker, ["high", "low"], limit=10)) == ["high1", "high2"]
        assert ids(take(broker, ["high", "low"], limit=10)) == ["low1", "low2"]

    def test_priority_follows_the_order_given(self, broker: Broker) -> None:
        broker.enqueue([task("h", "high"), task("l", "low")])
        got = take(broker, ["low", "high"], limit=10)
        assert ids(got) == ["l"]
        assert got[0].queue == "low"

    def test_only_served_queues_are_read(self, broker: Broker) -> None:
        broker.enqueue([task("x", "other")])
        assert take(broker, ["default"]) == []
        assert stats(broker, "other") == (1, 0, 0)

    def test_next_eta_is_the_earliest_among_served_queues_only(self, broker: Broker) -> None:
        broker.enqueue([task("x", "a", eta_ms=T0 + 300), task("y", "b", eta_ms=T0 + 200),
                        task("z", "c", eta_ms=T0 + 100)])
        assert broker.reserve("c1", ["a", "b"], 10, T0, LEASE).next_eta_ms == T0 + 200
        assert broker.reserve("c1", ["a"], 10, T0, LEASE).next_eta_ms == T0 + 300

    # -- waiting reservations ----------------------------------------------------------------------
    def test_a_waiting_reservation_takes_a_task_stored_before_the_call(self, broker: Broker) -> None:
        assert take(broker) == []  # the caller is idle: its last reservation was empty
        broker.enqueue([task("a")])
        started = time.monotonic()
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries
        assert ids(list(got)) == ["a"]
        assert time.monotonic() - started < 2.0

    def test_a_waiting_reservation_takes_a_task_stored_during_the_wait(self, broker: Broker) -> None:
        timer = threading.Timer(0.2, lambda: broker.enqueue([task("late")]))
        timer.start()
        try:
            started = time.monotonic()
            got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries
        finally:
            timer.cancel()
            # The reservation may return as soon as the task is stored, before the enqueue has read its own
            # reply: the broker is closed after the test, and must not be while the timer still uses it.
            timer.join(timeout=5)
        assert ids(list(got)) == ["late"]
        assert 0.1 < time.monotonic() - started < 3.0

    def test_a_task_wakes_the_waiter_of_its_queue_while_a_waiter_of_another_queue_waits_too(
            self, broker: Broker) -> None:
        got = waiting(broker, [("c1", "other"), ("c2", "default")], 1)
        time.sleep(0.2)
        broker.enqueue([task("a")])
        assert finished(got, "c2", 2.0) == ["a"]
        broker.enqueue([task("b", "other")])
        assert finished(got, "c1", 2.0) == ["b"]

    def test_a_burst_wakes_every_idle_waiter_it_has_work_for(self, broker: Broker) -> None:
        got = waiting(broker, [("c1", "default"), ("c2", "default")], 1)
        time.sleep(0.2)
        broker.enqueue([task("a"), task("b")])
        assert sorted(finished(got, "c1", 2.0) + finished(got, "c2", 2.0)) == ["a", "b"]

    def test_a_waiting_reservation_times_out_empty_when_idle(self, broker: Broker) -> None:
        started = time.monotonic()
        result = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 0.2)
        assert result.deliveries == ()
        assert time.monotonic() - started >= 0.15

    def test_a_waiting_reservation_applies_its_acks_before_waiting(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        (first,) = take(broker)
        result = broker.reserve("c1", ["default"], 10, T0, LEASE, (first.id,), 0.2)  # wake-ups may be spurious
        assert result.deliveries == ()
        assert broker.lookup("a") is None and stats(broker) == (0, 0, 0)

    def test_a_waiting_reservation_never_takes_an_eta_task_early(self, broker: Broker) -> None:
        broker.enqueue([task("soon", eta_ms=T0 + 100)])
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 0.3).deliveries
        assert got == ()
        assert ids(take(broker, now_ms=T0 + 100)) == ["soon"]

    # -- ack ---------------------------------------------------------------------------------------
    def test_ack_forgets_payload_and_ownership(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        broker.ack("c1", ["a", "unknown"])
        assert broker.lookup("a") is None
        assert payload_of(broker, "b") == "p-b"
        assert [r.id for r in broker.in_flight()] == ["b"]
        assert stats(broker) == (0, 0, 1)
        broker.ack("c1", ["a"])  # twice is harmless
        broker.ack("c1", [])

    def test_acks_are_piggybacked_on_reserve(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1)
        got = take(broker, limit=1, acks=("a",))
        assert ids(got) == ["b"]
        assert broker.lookup("a") is None
        assert [r.id for r in broker.in_flight()] == ["b"]

    def test_acked_task_is_not_recovered(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        broker.ack("c1", ["a"])
        assert broker.recover_consumer("c1", ["a", "b"]) == 1
        assert [(d.id, d.crashes) for d in take(broker, consumer="c2")] == [("b", 1)]

    # -- retry, dead letter, release ---------------------------------------------------------------
    def test_retry_without_eta_goes_to_the_tail_with_the_new_payload(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1)
        broker.retry("c1", task("a", payload="retried"))
        assert broker.in_flight() == []
        got = take(broker, consumer="c2")
        assert [(d.id, d.payload) for d in got] == [("b", "p-b"), ("a", "retried")]

    def test_retry_with_eta_waits(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.retry("c1", task("a", payload="later", eta_ms=T0 + 1000))
        assert stats(broker) == (0, 1, 0)
        assert take(broker, now_ms=T0 + 999) == []
        assert [(d.id, d.payload) for d in take(broker, now_ms=T0 + 1000)] == [("a", "later")]

    def test_retry_resets_the_crash_count(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.recover_consumer("c1", ["a"])
        assert take(broker)[0].crashes == 1
        broker.retry("c1", task("a"))
        assert take(broker)[0].crashes == 0

    def test_dead_letter_drops_the_task_and_records_it(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.dead_letter("c1", "a", "default", "p-a", "boom", T0 + 5)
        assert broker.lookup("a") is None
        assert broker.in_flight() == []
        assert stats(broker) == (0, 0, 0)
        assert broker.dead_letters() == [DeadLetter("a", "default", "p-a", "boom", T0 + 5)]
        assert broker.recover_consumer("c1", ["a"]) == 0

    def test_a_dead_letter_keeps_its_traceback_and_none_reads_empty(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c")])
        take(broker)
        traceback = 'Traceback (most recent call last):\n  File "job.py", line 3, in job\nValueError: <b>é\n'
        broker.dead_letter("c1", "a", "default", "p-a", "raised ValueError", T0, traceback=traceback)
        broker.dead_letter("c1", "b", "default", "p-b", "hard timeout", T0 + 1)  # as a caller before tracebacks
        broker.dead_letter("c1", "c", "default", None, "raised", T0 + 2, None, traceback="")
        assert broker.dead_letters() == [DeadLetter("c", "default", None, "raised", T0 + 2, ""),
                                         DeadLetter("b", "default", "p-b", "hard timeout", T0 + 1, ""),
                                         DeadLetter("a", "default", "p-a", "raised ValueError", T0, traceback)]
        assert [d.traceback for d in broker.find_dead("a")] == [traceback]
        assert broker.requeue_dead(["a"]) == 1 and broker.delete_dead(["b"]) == 1
        assert [d.id for d in broker.dead_letters()] == ["c"] and take(broker)[0].id == "a"

    def test_release_puts_back_at_the_head_in_order_without_crash(self, broker: Broker) -> None:
        broker.enqueue([task(x) for x in "abcd"])
        take(broker, limit=3)
        assert broker.release("c1", ["b", "a", "zzz"]) == 2
        assert broker.release("c2", ["c"]) == 0  # not c2's
        assert [r.id for r in broker.in_flight()] == ["c"]
        got = take(broker, consumer="c2")
        assert [(d.id, d.crashes) for d in got] == [("b", 0), ("a", 0), ("d", 0)]

    # -- expired leases, recovered by reserve ------------------------------------------------------
    def test_discard_ends_an_owned_task_for_good_and_counts_an_expired_one(self, broker: Broker) -> None:
        broker.enqueue([task("old"), task("gone"), task("l", "low")])
        take(broker, limit=2)
        broker.discard("c1", "old", "default", "expired")
        broker.discard("c1", "gone", "default", "cancelled")
        assert broker.lookup("old") is None and broker.lookup("gone") is None
        assert owners(broker) == []
        assert broker.recover_consumer("c1", ["old", "gone"]) == 0  # nothing comes back
        assert [(s.name, s.expired) for s in broker.queue_stats(["default", "low"])] == [("default", 1), ("low", 0)]
        broker.discard("c1", "never-seen", "low", "expired", kept("never-seen"))  # an unknown id only counts
        assert broker.task_state("never-seen", T0).outcome == '{"outcome":"never-seen"}'  # and keeps its outcome
        assert stats(broker, "low") == (1, 0, 0) and broker.queue_stats(["low"])[0].expired == 1
        assert broker.dead_letters() == []

    def test_expired_lease_is_recovered_by_the_next_reserve(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1, lease_ms=100)
        assert take(broker, consumer="c2", now_ms=T0 + 100, limit=1) == [Delivery("b", "default", "p-b", 0)]
        assert take(broker, consumer="c3", now_ms=T0 + 101) == []  # first seen expired: only suspected
        assert take(broker, consumer="c3", now_ms=T0 + 101 + GRACE - 1) == []
        got = take(broker, consumer="c3", now_ms=T0 + 101 + GRACE)
        assert [(d.id, d.crashes) for d in got] == [("a", 1)]
        assert owners(broker) == [("b", "c2"), ("a", "c3")]

    def test_an_expired_consumer_gets_every_task_back_with_a_crash_each(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c", "other")])
        take(broker, lease_ms=100)
        take(broker, "other", consumer="c2", lease_ms=1000)
        settle(broker, T0 + 100)  # the deadline itself is still inside the lease
        settle(broker, T0 + 101)  # suspected from here
        settle(broker, T0 + 100 + GRACE)
        assert stats(broker) == (0, 0, 2)
        settle(broker, T0 + 101 + GRACE)
        assert stats(broker) == (2, 0, 0)
        assert stats(broker, "other") == (0, 0, 1)
        later = T0 + 101 + GRACE
        assert [(d.id, d.crashes) for d in take(broker, consumer="c3", now_ms=later)] == [("a", 1), ("b", 1)]

    @pytest.mark.parametrize("grace_ms", [500, 10_000])
    def test_a_non_default_expiry_grace_is_honoured(self, make_broker: MakeBroker, grace_ms: int) -> None:
        broker = make_broker(LeaseRules(expiry_grace_ms=grace_ms))
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        settle(broker, T0 + 101)
        settle(broker, T0 + 101 + grace_ms - 1)
        assert owners(broker) == [("a", "c1")]
        settle(broker, T0 + 101 + grace_ms)
        assert stats(broker) == (1, 0, 0)

    def test_a_reservation_that_extends_a_suspected_lease_clears_the_suspicion(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1, lease_ms=100)
        settle(broker, T0 + 101)  # c1 suspected
        take(broker, limit=1, now_ms=T0 + 200, lease_ms=100)  # c1 is alive after all: a new lease until +300
        settle(broker, T0 + 301)  # expired again: suspected anew, not recovered on the old suspicion
        assert sorted(owners(broker)) == [("a", "c1"), ("b", "c1")]
        settle(broker, T0 + 301 + GRACE - 1)
        assert len(owners(broker)) == 2
        settle(broker, T0 + 301 + GRACE)
        assert owners(broker) == [] and stats(broker) == (2, 0, 0)

    def test_late_ack_after_expiry_leaves_a_delivery_without_payload(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        settle(broker, T0 + 101)
        settle(broker, T0 + 101 + GRACE)
        broker.ack("c1", ["a"])  # the slow consumer finished after all: payload and crash count go
        got = take(broker, consumer="c2", now_ms=T0 + 101 + GRACE)
        assert got == [Delivery("a", "default", None, 0)]


class SupervisionContract(_Contract):
    # -- leases ------------------------------------------------------------------------------------
    def test_renewed_lease_does_not_expire(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        broker.renew_leases(["c1", "c9"], T0 + 10_000)
        assert take(broker, consumer="c2", now_ms=T0 + 5000) == []
        settle(broker, T0 + 5000 + GRACE)
        settle(broker, T0 + 10_001)
        assert owners(broker) == [("a", "c1")]
        settle(broker, T0 + 10_001 + GRACE)
        assert stats(broker) == (1, 0, 0)
        broker.renew_leases([], T0)

    def test_a_renewal_after_the_suspicion_cancels_the_recovery(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        settle(broker, T0 + 101)  # suspected
        renewed_until = T0 + 101 + GRACE + LEASE
        broker.renew_leases(["c1"], renewed_until)
        settle(broker, T0 + 101 + GRACE)
        assert owners(broker) == [("a", "c1")]
        # The suspicion is gone, not merely outlived: when the renewed lease expires, the grace starts again.
        settle(broker, renewed_until + 1)
        settle(broker, renewed_until + GRACE)
        assert owners(broker) == [("a", "c1")]
        settle(broker, renewed_until + 1 + GRACE)
        assert stats(broker) == (1, 0, 0)

    def test_a_lease_renewed_soon_after_an_outage_is_not_recovered(self, broker: Broker) -> None:
        # Redis was unreachable for longer than the lease: nobody could renew. The first reservation
        # after the outage must not hand the live consumer's task to someone else.
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        outage_over = T0 + 60_000
        assert take(broker, consumer="c2", now_ms=outage_over) == []
        broker.renew_leases(["c1"], outage_over + 1000 + LEASE)  # the owner's parent reconnects
        assert take(broker, consumer="c2", now_ms=outage_over + 1000 + GRACE) == []
        assert owners(broker) == [("a", "c1")]

    # -- recover_consumer --------------------------------------------------------------------------
    def test_recover_consumer_counts_crashes_only_for_crashed_ids(self, broker: Broker) -> None:
        broker.enqueue([task(x) for x in "abcd"])
        take(broker, limit=3)
        assert broker.recover_consumer("c1", ["b"]) == 3
        assert broker.in_flight() == []
        got = take(broker, consumer="c2")
        assert [(d.id, d.crashes) for d in got] == [("a", 0), ("b", 1), ("c", 0), ("d", 0)]
        assert broker.recover_consumer("c1", []) == 0

    def test_recover_consumer_returns_tasks_to_their_own_queues(self, broker: Broker) -> None:
        broker.enqueue([task("h", "high"), task("l", "low")])
        take(broker, ["high"], consumer="c1")
        take(broker, ["low"], consumer="c1")
        assert broker.recover_consumer("c1", []) == 2
        assert stats(broker, "high") == (1, 0, 0)
        assert stats(broker, "low") == (1, 0, 0)

    def test_crash_counts_accumulate(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        for expected in (1, 2):
            take(broker)
            broker.recover_consumer("c1", ["a"])
            (delivery,) = take(broker, consumer="peek")
            assert delivery.crashes == expected
            broker.release("peek", ["a"])

    # -- lookup ------------------------------------------------------------------------------------
    def test_lookup_of_queued_waiting_and_owned_tasks(self, broker: Broker) -> None:
        broker.enqueue([task("q"), task("w", eta_ms=T0 + 1000), task("o", "busy")])
        take(broker, "busy")
        assert broker.lookup("q") == Delivery("q", "", "p-q", 0)
        assert broker.lookup("w") == Delivery("w", "", "p-w", 0)
        assert broker.lookup("o") == Delivery("o", "busy", "p-o", 0)
        assert broker.lookup("nope") is None

    def test_lookup_shows_the_crash_count_until_the_task_is_settled(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        broker.recover_consumer("c1", ["a"])
        assert broker.lookup("a") == Delivery("a", "", "p-a", 1)
        take(broker, consumer="c2")
        assert broker.lookup("a") == Delivery("a", "default", "p-a", 1)
        broker.ack("c2", ["a"])
        broker.dead_letter("c2", "b", "default", "p-b", "r", T0)
        assert broker.lookup("a") is None
        assert broker.lookup("b") is None

    def test_lookup_of_an_owned_task_without_payload(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        settle(broker, T0 + 101)
        settle(broker, T0 + 101 + GRACE)
        broker.ack("c1", ["a"])  # too late: the task is queued again, but its payload is gone
        assert broker.lookup("a") is None
        take(broker, consumer="c2", now_ms=T0 + 101 + GRACE)
        assert broker.lookup("a") == Delivery("a", "default", None, 0)

    # -- workers -----------------------------------------------------------------------------------
    def test_forget_worker_removes_its_heartbeat(self, broker: Broker) -> None:
        broker.heartbeat("w1", "{}", T0)
        broker.heartbeat("w2", "{}", T0 + 10)
        broker.forget_worker("w1")
        broker.forget_worker("unknown")
        assert [w.worker_id for w in broker.workers()] == ["w2"]

    def test_a_heartbeat_drops_workers_silent_for_ten_minutes(self, broker: Broker) -> None:
        broker.heartbeat("dead", "{}", T0)
        broker.heartbeat("alive", "{}", T0 + 1000)
        broker.heartbeat("alive", "{}", T0 + STALE_WORKER)
        assert [w.worker_id for w in broker.workers()] == ["alive", "dead"]
        broker.heartbeat("alive", "{}", T0 + STALE_WORKER + 1)
        assert [w.worker_id for w in broker.workers()] == ["alive"]

    @pytest.mark.parametrize("stale_ms", [1000, 20 * 60 * 1000])
    def test_a_non_default_stale_worker_age_is_honoured(self, make_broker: MakeBroker, stale_ms: int) -> None:
        broker = make_broker(LeaseRules(stale_worker_ms=stale_ms))
        broker.heartbeat("old", "{}", T0)
        broker.heartbeat("new", "{}", T0 + stale_ms)
        assert [w.worker_id for w in broker.workers()] == ["new", "old"]
        broker.heartbeat("new", "{}", T0 + stale_ms + 1)
        assert [w.worker_id for w in broker.workers()] == ["new"]

    def test_forget_worker_drops_the_broadcast_copies_waiting_in_its_queue(self, broker: Broker) -> None:
        broker.heartbeat("w1", "{}", T0)
        broker.heartbeat("w2", "{}", T0)
        broker.broadcast(task("first", payload="first"), T0)
        (running,) = take(broker, broadcast_queue("w1"), consumer="w1.0")
        broker.broadcast(task("second", payload="second"), T0)  # waits in w1's queue, and in w2's
        broker.forget_worker("w1")
        assert take(broker, broadcast_queue("w1"), consumer="w1.1") == []
        # Copy ids are "<task id>.<n>" (Producer.broadcast): only w2's copy of "second" is left.
        assert [payload_of(broker, f"second.{n}") for n in (1, 2)].count("second") == 1
        assert [r.id for r in broker.in_flight()] == [running.id]  # a copy being run is settled as any task
        broker.ack("w1.0", [running.id])
        assert [d.payload for d in take(broker, broadcast_queue("w2"))] == ["first", "second"]
        assert broker.broadcast(task("third"), T0) == 1  # w2 only

    def test_a_stale_worker_pruned_by_a_heartbeat_loses_its_broadcast_copies(self, broker: Broker) -> None:
        broker.heartbeat("dead", "{}", T0)
        assert broker.broadcast(task("b", payload="hello"), T0) == 1
        broker.heartbeat("alive", "{}", T0 + STALE_WORKER)
        assert stats(broker, broadcast_queue("dead"))[0] == 1  # not stale yet
        broker.heartbeat("alive", "{}", T0 + STALE_WORKER + 1)
        assert [w.worker_id for w in broker.workers()] == ["alive"]
        assert stats(broker, broadcast_queue("dead"))[0] == 0 and take(broker, broadcast_queue("dead")) == []
        assert broker.in_flight() == []


class CronStoreContract(_Contract):
    def test_cron_tick_is_claimed_exactly_once(self, broker: Broker) -> None:
        assert broker.last_cron_tick("s") is None
        assert broker.claim_cron_tick("s", T0, task("t1")) is True
        assert broker.claim_cron_tick("s", T0, task("t2")) is False
        assert broker.claim_cron_tick("s", T0 - 1, task("t3")) is False
        assert broker.last_cron_tick("s") == T0
        assert broker.claim_cron_tick("s", T0 + 60_000, task("t4")) is True
        assert broker.last_cron_tick("s") == T0 + 60_000
        assert broker.claim_cron_tick("other", T0, task("t5")) is True
        assert ids(take(broker)) == ["t1", "t4", "t5"]


class InspectionContract(_Contract):
    def test_queue_stats_in_the_order_given(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c"), task("e", eta_ms=T0 + 1000), task("h", "high")])
        take(broker, limit=1)
        assert broker.queue_stats(["high", "default", "empty"]) == [
            QueueStats("high", 1, 0, 0), QueueStats("default", 2, 1, 1), QueueStats("empty", 0, 0, 0)]
        assert broker.queue_stats([]) == []

    def test_in_flight_oldest_first_and_limited(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c", "other")])
        take(broker, "other", consumer="c2", now_ms=T0 + 50)
        take(broker, limit=1, now_ms=T0 + 10)
        take(broker, limit=1, now_ms=T0 + 90, consumer="c3")
        assert broker.in_flight() == [InFlight("a", "default", "c1", T0 + 10), InFlight("c", "other", "c2", T0 + 50),
                                      InFlight("b", "default", "c3", T0 + 90)]
        assert [r.id for r in broker.in_flight(limit=2)] == ["a", "c"]

    def test_dead_letters_newest_first_and_limited(self, broker: Broker) -> None:
        for i in range(3):
            broker.dead_letter("c1", f"d{i}", "default", None, f"r{i}", T0 + i)
        letters = broker.dead_letters()
        assert [d.id for d in letters] == ["d2", "d1", "d0"]
        assert letters[0].payload is None
        assert [d.id for d in broker.dead_letters(limit=2)] == ["d2", "d1"]

    def test_dead_count(self, broker: Broker) -> None:
        assert broker.dead_count() == 0
        for i in range(3):
            broker.dead_letter("c1", f"d{i}", "default", "p", "r", T0 + i)
        assert broker.dead_count() == 3
        broker.requeue_dead(["d1"])
        assert broker.dead_count() == 2
        broker.purge_dead()
        assert broker.dead_count() == 0

    def test_find_dead_by_exact_id_newest_first(self, broker: Broker) -> None:
        broker.dead_letter("c1", "a", "default", "pa", "first", T0)
        broker.dead_letter("c1", "ab", "default", "pab", "other", T0 + 1)
        broker.dead_letter("c1", "a", "other", None, "second", T0 + 2)  # the same id dead twice (a raw entry)
        assert [(d.id, d.reason, d.payload) for d in broker.find_dead("a")] == [
            ("a", "second", None), ("a", "first", "pa")]
        assert [d.id for d in broker.find_dead("ab")] == ["ab"]
        assert broker.find_dead("b") == [] and broker.find_dead("") == []
        assert broker.dead_count() == 3  # only read

    def test_heartbeats_add_up_in_per_minute_tallies(self, broker: Broker) -> None:
        minute = minute_of(T0)
        assert broker.tallies(T0 - 3_600_000, T0) == []
        broker.heartbeat("w1", "{}", T0, MinuteTally(minute, done={"default": 3}, failed={"default": 1}))
        broker.heartbeat("w2", "{}", T0 + 1, MinuteTally(minute, done={"default": 2, "high": 5},
                                                        pending={"default": 7}, eta={"default": 1}))
        broker.heartbeat("w1", "{}", T0 + 2, MinuteTally(minute, pending={"default": 4, "high": 0}))  # latest wins
        broker.heartbeat("w1", "{}", T0 + 60_000, MinuteTally(minute + 60_000, done={"default": 1}))
        broker.heartbeat("w1", "{}", T0 + 60_001)  # nothing counted: nothing written
        broker.heartbeat("w1", "{}", T0 + 60_002, MinuteTally(minute + 120_000, done={"default": 0}))
        first = MinuteTally(minute, done={"default": 5, "high": 5}, failed={"default": 1},
                            pending={"default": 4, "high": 0}, eta={"default": 1})
        second = MinuteTally(minute + 60_000, done={"default": 1})
        assert broker.tallies(T0 - 3_600_000, T0 + 180_000) == [first, second]
        assert broker.tallies(T0 + 60_000, T0 + 60_000) == [second]
        assert broker.tallies(T0 + 120_000, T0 + 600_000) == []
        assert [w.worker_id for w in broker.workers()] == ["w1", "w2"]  # the heartbeats themselves count too

    def test_tallies_are_dropped_after_their_time_to_live(self, make_broker: MakeBroker) -> None:
        broker = make_broker(LeaseRules(tally_ttl_ms=100))
        minute = minute_of(T0)
        broker.heartbeat("w1", "{}", T0, MinuteTally(minute, done={"default": 1}))
        time.sleep(0.3)  # Redis expires the minute's hash by its own clock; SQLite drops it at a later beat
        broker.heartbeat("w1", "{}", minute + 120_000, MinuteTally(minute + 120_000, done={"default": 2}))
        assert broker.tallies(minute, minute + 120_000) == [MinuteTally(minute + 120_000, done={"default": 2})]

    def test_workers_newest_first_with_their_latest_info(self, broker: Broker) -> None:
        assert broker.workers() == []
        broker.heartbeat("w1", '{"pid": 1}', T0)
        broker.heartbeat("w2", '{"pid": 2}', T0 + 10)
        assert [(w.worker_id, w.last_beat_ms, w.info) for w in broker.workers()] == [
            ("w2", T0 + 10, '{"pid": 2}'), ("w1", T0, '{"pid": 1}')]
        broker.heartbeat("w1", '{"pid": 11}', T0 + 20)
        assert [(w.worker_id, w.info) for w in broker.workers()] == [("w1", '{"pid": 11}'), ("w2", '{"pid": 2}')]


class AdministrationContract(_Contract):
    def test_requeue_all_dead_letters(self, broker: Broker) -> None:
        broker.enqueue([task("x")])
        broker.dead_letter("c1", "a", "default", "pa", "r", T0)
        broker.dead_letter("c1", "b", "other", "pb", "r", T0 + 1)
        broker.dead_letter("c1", "gone", "default", None, "r", T0 + 2)
        broker.dead_letter("c1", "c", "default", "pc", "r", T0 + 3)
        assert broker.requeue_dead() == 3
        assert broker.dead_letters() == []
        # Oldest first, to the tail.
        assert [(d.id, d.payload, d.crashes) for d in take(broker)] == [
            ("x", "p-x", 0), ("a", "pa", 0), ("c", "pc", 0)]
        assert ids(take(broker, "other")) == ["b"]

    def test_requeue_dead_letters_by_id(self, broker: Broker) -> None:
        broker.dead_letter("c1", "a", "default", "pa", "r", T0)
        broker.dead_letter("c1", "b", "default", "pb", "r", T0 + 1)
        assert broker.requeue_dead(["b", "unknown"]) == 1
        assert [d.id for d in broker.dead_letters()] == ["a"]
        assert ids(take(broker)) == ["b"]
        assert broker.requeue_dead([]) == 0

    def test_requeued_dead_letter_has_no_crashes(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.recover_consumer("c1", ["a"])
        assert take(broker)[0].crashes == 1
        broker.dead_letter("c1", "a", "default", "p-a", "crashed", T0)
        broker.requeue_dead(["a"])
        assert [(d.id, d.crashes) for d in take(broker)] == [("a", 0)]

    def test_purge_dead(self, broker: Broker) -> None:
        broker.dead_letter("c1", "a", "default", "pa", "r", T0)
        broker.dead_letter("c1", "b", "default", "pb", "r", T0)
        assert broker.purge_dead() == 2
        assert broker.dead_letters() == []
        assert broker.purge_dead() == 0

    def test_delete_dead_letters_by_id(self, broker: Broker) -> None:
        broker.dead_letter("c1", "a", "default", "pa", "r", T0)
        broker.dead_letter("c1", "b", "default", "pb", "r", T0 + 1)
        broker.dead_letter("c1", "c", "other", None, "r", T0 + 2)
        broker.dead_letter("c1", "a", "default", "pa2", "again", T0 + 3)
        assert broker.delete_dead(["a", "c", "unknown"]) == 3
        assert [d.id for d in broker.dead_letters()] == ["b"]
        assert broker.delete_dead([]) == 0 and broker.delete_dead(["a"]) == 0
        assert broker.dead_count() == 1
        assert take(broker) == [] and take(broker, "other") == []  # deleted, not requeued

    def test_purge_queue_deletes_pending_and_waiting_tasks(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("e", eta_ms=T0 + 10, dedup_key="k"), task("o", "other")])
        assert broker.purge_queue("default") == (2, 1)
        assert stats(broker) == (0, 0, 0)
        assert broker.lookup("a") is None
        assert broker.lookup("e") is None
        assert stats(broker, "other") == (1, 0, 0)
        assert broker.purge_queue("default") == (0, 0)
        broker.enqueue([task("e2", eta_ms=T0 + 10, dedup_key="k")])  # the old dedup key went too
        assert ids(take(broker, now_ms=T0 + 10)) == ["e2"]


class UniqueContract(_Contract):
    """Unique tasks (``OutgoingTask.unique``): one stored task per lock while it waits or runs."""

    def test_a_unique_task_is_stored_once_and_a_second_gets_the_first_ones_id(self, broker: Broker) -> None:
        first, second = unique_task("a"), unique_task("b")
        assert broker.enqueue([first]) == [first.id]
        assert broker.enqueue([second]) == [first.id]
        assert stats(broker) == (1, 0, 0)
        assert [(d.id, d.payload) for d in take(broker)] == [(first.id, "p-a")]

    def test_other_locks_and_tasks_that_are_not_unique_are_stored_as_ever(self, broker: Broker) -> None:
        one, other = unique_task("a", "k1"), unique_task("b", "k2")
        assert broker.enqueue([one, task("plain"), other, task("plain2")]) == [one.id, "plain", other.id, "plain2"]
        assert ids(take(broker)) == [one.id, "plain", other.id, "plain2"]

    def test_a_duplicate_in_the_same_call_gets_the_first_ones_id(self, broker: Broker) -> None:
        one, dup = unique_task("a"), unique_task("c")
        assert broker.enqueue([one, task("plain"), dup]) == [one.id, "plain", one.id]
        assert ids(take(broker)) == [one.id, "plain"]

    def test_the_same_task_sent_again_is_not_stored_twice(self, broker: Broker) -> None:
        one = unique_task("a")  # a producer that lost the reply sends the very same task again
        assert broker.enqueue([one]) == [one.id]
        assert broker.enqueue([one]) == [one.id]
        assert ids(take(broker)) == [one.id]

    def test_the_lock_is_across_queues(self, broker: Broker) -> None:
        one = unique_task("a", queue="high")
        broker.enqueue([one])
        assert broker.enqueue([unique_task("b", queue="low")]) == [one.id]
        assert stats(broker, "low") == (0, 0, 0)

    def test_the_lock_holds_while_the_task_runs_and_its_ack_releases_it(self, broker: Broker) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        assert broker.enqueue([unique_task("b")]) == [one.id]
        broker.ack("c1", [one.id])
        again = unique_task("c")
        assert broker.enqueue([again]) == [again.id]
        assert ids(take(broker)) == [again.id]

    def test_an_ack_carried_by_the_next_reservation_releases_the_lock(self, broker: Broker) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        assert take(broker, acks=(one.id,)) == []
        again = unique_task("b")
        assert broker.enqueue([again]) == [again.id]

    def test_a_dead_letter_releases_the_lock(self, broker: Broker) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        broker.dead_letter("c1", one.id, "default", "p-a", "boom", T0)
        again = unique_task("b")
        assert broker.enqueue([again]) == [again.id]

    @pytest.mark.parametrize("why", ["expired", "cancelled"])
    def test_a_task_discarded_unrun_releases_the_lock(self, broker: Broker, why: Unrun) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        broker.discard("c1", one.id, "default", why)
        again = unique_task("b")
        assert broker.enqueue([again]) == [again.id]

    def test_a_retry_keeps_the_lock_until_the_retried_task_ends(self, broker: Broker) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        broker.retry("c1", OutgoingTask(one.id, "default", "p-a2", T0 + 1000))
        assert broker.enqueue([unique_task("b")]) == [one.id]
        assert [(d.id, d.payload) for d in take(broker, now_ms=T0 + 1000)] == [(one.id, "p-a2")]
        assert broker.enqueue([unique_task("c")]) == [one.id]
        broker.ack("c1", [one.id])
        again = unique_task("d")
        assert broker.enqueue([again]) == [again.id]

    def test_release_and_crash_recovery_keep_the_lock(self, broker: Broker) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        assert broker.release("c1", [one.id]) == 1
        assert broker.enqueue([unique_task("b")]) == [one.id]
        take(broker)
        assert broker.recover_consumer("c1", [one.id]) == 1
        assert broker.enqueue([unique_task("c")]) == [one.id]
        assert [(d.id, d.crashes) for d in take(broker)] == [(one.id, 1)]

    def test_a_task_waiting_for_its_eta_holds_its_lock(self, broker: Broker) -> None:
        one = unique_task("a", eta_ms=T0 + 5000)
        broker.enqueue([one])
        assert broker.enqueue([unique_task("b")]) == [one.id]
        assert stats(broker) == (0, 1, 0)
        assert ids(take(broker, now_ms=T0 + 5000)) == [one.id]

    def test_purging_the_queue_releases_the_locks_of_its_tasks(self, broker: Broker) -> None:
        waiting, queued = unique_task("a", "k1", eta_ms=T0 + 5000), unique_task("b", "k2")
        broker.enqueue([waiting, queued])
        assert broker.purge_queue("default") == (1, 1)
        fresh = [unique_task("c", "k1"), unique_task("d", "k2")]
        assert broker.enqueue(fresh) == [t.id for t in fresh]

    def test_the_lock_expires_after_its_window(self, broker: Broker) -> None:
        # Real time: Redis counts a lock's window on its own clock.
        now = int(time.time() * 1000)
        one = unique_task("a", window_ms=300, since_ms=now)
        broker.enqueue([one])
        assert broker.enqueue([unique_task("b", window_ms=300, since_ms=now + 1)]) == [one.id]
        time.sleep(0.45)
        later = unique_task("c", window_ms=300, since_ms=int(time.time() * 1000))
        assert broker.enqueue([later]) == [later.id]
        assert ids(take(broker)) == [one.id, later.id]

    def test_a_cron_tick_of_a_held_unique_task_is_recorded_and_stores_nothing(self, broker: Broker) -> None:
        one = unique_task("a")
        assert broker.claim_cron_tick("s", T0, one) is True
        assert broker.claim_cron_tick("s", T0 + 1000, unique_task("b")) is True
        assert broker.last_cron_tick("s") == T0 + 1000
        assert ids(take(broker)) == [one.id]
        broker.ack("c1", [one.id])
        assert broker.claim_cron_tick("s", T0 + 2000, later := unique_task("c")) is True
        assert ids(take(broker)) == [later.id]


class CancellationContract(_Contract):
    """``Producer.cancel`` and how every end of an owned task honours a cancellation mark."""

    QUEUES = ("default", "other")

    def cancel(self, broker: Broker, task_id: str) -> Cancelled:
        return broker.cancel(task_id, T0, self.QUEUES)

    def test_a_queued_task_is_removed_and_never_runs(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c"), task("o", "other")])
        assert self.cancel(broker, "b") is Cancelled.REMOVED
        assert self.cancel(broker, "o") is Cancelled.REMOVED
        assert broker.lookup("b") is None and broker.lookup("o") is None
        assert stats(broker) == (2, 0, 0) and stats(broker, "other") == (0, 0, 0)
        assert ids(take(broker, ["default", "other"])) == ["a", "c"]

    def test_a_task_waiting_for_its_eta_is_removed_with_its_dedup_key(self, broker: Broker) -> None:
        broker.enqueue([task("e", eta_ms=T0 + 10, dedup_key="k"), task("f", eta_ms=T0 + 20)])
        assert self.cancel(broker, "e") is Cancelled.REMOVED
        assert stats(broker) == (0, 1, 0)
        assert ids(take(broker, now_ms=T0 + 100)) == ["f"]
        broker.enqueue([task("e2", eta_ms=T0 + 10, dedup_key="k")])  # the key went with it: a new task
        assert ids(take(broker, now_ms=T0 + 100)) == ["e2"]

    def test_a_task_waiting_for_a_retry_is_removed(self, broker: Broker) -> None:
        broker.enqueue([task("r")])
        take(broker)
        broker.retry("c1", task("r", payload="p-r2", eta_ms=T0 + 5000))
        assert self.cancel(broker, "r") is Cancelled.REMOVED
        assert stats(broker) == (0, 0, 0) and take(broker, now_ms=T0 + 5000) == []

    def test_an_owned_task_is_marked_and_reported_to_its_consumers_renewal_only(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("x", "other")])
        take(broker, limit=2, consumer="c1")
        take(broker, "other", consumer="c2")
        assert self.cancel(broker, "b") is Cancelled.RUNNING
        assert self.cancel(broker, "x") is Cancelled.RUNNING
        assert self.cancel(broker, "b") is Cancelled.RUNNING  # again, until it ends
        assert sorted(owners(broker)) == [("a", "c1"), ("b", "c1"), ("x", "c2")]  # nothing else changed
        assert broker.renew_leases(["c1"], T0 + LEASE) == {"b": "c1"}
        assert broker.renew_leases(["c1", "c2"], T0 + LEASE) == {"b": "c1", "x": "c2"}
        assert broker.renew_leases(["c3"], T0 + LEASE) == {}

    def test_an_unknown_or_finished_task_is_left_alone(self, broker: Broker) -> None:
        assert self.cancel(broker, "never-seen") is Cancelled.UNKNOWN
        broker.enqueue([task("done")])
        take(broker)
        broker.ack("c1", ["done"])
        assert self.cancel(broker, "done") is Cancelled.UNKNOWN
        assert broker.renew_leases(["c1"], T0 + LEASE) == {}

    def test_a_mark_is_forgotten_when_the_task_is_acknowledged(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        self.cancel(broker, "a")
        broker.ack("c1", ["a"])  # it finished before its worker could stop it
        assert broker.renew_leases(["c1"], T0 + LEASE) == {}
        broker.enqueue([task("a", payload="p-again")])  # the same id stored again is not cancelled
        take(broker)
        assert broker.renew_leases(["c1"], T0 + LEASE) == {}
        broker.retry("c1", task("a", payload="p-retried"))
        assert ids(take(broker)) == ["a"]

    def test_a_marked_task_is_never_retried(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        self.cancel(broker, "a")
        broker.retry("c1", task("a", payload="p-a2", eta_ms=T0 + 10))
        assert stats(broker) == (0, 0, 0) and broker.lookup("a") is None
        assert take(broker, now_ms=T0 + 10) == []
        assert broker.renew_leases(["c1"], T0 + LEASE) == {}

    def test_a_marked_task_is_never_dead_lettered(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        self.cancel(broker, "a")
        broker.dead_letter("c1", "a", "default", "p-a", "raised TaskCancelled", T0)
        assert broker.dead_letters() == [] and broker.lookup("a") is None and owners(broker) == []

    def test_a_marked_task_is_not_handed_back(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        self.cancel(broker, "a")
        assert broker.release("c1", ["a", "b"]) == 1
        assert ids(take(broker, consumer="c2")) == ["b"]
        assert broker.lookup("a") is None

    def test_a_marked_task_never_comes_back_from_crash_recovery(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        self.cancel(broker, "a")
        assert broker.recover_consumer("c1", ["a", "b"]) == 1
        assert [(d.id, d.crashes) for d in take(broker, consumer="c2")] == [("b", 1)]
        assert broker.lookup("a") is None

    def test_a_marked_task_never_comes_back_when_its_lease_expires(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, lease_ms=100)
        self.cancel(broker, "a")
        settle(broker, T0 + 101)  # suspected...
        settle(broker, T0 + 101 + GRACE)  # ...then recovered
        assert ids(take(broker, consumer="c2", now_ms=T0 + 101 + GRACE)) == ["b"]
        assert broker.lookup("a") is None

    def test_cancelling_a_waiting_unique_task_releases_its_lock(self, broker: Broker) -> None:
        one = unique_task("a", eta_ms=T0 + 10)
        broker.enqueue([one])
        assert self.cancel(broker, one.id) is Cancelled.REMOVED
        again = unique_task("b")
        assert broker.enqueue([again]) == [again.id]

    @pytest.mark.parametrize("end", ["retry", "release", "recover", "dead_letter"])
    def test_a_marked_unique_task_dropped_instead_of_stored_again_releases_its_lock(
            self, broker: Broker, end: str) -> None:
        one = unique_task("a")
        broker.enqueue([one])
        take(broker)
        self.cancel(broker, one.id)
        if end == "retry":
            broker.retry("c1", OutgoingTask(one.id, "default", "p-a2"))
        elif end == "release":
            assert broker.release("c1", [one.id]) == 0
        elif end == "recover":
            assert broker.recover_consumer("c1", [one.id]) == 0
        else:
            broker.dead_letter("c1", one.id, "default", "p-a", "boom", T0)
        again = unique_task("b")
        assert broker.enqueue([again]) == [again.id]

    def test_a_removed_task_keeps_the_outcome_given(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("e", eta_ms=T0 + 10)])
        assert broker.cancel("a", T0, self.QUEUES, kept("a")) is Cancelled.REMOVED
        assert broker.cancel("e", T0, self.QUEUES, kept("e")) is Cancelled.REMOVED
        assert broker.task_state("a", T0) == TaskState(None, '{"outcome":"a"}')
        assert broker.task_state("e", T0) == TaskState(None, '{"outcome":"e"}')

    def test_a_task_no_longer_stored_whose_outcome_is_kept_is_finished(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.ack("c1", ["a"], [kept("a")])
        assert broker.cancel("a", T0, self.QUEUES, kept("a", '{"other":1}')) is Cancelled.FINISHED
        assert broker.task_state("a", T0).outcome == '{"outcome":"a"}'  # left as it was
        assert broker.cancel("b", T0, self.QUEUES) is Cancelled.UNKNOWN

    def test_an_unknown_id_someone_waits_for_is_still_unknown(self, broker: Broker) -> None:
        assert broker.wait_outcome("gone", T0, 0.05) is None  # a handle waited for it (Redis leaves a mark)
        assert broker.cancel("gone", T0, self.QUEUES) is Cancelled.UNKNOWN

    @pytest.mark.parametrize("end", ["retry", "release", "recover", "dead_letter", "discard"])
    def test_a_marked_task_dropped_keeps_the_outcome_its_mark_carries(self, broker: Broker, end: str) -> None:
        broker.enqueue([task("a")])
        take(broker)
        assert broker.cancel("a", T0, self.QUEUES, kept("a", '{"marked":1}')) is Cancelled.RUNNING
        assert broker.task_state("a", T0) == TaskState(TaskStatus.RUNNING, None)  # nothing kept yet
        if end == "retry":
            broker.retry("c1", task("a", payload="p-a2"))
        elif end == "release":
            broker.release("c1", ["a"])
        elif end == "recover":
            broker.recover_consumer("c1", ["a"])
        elif end == "dead_letter":
            broker.dead_letter("c1", "a", "default", "p-a", "boom", T0, kept("a", '{"dead":1}'))
        else:
            broker.discard("c1", "a", "default", "cancelled")
        assert broker.task_state("a", T0) == TaskState(None, '{"marked":1}')

    def test_a_discard_keeps_its_own_outcome_over_the_marks(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        self.cancel(broker, "a")  # a mark without an outcome
        broker.cancel("b", T0, self.QUEUES, kept("b", '{"marked":1}'))
        broker.discard("c1", "a", "default", "cancelled", kept("a", '{"worker":1}'))
        broker.discard("c1", "b", "default", "cancelled", kept("b", '{"worker":2}'))
        assert broker.task_state("a", T0).outcome == '{"worker":1}'
        assert broker.task_state("b", T0).outcome == '{"worker":2}'

    def test_discarding_a_marked_task_takes_its_mark(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        self.cancel(broker, "a")
        broker.discard("c1", "a", "default", "cancelled")
        assert broker.renew_leases(["c1"], T0 + LEASE) == {}
        assert broker.lookup("a") is None and broker.queue_stats(["default"])[0].expired == 0


def envelope(task_id: str, name: str, queue: str = "default", signed: bool = False) -> OutgoingTask:
    """A task whose payload is a real envelope: task limits read the task's name from it."""
    codec = Codec(signing_key=SIGNING_KEY if signed else None)
    return OutgoingTask(task_id, queue, codec.encode(TaskMessage(task_id, name, queue, (1,), {"k": name})))


SIGNING_KEY = b"a signing key of 32 bytes, or so"


def task_rates(name: str, spec: str, burst: int = 1, signed: bool = False) -> RateLimits:
    return RateLimits.build([(name, RateLimit.parse(spec, burst))], [], signed=signed)


def queue_rates(queue: str, spec: str, burst: int = 1) -> RateLimits:
    return RateLimits(queues=(QueueRate(queue, RateLimit.parse(spec, burst)),))


def rated(broker: Broker, rates: RateLimits, queues: list[str] | str = "default", limit: int = 100,
          now_ms: int = T0, consumer: str = "c1") -> tuple[list[str], int | None]:
    names = [queues] if isinstance(queues, str) else queues
    reservation = broker.reserve(consumer, names, limit, now_ms, LEASE, rates=rates)
    return ids(list(reservation.deliveries)), reservation.next_eta_ms


class RateLimitContract(_Contract):
    """``Consumer.reserve`` with ``rates``: global limits, enforced in the reservation at the given now_ms."""

    def test_a_queue_limit_spaces_takes_one_interval_apart(self, broker: Broker) -> None:
        broker.enqueue([task(f"t{i}") for i in range(5)])
        rates = queue_rates("default", "2/s")
        assert rated(broker, rates) == (["t0"], T0 + 500)
        assert rated(broker, rates, now_ms=T0 + 499) == ([], T0 + 500)
        assert rated(broker, rates, now_ms=T0 + 500) == (["t1"], T0 + 1000)
        assert stats(broker) == (3, 0, 2)  # a queue over its limit keeps its tasks where they are

    def test_the_limit_is_shared_by_every_consumer(self, broker: Broker) -> None:
        broker.enqueue([task(f"t{i}") for i in range(4)])
        rates = queue_rates("default", "10/s")
        assert rated(broker, rates, consumer="c1")[0] == ["t0"]
        assert rated(broker, rates, consumer="c2") == ([], T0 + 100)
        assert rated(broker, rates, consumer="c2", now_ms=T0 + 100)[0] == ["t1"]

    def test_a_batch_takes_no_more_than_the_burst_allows(self, broker: Broker) -> None:
        broker.enqueue([task(f"t{i}") for i in range(10)])
        rates = queue_rates("default", "10/s", burst=3)
        assert rated(broker, rates, limit=100) == (["t0", "t1", "t2"], T0 + 100)
        assert rated(broker, rates, limit=100, now_ms=T0 + 100)[0] == ["t3"]
        assert rated(broker, rates, limit=100, now_ms=T0 + 10_000)[0] == ["t4", "t5", "t6"]

    def test_a_queue_over_its_limit_is_skipped_for_the_next_one(self, broker: Broker) -> None:
        broker.enqueue([task("h1", "high"), task("h2", "high"), task("l1", "low"), task("l2", "low")])
        rates = queue_rates("high", "1/m")
        assert rated(broker, rates, ["high", "low"]) == (["h1"], T0 + 60_000)
        assert rated(broker, rates, ["high", "low"]) == (["l1", "l2"], T0 + 60_000)
        assert rated(broker, rates, ["high", "low"]) == ([], T0 + 60_000)
        assert rated(broker, rates, ["high", "low"], now_ms=T0 + 60_000)[0] == ["h2"]

    def test_a_task_over_its_limit_waits_in_the_eta_set_and_the_rest_is_taken(self, broker: Broker) -> None:
        broker.enqueue([envelope("s1", "send"), envelope("s2", "send"), envelope("o1", "other"),
                        envelope("s3", "send"), envelope("o2", "other")])
        rates = task_rates("send", "10/s")
        assert rated(broker, rates) == (["s1", "o1", "o2"], T0 + 100)
        assert stats(broker) == (0, 2, 3)
        # Deferred one interval apart, each checked again when taken; kept as they were.
        assert rated(broker, rates, now_ms=T0 + 99) == ([], T0 + 100)
        assert rated(broker, rates, now_ms=T0 + 100) == (["s2"], T0 + 200)
        found = broker.lookup("s3")
        assert found is not None and found.payload == envelope("s3", "send").payload and found.crashes == 0
        assert rated(broker, rates, now_ms=T0 + 200) == (["s3"], None)

    def test_a_deferred_task_keeps_its_crash_count(self, broker: Broker) -> None:
        broker.enqueue([envelope("s1", "send"), envelope("s2", "send")])
        assert take(broker, limit=2, consumer="dying") != []
        broker.recover_consumer("dying", ["s1", "s2"])
        rates = task_rates("send", "1/s")
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, rates=rates).deliveries
        assert [(d.id, d.crashes) for d in got] == [("s1", 1)]
        got = broker.reserve("c1", ["default"], 10, T0 + 1000, LEASE, rates=rates).deliveries
        assert [(d.id, d.crashes) for d in got] == [("s2", 1)]

    def test_a_backlog_is_deferred_once_at_increasing_times(self, broker: Broker) -> None:
        broker.enqueue([envelope(f"s{i}", "send") for i in range(6)])
        rates = task_rates("send", "10/s")
        assert rated(broker, rates, limit=2) == (["s0"], T0 + 100)
        assert rated(broker, rates, limit=2) == ([], T0 + 100)
        # Every later reservation finds the next one due, one interval after the one before.
        for step in range(1, 6):
            assert rated(broker, rates, limit=2, now_ms=T0 + 100 * step)[0] == [f"s{step}"]
        assert stats(broker) == (0, 0, 6)

    def test_task_limits_read_signed_envelopes(self, broker: Broker) -> None:
        broker.enqueue([envelope("s1", "send", signed=True), envelope("s2", "send", signed=True)])
        assert rated(broker, task_rates("send", "1/s", signed=True)) == (["s1"], T0 + 1000)

    def test_a_limited_task_and_its_queue_limit_both_hold(self, broker: Broker) -> None:
        broker.enqueue([envelope("s1", "send"), envelope("o1", "other"), envelope("o2", "other")])
        rates = RateLimits.build([("send", RateLimit.parse("1/s"))], [("default", RateLimit.parse("2/s", 2))],
                                 signed=False)
        assert rated(broker, rates) == (["s1", "o1"], T0 + 500)
        assert rated(broker, rates, now_ms=T0 + 500) == (["o2"], T0 + 1000)

    def test_what_is_not_an_envelope_is_not_limited(self, broker: Broker) -> None:
        broker.enqueue([task("raw1"), task("raw2")])
        assert rated(broker, task_rates("send", "1/m")) == (["raw1", "raw2"], None)

    def test_broadcast_copies_are_never_limited(self, broker: Broker) -> None:
        broker.heartbeat("w1", "{}", T0)
        for n in range(2):
            broker.broadcast(envelope(f"b{n}", "send"), T0)
        got = rated(broker, task_rates("send", "1/m"), broadcast_queue("w1"))[0]
        assert len(got) == 2

    def test_without_limits_nothing_is_held(self, broker: Broker) -> None:
        broker.enqueue([envelope("s1", "send"), envelope("s2", "send")])
        assert rated(broker, RateLimits()) == (["s1", "s2"], None)

    def test_limits_given_to_a_reservation_that_takes_nothing_change_nothing(self, broker: Broker) -> None:
        broker.enqueue([task("t0"), task("t1")])
        rates = queue_rates("default", "1/s")
        assert broker.reserve("c1", ["default"], 0, T0, LEASE, rates=rates).deliveries == ()
        assert rated(broker, rates)[0] == ["t0"]

    def test_a_waiting_reservation_on_a_limited_queue_never_takes_early(self, broker: Broker) -> None:
        broker.enqueue([task("t0"), task("t1")])
        rates = queue_rates("default", "1/m")
        assert rated(broker, rates)[0] == ["t0"]
        got = broker.reserve("c1", ["default"], 10, T0 + 1, LEASE, wait=0.05, rates=rates)
        assert got.deliveries == () and got.next_eta_ms == T0 + 60_000

    def test_tasks_stored_in_a_queue_held_by_its_limit_do_not_wake_a_waiting_reservation(
            self, broker: Broker) -> None:
        # Waking the consumer for each of them would only have it skip the queue again: a busy loop driven
        # by producers. A task for another queue it serves still wakes it at once.
        broker.enqueue([task("t0"), task("t1")])
        rates = queue_rates("default", "1/m")
        assert rated(broker, rates, ["default", "free"])[0] == ["t0"]
        assert rated(broker, rates, ["default", "free"]) == ([], T0 + 60_000)
        got: list[list[str]] = []
        started = time.monotonic()

        def wait() -> None:
            reservation = broker.reserve("c1", ["default", "free"], 10, T0, LEASE, wait=3.0, rates=rates)
            got.append(ids(list(reservation.deliveries)))

        waiter = threading.Thread(target=wait)
        waiter.start()
        for n in range(20):
            broker.enqueue([task(f"held{n}")])
            time.sleep(0.02)
        assert waiter.is_alive(), "woken by tasks it may not take"
        broker.enqueue([task("f1", "free")])
        waiter.join(2.0)
        assert not waiter.is_alive() and got == [["f1"]]
        assert time.monotonic() - started < 2.9

    def test_purging_a_queue_lets_the_next_deferral_start_afresh(self, broker: Broker) -> None:
        broker.enqueue([envelope(f"s{i}", "send") for i in range(5)])
        rates = task_rates("send", "1/s")
        assert rated(broker, rates) == (["s0"], T0 + 1000)
        broker.purge_queue("default")
        broker.enqueue([envelope("n1", "send"), envelope("n2", "send")])
        assert rated(broker, rates, now_ms=T0 + 1000) == (["n1"], T0 + 2000)


def kept(task_id: str, document: str = "", ttl_ms: int = 60_000, finished_ms: int = T0) -> OutcomeRecord:
    return OutcomeRecord(task_id, document or f'{{"outcome":"{task_id}"}}', ttl_ms, finished_ms)


def envelope_text(task_id: str, queue: str = "default") -> str:
    """A payload as hexq writes it: the broker finds an eta task's queue in it (task_state)."""
    return (f'{{"v":1,"id":"{task_id}","task":"t","queue":"{queue}","args":[],"kwargs":{{}},"retries":0,'
            '"enqueued_at":0}')


def stored_later(broker: Broker, outcome: OutcomeRecord, after: float) -> threading.Thread:
    def store() -> None:
        time.sleep(after)
        broker.record_outcome(outcome)

    thread = threading.Thread(target=store)
    thread.start()
    return thread


class ResultsContract(_Contract):
    def test_an_outcome_sent_with_the_acks_of_a_reservation_is_kept(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c")])
        take(broker, limit=3)
        broker.reserve("c1", ["default"], 1, T0, LEASE, ["a", "b"], outcomes=[kept("b")])
        assert broker.task_state("a", T0) == TaskState(None, None)  # acknowledged, no outcome kept
        assert broker.task_state("b", T0) == TaskState(None, '{"outcome":"b"}')
        assert owners(broker) == [("c", "c1")]

    def test_an_outcome_sent_with_ack_is_kept_and_the_ack_order_holds(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c")])
        take(broker, limit=3)
        broker.ack("c1", ["a", "b"], [kept("a", '{"x":"line\nbreak é"}')])
        assert broker.task_state("a", T0).outcome == '{"x":"line\nbreak é"}'
        assert owners(broker) == [("c", "c1")]
        assert payload_of(broker, "b") is None

    def test_a_dead_letter_keeps_the_outcome_given_with_it(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=2)
        broker.dead_letter("c1", "a", "default", "p-a", "boom", T0, kept("a"))
        broker.dead_letter("c1", "b", "default", "p-b", "boom", T0)
        assert broker.task_state("a", T0) == TaskState(None, '{"outcome":"a"}')
        assert broker.task_state("b", T0) == TaskState(None, None)
        assert [letter.id for letter in broker.dead_letters()] == ["b", "a"]

    def test_task_state_through_the_life_cycle(self, broker: Broker) -> None:
        broker.enqueue([OutgoingTask("e", "default", envelope_text("e"), T0 + 1000), task("q")])
        assert broker.task_state("e", T0).live is TaskStatus.SCHEDULED
        assert broker.task_state("e", T0 + 1000).live is TaskStatus.QUEUED  # due: the next reservation takes it
        assert broker.task_state("q", T0).live is TaskStatus.QUEUED
        take(broker, limit=1)
        assert broker.task_state("q", T0).live is TaskStatus.RUNNING
        broker.ack("c1", ["q"], [kept("q")])
        assert broker.task_state("q", T0) == TaskState(None, '{"outcome":"q"}')
        assert broker.task_state("never", T0) == TaskState(None, None)

    def test_a_retried_task_waits_scheduled_for_its_delay(self, broker: Broker) -> None:
        broker.enqueue([OutgoingTask("r", "other", envelope_text("r", "other"))])
        take(broker, "other", limit=1)
        broker.retry("c1", OutgoingTask("r", "other", envelope_text("r", "other"), T0 + 5000))
        assert broker.task_state("r", T0).live is TaskStatus.SCHEDULED

    def test_record_outcome_replaces_the_earlier_one_and_leaves_the_task_alone(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        broker.record_outcome(kept("a", '{"n":1}'))
        broker.record_outcome(kept("a", '{"n":2}'))
        assert broker.task_state("a", T0) == TaskState(TaskStatus.QUEUED, '{"n":2}')
        assert ids(take(broker)) == ["a"]

    def test_an_outcome_expires_after_its_time_to_live(self, broker: Broker) -> None:
        now = int(time.time() * 1000)
        broker.record_outcome(kept("a", ttl_ms=100, finished_ms=now))
        broker.record_outcome(kept("b", ttl_ms=60_000, finished_ms=now))
        time.sleep(0.3)
        later = now + 300
        assert broker.task_state("a", later) == TaskState(None, None)
        assert broker.wait_outcome("a", later, 0.0) is None
        assert broker.task_state("b", later).outcome == '{"outcome":"b"}'

    def test_wait_outcome_returns_a_kept_outcome_at_once_and_leaves_it(self, broker: Broker) -> None:
        broker.record_outcome(kept("a"))
        assert broker.wait_outcome("a", T0, 5.0) == '{"outcome":"a"}'
        assert broker.wait_outcome("a", T0, 5.0) == '{"outcome":"a"}'
        assert broker.task_state("a", T0).outcome == '{"outcome":"a"}'

    def test_wait_outcome_times_out_with_none(self, broker: Broker) -> None:
        started = time.monotonic()
        assert broker.wait_outcome("a", T0, 0.2) is None
        assert time.monotonic() - started >= 0.15

    def test_every_waiter_is_woken_by_one_outcome(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        got: list[str | None] = []
        waiters = [threading.Thread(target=lambda: got.append(broker.wait_outcome("a", T0, 5.0))) for _ in range(3)]
        for waiter in waiters:
            waiter.start()
        writer = stored_later(broker, kept("a"), 0.2)
        for thread in [writer, *waiters]:
            thread.join(5.0)
            assert not thread.is_alive()
        assert got == ['{"outcome":"a"}'] * 3

    def test_requeueing_a_dead_letter_drops_its_outcome(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker)
        broker.dead_letter("c1", "a", "default", "p-a", "boom", T0, kept("a"))
        assert broker.requeue_dead(["a"]) == 1
        assert broker.task_state("a", T0) == TaskState(TaskStatus.QUEUED, None)


class BrokerContract(ProducerContract, ConsumerContract, ResultsContract, SupervisionContract, CronStoreContract,
                     InspectionContract, AdministrationContract, UniqueContract, CancellationContract,
                     RateLimitContract):
    """Every role: what each adapter's test module subclasses (with a ``make_broker`` fixture)."""
