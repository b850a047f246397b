"""SignalAlarm: SIGALRM from setitimer raises SoftTimeout in the main thread of a worker child.

Bounds are generous (a timeout "fires within 2 s") so that a loaded machine does not fail them; each test
still fails if the alarm does not fire, or fires when it must not.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from hexq.adapters.posix.alarm import SignalAlarm
from hexq.core.errors import SoftTimeout

GENEROUS = 2.0  # seconds a short alarm is given to fire


def spin(seconds: float) -> None:
    """Busy Python code, as a sync task would run; the signal handler runs between its bytecodes."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


@pytest.fixture
def restore_sigalrm() -> Iterator[None]:
    # pytest-timeout may use SIGALRM and the real timer itself: give both back as they were.
    handler = signal.getsignal(signal.SIGALRM)
    delay, interval = signal.getitimer(signal.ITIMER_REAL)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    if handler is not None:
        signal.signal(signal.SIGALRM, handler)
    if delay:
        signal.setitimer(signal.ITIMER_REAL, delay, interval)


@pytest.fixture
def alarm(restore_sigalrm: None) -> Iterator[SignalAlarm]:
    alarm = SignalAlarm()
    yield alarm
    alarm.disarm()


def test_creating_it_installs_its_handler(alarm: SignalAlarm) -> None:
    assert signal.getsignal(signal.SIGALRM) == alarm._fire


def test_an_armed_alarm_interrupts_a_spinning_loop(alarm: SignalAlarm) -> None:
    alarm.arm(0.05)
    started = time.monotonic()
    with pytest.raises(SoftTimeout, match=r"soft timeout of 0\.05s"):
        spin(GENEROUS)  # returning normally after 2 s fails the test: the alarm never fired
    assert time.monotonic() - started < GENEROUS


def test_disarm_before_the_deadline_means_no_timeout(alarm: SignalAlarm) -> None:
    alarm.arm(0.1)
    alarm.disarm()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    spin(0.4)  # well past the deadline: a SoftTimeout here fails the test


def test_a_late_signal_after_disarm_does_not_raise(alarm: SignalAlarm) -> None:
    # The timer may already have gone off when the task finishes: the signal then arrives after disarm.
    alarm.arm(30)
    alarm.disarm()
    signal.raise_signal(signal.SIGALRM)
    spin(0.05)


def test_a_signal_from_the_parent_interrupts_an_armed_task_at_once(alarm: SignalAlarm) -> None:
    # What ProcessControl.interrupt_task does: SIGALRM sent from outside, before the child's own timer.
    alarm.arm(30)
    with pytest.raises(SoftTimeout):
        os.kill(os.getpid(), signal.SIGALRM)
        spin(GENEROUS)


def test_it_fires_only_once_per_arming(alarm: SignalAlarm) -> None:
    alarm.arm(0.01)
    with pytest.raises(SoftTimeout):
        spin(GENEROUS)
    signal.raise_signal(signal.SIGALRM)  # a second signal for the same arming: not the next task's problem
    spin(0.05)


def test_re_arming_after_a_timeout_fires_again(alarm: SignalAlarm) -> None:
    for _ in range(3):
        alarm.arm(0.02)
        with pytest.raises(SoftTimeout):
            spin(GENEROUS)


def test_re_arming_after_disarm_fires(alarm: SignalAlarm) -> None:
    alarm.arm(0.05)
    alarm.disarm()
    alarm.arm(0.05)
    with pytest.raises(SoftTimeout):
        spin(GENEROUS)


def test_re_arming_with_a_shorter_time_replaces_the_pending_timer(alarm: SignalAlarm) -> None:
    alarm.arm(30)
    alarm.arm(0.05)
    with pytest.raises(SoftTimeout, match=r"0\.05s"):
        spin(GENEROUS)


def test_re_arming_with_a_longer_time_replaces_the_pending_timer(alarm: SignalAlarm) -> None:
    alarm.arm(0.05)
    alarm.arm(30)
    spin(0.3)  # the first, short timer is gone: a SoftTimeout here fails the test
    remaining, _ = signal.getitimer(signal.ITIMER_REAL)
    assert remaining > 20


@pytest.mark.parametrize("seconds", [0, 0.0, -1.0])
def test_arming_with_no_time_left_still_fires(alarm: SignalAlarm, seconds: float) -> None:
    # setitimer(0) would cancel the timer instead of firing it: a task already past its soft deadline must
    # still be interrupted.
    alarm.arm(seconds)
    with pytest.raises(SoftTimeout):
        spin(GENEROUS)
