"""The Broker contract, one test per promise in ``hexq.core.ports.Broker``'s docstrings.

Subclass ``BrokerContract`` and provide a ``broker`` fixture that yields a fresh, empty broker; every
adapter (memory, fakeredis, real Redis) runs the same tests. Tests assert on state that the port exposes.
"""

from __future__ import annotations

import time

from hexq.core.ports import Broker, DeadLetter, Delivery, InFlight, OutgoingTask, QueueStats

T0 = 1_700_000_000_000  # a realistic epoch-ms "now"
LEASE = 30_000
GRACE = 3_000  # an expired lease is recovered once it has looked expired for this long (see Broker.reserve)


def task(task_id: str, queue: str = "default", payload: str | None = None, eta_ms: int | None = None,
         dedup_key: str | None = None) -> OutgoingTask:
    return OutgoingTask(task_id, queue, payload if payload is not None else f"p-{task_id}", eta_ms, dedup_key)


def take(broker: Broker, queues: list[str] | str = "default", limit: int = 100, now_ms: int = T0,
         consumer: str = "c1", lease_ms: int = LEASE, acks: tuple[str, ...] = ()) -> list[Delivery]:
    names = [queues] if isinstance(queues, str) else queues
    return list(broker.reserve(consumer, names, limit, now_ms, lease_ms, acks).deliveries)


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def stats(broker: Broker, queue: str = "default") -> tuple[int, int, int]:
    (row,) = broker.queue_stats([queue])
    return row.pending, row.eta, row.in_flight


class BrokerContract:
    """Requires a ``broker`` fixture (function scope, empty broker)."""

    # -- enqueue and reserve -----------------------------------------------------------------------
    def test_empty_reserve_returns_nothing(self, broker: Broker) -> None:
        reservation = broker.reserve("c1", ["default", "other"], 10, T0, LEASE)
        assert reservation.deliveries == ()
        assert reservation.next_eta_ms is None

    def test_fifo_within_a_queue_across_batches(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        broker.enqueue([task("c")])
        got = take(broker)
        assert ids(got) == ["a", "b", "c"]
        assert [d.payload for d in got] == ["p-a", "p-b", "p-c"]
        assert all(d.queue == "default" and d.crashes == 0 for d in got)

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

    def test_fetch_payload_of_queued_waiting_and_owned_tasks(self, broker: Broker) -> None:
        broker.enqueue([task("q"), task("w", eta_ms=T0 + 1000), task("o", "busy")])
        take(broker, "busy")
        assert broker.fetch_payload("q") == "p-q"
        assert broker.fetch_payload("w") == "p-w"
        assert broker.fetch_payload("o") == "p-o"
        assert broker.fetch_payload("nope") is None

    # -- eta ---------------------------------------------------------------------------------------
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

    def test_next_eta_is_the_earliest_among_served_queues_only(self, broker: Broker) -> None:
        broker.enqueue([task("x", "a", eta_ms=T0 + 300), task("y", "b", eta_ms=T0 + 200),
                        task("z", "c", eta_ms=T0 + 100)])
        assert broker.reserve("c1", ["a", "b"], 10, T0, LEASE).next_eta_ms == T0 + 200
        assert broker.reserve("c1", ["a"], 10, T0, LEASE).next_eta_ms == T0 + 300

    def test_eta_dedup_key_replaces_the_waiting_task(self, broker: Broker) -> None:
        broker.enqueue([task("first", payload="old", eta_ms=T0 + 1000, dedup_key="k")])
        broker.enqueue([task("second", payload="new", eta_ms=T0 + 2000, dedup_key="k")])
        assert stats(broker) == (0, 1, 0)
        assert take(broker, now_ms=T0 + 1500) == []
        got = take(broker, now_ms=T0 + 2000)
        assert [(d.id, d.payload) for d in got] == [("first", "new")]

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

    # -- ack ---------------------------------------------------------------------------------------
    def test_ack_forgets_payload_and_ownership(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        broker.ack("c1", ["a", "unknown"])
        assert broker.fetch_payload("a") is None
        assert broker.fetch_payload("b") == "p-b"
        assert [r.id for r in broker.in_flight()] == ["b"]
        assert stats(broker) == (0, 0, 1)
        broker.ack("c1", ["a"])  # twice is harmless
        broker.ack("c1", [])

    def test_acks_are_piggybacked_on_reserve(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1)
        got = take(broker, limit=1, acks=("a",))
        assert ids(got) == ["b"]
        assert broker.fetch_payload("a") is None
        assert [r.id for r in broker.in_flight()] == ["b"]

    def test_acked_task_is_not_recovered(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker)
        broker.ack("c1", ["a"])
        assert broker.recover_consumer("c1", ["a", "b"]) == 1
        assert [(d.id, d.crashes) for d in take(broker, consumer="c2")] == [("b", 1)]

    # -- retry and dead letters --------------------------------------------------------------------
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
        assert broker.fetch_payload("a") is None
        assert broker.in_flight() == []
        assert stats(broker) == (0, 0, 0)
        assert broker.dead_letters() == [DeadLetter("a", "default", "p-a", "boom", T0 + 5)]
        assert broker.recover_consumer("c1", ["a"]) == 0

    def test_dead_letters_newest_first_and_limited(self, broker: Broker) -> None:
        for i in range(3):
            broker.dead_letter("c1", f"d{i}", "default", None, f"r{i}", T0 + i)
        letters = broker.dead_letters()
        assert [d.id for d in letters] == ["d2", "d1", "d0"]
        assert letters[0].payload is None
        assert [d.id for d in broker.dead_letters(limit=2)] == ["d2", "d1"]

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

    # -- release and recovery ----------------------------------------------------------------------
    def test_release_puts_back_at_the_head_in_order_without_crash(self, broker: Broker) -> None:
        broker.enqueue([task(x) for x in "abcd"])
        take(broker, limit=3)
        assert broker.release("c1", ["b", "a", "zzz"]) == 2
        assert broker.release("c2", ["c"]) == 0  # not c2's
        assert [r.id for r in broker.in_flight()] == ["c"]
        got = take(broker, consumer="c2")
        assert [(d.id, d.crashes) for d in got] == [("b", 0), ("a", 0), ("d", 0)]

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

    def test_expired_lease_is_recovered_by_the_next_reserve(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b")])
        take(broker, limit=1, lease_ms=100)
        assert take(broker, consumer="c2", now_ms=T0 + 100, limit=1) == [Delivery("b", "default", "p-b", 0)]
        assert take(broker, consumer="c3", now_ms=T0 + 101) == []  # first seen expired: only suspected
        assert take(broker, consumer="c3", now_ms=T0 + 101 + GRACE - 1) == []
        got = take(broker, consumer="c3", now_ms=T0 + 101 + GRACE)
        assert [(d.id, d.crashes) for d in got] == [("a", 1)]
        assert [(r.id, r.consumer) for r in broker.in_flight()] == [("b", "c2"), ("a", "c3")]

    def test_expired_lease_is_recovered_by_recover_expired(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("c", "other")])
        take(broker, lease_ms=100)
        take(broker, "other", consumer="c2", lease_ms=1000)
        assert broker.recover_expired(T0 + 100) == 0
        assert broker.recover_expired(T0 + 101) == 0
        assert broker.recover_expired(T0 + 101 + GRACE) == 2
        assert stats(broker) == (2, 0, 0)
        assert stats(broker, "other") == (0, 0, 1)
        later = T0 + 101 + GRACE
        assert [(d.id, d.crashes) for d in take(broker, consumer="c3", now_ms=later)] == [("a", 1), ("b", 1)]
        assert broker.recover_expired(later) == 0

    def test_renewed_lease_does_not_expire(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        broker.renew_leases(["c1", "c9"], T0 + 10_000)
        assert broker.recover_expired(T0 + 5000) == 0
        assert take(broker, consumer="c2", now_ms=T0 + 5000) == []
        assert broker.recover_expired(T0 + 10_001) == 0
        assert broker.recover_expired(T0 + 10_001 + GRACE) == 1
        broker.renew_leases([], T0)

    def test_a_lease_renewed_soon_after_it_looked_expired_is_not_recovered(self, broker: Broker) -> None:
        # Redis was unreachable for longer than the lease: nobody could renew. The first reservation
        # after the outage must not hand the live consumer's task to someone else.
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        outage_over = T0 + 60_000
        assert take(broker, consumer="c2", now_ms=outage_over) == []
        broker.renew_leases(["c1"], outage_over + 1000 + LEASE)  # the owner's parent reconnects
        assert broker.recover_expired(outage_over + 1000 + GRACE) == 0
        assert take(broker, consumer="c2", now_ms=outage_over + 1000 + GRACE) == []
        assert [(r.id, r.consumer) for r in broker.in_flight()] == [("a", "c1")]

    def test_late_ack_after_expiry_leaves_a_delivery_without_payload(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        take(broker, lease_ms=100)
        broker.recover_expired(T0 + 101)
        broker.recover_expired(T0 + 101 + GRACE)
        broker.ack("c1", ["a"])  # the slow consumer finished after all: payload and crash count go
        got = take(broker, consumer="c2", now_ms=T0 + 101 + GRACE)
        assert got == [Delivery("a", "default", None, 0)]

    # -- cron --------------------------------------------------------------------------------------
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

    # -- workers -----------------------------------------------------------------------------------
    def test_heartbeats_newest_first_and_forgotten(self, broker: Broker) -> None:
        assert broker.workers() == []
        broker.heartbeat("w1", '{"pid": 1}', T0)
        broker.heartbeat("w2", '{"pid": 2}', T0 + 10)
        assert [(w.worker_id, w.last_beat_ms, w.info) for w in broker.workers()] == [
            ("w2", T0 + 10, '{"pid": 2}'), ("w1", T0, '{"pid": 1}')]
        broker.heartbeat("w1", '{"pid": 11}', T0 + 20)
        assert [(w.worker_id, w.info) for w in broker.workers()] == [("w1", '{"pid": 11}'), ("w2", '{"pid": 2}')]
        broker.forget_worker("w1")
        broker.forget_worker("unknown")
        assert [w.worker_id for w in broker.workers()] == ["w2"]

    def test_a_heartbeat_drops_workers_silent_for_ten_minutes(self, broker: Broker) -> None:
        broker.heartbeat("dead", "{}", T0)
        broker.heartbeat("alive", "{}", T0 + 1000)
        broker.heartbeat("alive", "{}", T0 + 10 * 60 * 1000 - 1)
        assert [w.worker_id for w in broker.workers()] == ["alive", "dead"]
        broker.heartbeat("alive", "{}", T0 + 10 * 60 * 1000 + 1)
        assert [w.worker_id for w in broker.workers()] == ["alive"]

    # -- inspection and operations -----------------------------------------------------------------
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

    def test_purge_queue_deletes_pending_and_waiting_tasks(self, broker: Broker) -> None:
        broker.enqueue([task("a"), task("b"), task("e", eta_ms=T0 + 10, dedup_key="k"), task("o", "other")])
        assert broker.purge_queue("default") == (2, 1)
        assert stats(broker) == (0, 0, 0)
        assert broker.fetch_payload("a") is None
        assert broker.fetch_payload("e") is None
        assert stats(broker, "other") == (1, 0, 0)
        assert broker.purge_queue("default") == (0, 0)
        broker.enqueue([task("e2", eta_ms=T0 + 10, dedup_key="k")])  # the old dedup key went too
        assert ids(take(broker, now_ms=T0 + 10)) == ["e2"]

    # -- broadcast and waiting ---------------------------------------------------------------------
    def test_broadcast_reaches_subscribers(self, broker: Broker) -> None:
        assert broker.publish_broadcast("nobody") == 0
        first = broker.subscribe_broadcast()
        second = broker.subscribe_broadcast()
        try:
            assert broker.publish_broadcast("hello") == 2
            assert first.get(2.0) == "hello"
            assert second.get(2.0) == "hello"
            assert first.get(0.05) is None
        finally:
            first.close()
            second.close()

    def test_wait_for_work_sees_a_task_enqueued_before_the_call(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        started = time.monotonic()
        assert broker.wait_for_work(5.0) is True
        assert time.monotonic() - started < 2.0

    def test_a_waiting_reservation_takes_a_task_enqueued_during_the_wait(self, broker: Broker) -> None:
        import threading

        timer = threading.Timer(0.2, lambda: broker.enqueue([task("late")]))
        timer.start()
        try:
            started = time.monotonic()
            got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 5.0).deliveries
        finally:
            timer.cancel()
        assert [d.id for d in got] == ["late"]
        assert 0.1 < time.monotonic() - started < 3.0

    def test_a_waiting_reservation_times_out_empty_and_applies_its_acks(self, broker: Broker) -> None:
        broker.enqueue([task("a")])
        (first,) = take(broker)
        result = broker.reserve("c1", ["default"], 10, T0, LEASE, (first.id,), 0.2)  # wake-ups may be spurious
        assert result.deliveries == ()
        assert broker.fetch_payload("a") is None and stats(broker) == (0, 0, 0)

    def test_a_waiting_reservation_never_takes_an_eta_task_early(self, broker: Broker) -> None:
        broker.enqueue([task("soon", eta_ms=T0 + 100)])
        got = broker.reserve("c1", ["default"], 10, T0, LEASE, (), 0.3).deliveries
        assert got == ()
        assert ids(take(broker, now_ms=T0 + 100)) == ["soon"]

    def test_wait_for_work_times_out_when_idle(self, broker: Broker) -> None:
        started = time.monotonic()
        assert broker.wait_for_work(0.2) is False
        assert time.monotonic() - started >= 0.15

