"""Rate limits in the core: the accepted spellings and their refusal, the GCRA arithmetic on literal times,
the gate a reservation runs, and the task name read from a stored envelope without decoding it."""

from __future__ import annotations

from typing import Any

import pytest

from hexq import HexQ, Queue
from hexq.core.errors import ConfigError
from hexq.core.message import Codec, TaskMessage
from hexq.core.rate_limit import (
    ACCEPTED_FORMS,
    NO_RATE_LIMITS,
    QueueRate,
    RateGate,
    RateLimit,
    RateLimits,
    TaskRate,
    allowed_at,
    charge,
    decode_state,
    deferral,
    encode_state,
    ms_at_or_after,
    quota,
    rate_limit_of,
    task_name_on_wire,
    wire_name,
)

SECOND_US = 1_000_000
NOW = 1_700_000_000_000_000  # a realistic epoch in microseconds


@pytest.mark.parametrize(("spec", "count", "period_ms"), [
    ("20/s", 20, 1000), ("100/m", 100, 60_000), ("1000/h", 1000, 3_600_000), ("5/10s", 5, 10_000),
    ("7/d", 7, 86_400_000), (" 3 / 2m ", 3, 120_000), ("1/1s", 1, 1000),
])
def test_accepted_spellings(spec: str, count: int, period_ms: int) -> None:
    assert RateLimit.parse(spec) == RateLimit(count, period_ms)
    assert rate_limit_of(spec, "task 'x'") == RateLimit(count, period_ms)


@pytest.mark.parametrize("spec", [
    "10 per sec", "0/s", "-5/s", "1.5/s", "10/0s", "10/", "/s", "10/x", "10/sec", "10s", "", "ten/s", "10/-1s",
    "10/1.5s",
])
def test_refused_spellings_name_the_owner_and_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ConfigError) as caught:
        rate_limit_of(spec, "task 'send_email'")
    assert "task 'send_email'" in str(caught.value) and repr(spec) in str(caught.value)
    assert ACCEPTED_FORMS in str(caught.value)


@pytest.mark.parametrize("value", [True, 20, 2.5, b"20/s", ("20", "s"), {"count": 20}])
def test_refused_types_name_the_owner_and_the_accepted_forms(value: Any) -> None:
    with pytest.raises(ConfigError, match="queue 'mail': invalid rate limit") as caught:
        rate_limit_of(value, "queue 'mail'")
    assert ACCEPTED_FORMS in str(caught.value)


def test_none_and_a_rate_limit_pass_through() -> None:
    limit = RateLimit.parse("20/s", burst=4)
    assert rate_limit_of(None, "x") is None
    assert rate_limit_of(limit, "x") is limit


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"count": 0, "period_ms": 1000}, "count must be an int >= 1"),
    ({"count": 1, "period_ms": 0}, "period_ms must be an int >= 1"),
    ({"count": 1, "period_ms": 1000, "burst": 0}, "burst must be an int >= 1"),
    ({"count": 1, "period_ms": 1000, "burst": True}, "burst must be an int >= 1"),
    ({"count": 2_000_001, "period_ms": 2000}, "at most 1000000 starts per second"),
])
def test_a_rate_limit_value_checks_itself(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RateLimit(**kwargs)


def test_declaration_refuses_a_bad_limit_on_a_task_and_on_a_queue() -> None:
    app = HexQ(queues=["default"], url="memory://")
    with pytest.raises(ConfigError, match="task 'ping': invalid rate limit '10 per sec'"):
        app.task(name="ping", rate_limit="10 per sec")(lambda: None)
    with pytest.raises(ConfigError, match=r"task 'pong': .*count and the period must be at least 1"):
        app.task(name="pong", rate_limit="0/s")(lambda: None)
    with pytest.raises(ConfigError, match="queue 'mail': invalid rate limit"):
        Queue("mail", rate_limit="5 per minute")
    assert app.registry.tasks == {}


def test_declared_limits_reach_the_registry_for_the_served_queues() -> None:
    app = HexQ(queues=[Queue("mail", priority=0, rate_limit="100/m"), (1, "bulk"), "default"], url="memory://")

    @app.task(rate_limit="20/s")
    def send() -> None: ...

    @app.task
    def other() -> None: ...

    rates = app.registry.rate_limits(["mail", "default"], signed=False)
    assert rates.tasks == (TaskRate("send", "send", RateLimit(20, 1000)),)
    assert rates.queues == (QueueRate("mail", RateLimit(100, 60_000)),)
    assert app.registry.rate_limits(["bulk"], signed=False).queues == ()
    assert not HexQ(queues=["a"], url="memory://").registry.rate_limits(["a"], signed=False)


# -- the arithmetic ----------------------------------------------------------------------------------
def test_interval_rounds_up_so_the_rate_is_never_exceeded() -> None:
    assert RateLimit.parse("20/s").interval_us == 50_000
    assert RateLimit.parse("3/s").interval_us == 333_334
    assert RateLimit.parse("100/m").interval_us == 600_000
    assert RateLimit.parse("10/s", burst=4).tolerance_us == 300_000


def test_steady_rate_without_burst_spaces_starts_one_interval_apart() -> None:
    limit = RateLimit.parse("20/s")
    assert quota(0, NOW, limit, 5) == 1  # a fresh limit: one start now
    tat = charge(0, NOW, limit, 1)
    assert tat == NOW + 50_000
    assert quota(tat, NOW, limit, 5) == 0
    assert allowed_at(tat, NOW, limit) == NOW + 50_000
    assert quota(tat, NOW + 49_999, limit, 1) == 0
    assert quota(tat, NOW + 50_000, limit, 5) == 1


def test_a_burst_is_taken_at_once_then_the_steady_rate() -> None:
    limit = RateLimit.parse("10/s", burst=3)
    assert quota(0, NOW, limit, 10) == 3
    tat = charge(0, NOW, limit, 3)
    assert tat == NOW + 300_000
    assert quota(tat, NOW, limit, 10) == 0
    assert allowed_at(tat, NOW, limit) == NOW + 100_000
    assert quota(tat, NOW + 100_000, limit, 10) == 1
    # After a quiet spell the burst is back, never more.
    assert quota(tat, NOW + 10 * SECOND_US, limit, 10) == 3


def test_a_quiet_spell_is_not_saved_up_beyond_the_burst() -> None:
    limit = RateLimit.parse("1/s")
    assert quota(NOW - 3600 * SECOND_US, NOW, limit, 100) == 1


def test_deferral_follows_the_limit_and_the_cursor() -> None:
    limit = RateLimit.parse("20/s")
    tat = NOW + 50_000
    assert deferral(tat, 0, NOW, limit) == NOW + 50_000  # when the limit allows
    assert deferral(tat, NOW + 50_000, NOW, limit) == NOW + 100_000  # behind the one deferred before
    assert deferral(tat, NOW - SECOND_US, NOW, limit) == NOW + 50_000  # an old cursor does not matter


def test_milliseconds_are_rounded_up_so_an_eta_is_never_early() -> None:
    assert ms_at_or_after(1_000_000) == 1000
    assert ms_at_or_after(1_000_001) == 1001


@pytest.mark.parametrize(("stored", "state"), [
    ("12 34", (12, 34)), (b"12 34", (12, 34)), (None, (0, 0)), ("garbage", (0, 0)), ("1 -2", (0, 0)),
])
def test_stored_state(stored: Any, state: tuple[int, int]) -> None:
    assert decode_state(stored) == state
    if state != (0, 0):
        assert encode_state(*state) == "12 34"


def test_split_shares_the_rate_and_the_burst() -> None:
    assert RateLimit.parse("20/s", burst=5).split(3) == RateLimit(20, 3000, 2)
    assert RateLimit.parse("20/s").split(3) == RateLimit(20, 3000, 1)
    rates = RateLimits((TaskRate("a", "a", RateLimit(20, 1000)),), (QueueRate("q", RateLimit(6, 60_000, 4)),))
    assert rates.split(1) is rates
    assert rates.split(2) == RateLimits((TaskRate("a", "a", RateLimit(20, 2000)),),
                                        (QueueRate("q", RateLimit(6, 120_000, 2)),))
    assert not NO_RATE_LIMITS and not NO_RATE_LIMITS.split(4)


# -- the gate ------------------------------------------------------------------------------------------
def gate(rates: RateLimits, now_ms: int = NOW // 1000, states: dict[str, tuple[int, int]] | None = None) -> RateGate:
    return RateGate.load(rates, now_ms, states or {})


def test_the_gate_skips_a_queue_over_its_limit_and_says_until_when() -> None:
    g = gate(RateLimits(queues=(QueueRate("q", RateLimit.parse("2/s")),)))
    assert g.queue_quota("q", 10) == 1
    g.charge_queue("q", 1)
    assert g.queue_quota("q", 10) == 0
    assert g.blocked == {"q"} and g.next_ms == NOW // 1000 + 500
    assert g.queue_quota("other", 10) == 10
    assert g.changed_states() == [("q:q", NOW + 500_000, 0)]


def test_the_gate_defers_a_task_over_its_limit_one_interval_after_another() -> None:
    g = gate(RateLimits(tasks=(TaskRate("send", "send", RateLimit.parse("10/s")),)))
    assert g.admit("default", "send") is None
    assert g.admit("default", "other") is None
    assert g.admit("default", None) is None
    now_ms = NOW // 1000
    assert [g.admit("default", "send") for _ in range(3)] == [now_ms + 100, now_ms + 200, now_ms + 300]
    assert g.next_ms == now_ms + 100
    assert g.admit("@broadcast.w1", "send") is None  # a worker's broadcast copies are never limited
    assert g.changed_states() == [("t:send", NOW + 100_000, NOW + 300_000)]
    # At its time the first deferred task conforms; the cursor goes on where it was.
    later = gate(g.rates, now_ms + 100, dict(g.states))
    assert later.admit("default", "send") is None
    assert later.admit("default", "send") == now_ms + 400


# -- the task name, read without decoding the envelope ---------------------------------------------------
NAMES = ["send", "a b", 'quote"d', "back\\slash", "ünï", '","queue":"x', "tab\tline\nnew", "é\"\\"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("signed", [False, True])
def test_the_name_on_the_wire_is_found_in_what_the_codec_writes(name: str, signed: bool) -> None:
    codec = Codec(signing_key=b"k" * 16 if signed else None)
    stored = codec.encode(TaskMessage(id='i"d', name=name, queue="q", args=('","task":"no',),
                                      kwargs={"task": name}))
    assert task_name_on_wire(stored) == wire_name(name, signed)
    assert task_name_on_wire(stored.encode()) == wire_name(name, signed)
    others = {wire_name(other, signed) for other in NAMES if other != name}
    assert task_name_on_wire(stored) not in others


@pytest.mark.parametrize("stored", [None, b"\xff\xfe", "not json", '{"v":1,"id":"x"}', '{"sig":"ab","body":"{}"}',
                                    '{"v":1,"id":"x","task":"unterminated'])
def test_what_is_not_an_envelope_has_no_name(stored: Any) -> None:
    assert task_name_on_wire(stored) is None


# -- in-process mode ------------------------------------------------------------------------------------
def test_in_process_mode_holds_a_limited_task_until_its_time() -> None:
    from hexq.adapters.memory import FakeClock, MemoryBroker

    clock = FakeClock()
    app = HexQ(queues=[Queue("slow", priority=0, rate_limit="1/s"), "default"], url="memory://",
               broker=MemoryBroker(), clock=clock)
    ran: list[str] = []

    @app.task(rate_limit="2/s")
    def limited(n: int) -> None:
        ran.append(f"limited {n}")

    @app.task
    def free(n: int) -> None:
        ran.append(f"free {n}")

    for n in range(3):
        limited.delay(n)
        free.delay(n)
        free.options(queue="slow").delay(10 + n)
    assert ran == ["limited 0", "free 0", "free 10", "free 1", "free 2"]
    assert app.run_pending() == 0
    clock.advance(0.5)
    assert app.run_pending() == 1 and ran[-1] == "limited 1"
    clock.advance(0.5)
    assert app.run_pending() == 2 and sorted(ran[-2:]) == ["free 11", "limited 2"]
    clock.advance(1)
    assert app.run_pending() == 1 and ran[-1] == "free 12"
