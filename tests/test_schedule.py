"""When each device is polled (collector/schedule.py): its interval on the UTC grid, backoff while it
is silent, the skipped slots that keep its absence on record, and recovery.

Times are plain integers passed in; nothing sleeps. T is a whole multiple of every interval used.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from collector.plan import DevicePlan, TcpLink
from collector.schedule import DeviceSchedule, next_slot

T = 1_700_000_000_000  # a multiple of 1000 and of 8000
DEVICE = DevicePlan(device_id="gas-1", link=TcpLink("127.0.0.1", 502), unit_id=1, timeout_ms=300,
                    requests=(), points=(), status=None, status_point_id=None,
                    poll_interval_ms=1000, failures_before_backoff=3, backoff_max_ms=8000)


def schedule(now_ms: int = T, *, device_id: str = "gas-1", failures_before_backoff: int = 3,
             backoff_max_ms: int = 8000) -> DeviceSchedule:
    device = dataclasses.replace(DEVICE, device_id=device_id, backoff_max_ms=backoff_max_ms,
                                 failures_before_backoff=failures_before_backoff)
    return DeviceSchedule(device=device, now_ms=now_ms)


def poll(timetable: DeviceSchedule, *, answered: bool, took_ms: int = 150) -> int:
    """Poll at the due time, taking `took_ms`; return the slot polled."""
    due = timetable.next_due_ms
    timetable.polled(answered=answered, due_ms=due, now_ms=due + took_ms)
    return due


# --- the grid --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "first"), [
    (T, T), (T + 1, T + 1000), (T + 250, T + 1000), (T + 999, T + 1000), (T + 1000, T + 1000)])
def test_the_first_poll_is_on_the_next_multiple_of_the_interval(now: int, first: int) -> None:
    assert schedule(now).next_due_ms == first
    assert next_slot(now, 1000) == first


def test_two_devices_with_one_interval_poll_at_the_same_instants() -> None:
    one, other = schedule(T + 130), schedule(T + 870, device_id="gas-2")
    for _ in range(5):
        assert one.next_due_ms == other.next_due_ms
        poll(one, answered=True, took_ms=40)
        poll(other, answered=True, took_ms=600)


def test_answered_polls_stay_on_the_interval() -> None:
    timetable = schedule()
    polled = [poll(timetable, answered=True, took_ms=took) for took in (5, 400, 950, 20, 999)]
    assert polled == [T, T + 1000, T + 2000, T + 3000, T + 4000]
    assert timetable.next_due_ms == T + 5000
    assert timetable.next_event_ms() == T + 5000
    assert not timetable.backing_off
    assert timetable.due_skipped(T + 10_000) == []
    assert timetable.late_polls == 0


def test_a_few_silent_polls_keep_the_interval() -> None:
    timetable = schedule()
    polled = [poll(timetable, answered=False) for _ in range(2)]  # fewer than failures_before_backoff
    assert polled == [T, T + 1000]
    assert timetable.next_due_ms == T + 2000
    assert not timetable.backing_off
    assert timetable.due_skipped(T + 10_000) == []


# --- backoff ---------------------------------------------------------------------------------------


def test_after_failures_before_backoff_silent_polls_the_wait_doubles_up_to_the_maximum() -> None:
    timetable = schedule()
    polled = [poll(timetable, answered=False) for _ in range(8)]
    waits = [after - before for before, after in itertools.pairwise(polled)]
    assert waits == [1000, 1000, 2000, 4000, 8000, 8000, 8000]
    assert timetable.backing_off
    assert "backing off" in repr(timetable)


def test_a_device_that_answers_with_an_exception_is_not_silent() -> None:
    # the source's `answered` is true for an exception response: the device is there
    timetable = schedule()
    polled = [poll(timetable, answered=True) for _ in range(6)]
    assert polled == [T + 1000 * i for i in range(6)]


def test_skipped_slots_are_handed_out_once_each_in_order() -> None:
    timetable = schedule()
    polled = [poll(timetable, answered=False) for _ in range(5)]
    assert polled == [T, T + 1000, T + 2000, T + 4000, T + 8000]
    # by T + 8150 the slots 3000, 5000, 6000 and 7000 have passed without a poll
    assert timetable.next_event_ms() == T + 3000  # the earliest slot still to be recorded
    assert timetable.due_skipped(T + 4999) == [T + 3000]
    assert timetable.next_event_ms() == T + 5000
    assert timetable.due_skipped(T + 6000) == [T + 5000, T + 6000]
    assert timetable.due_skipped(T + 6000) == []  # once each
    assert timetable.due_skipped(T + 8200) == [T + 7000]
    # the current wait runs to T + 16000; its slots come due one by one
    assert timetable.next_event_ms() == T + 9000
    assert timetable.due_skipped(T + 12_500) == [T + 9000, T + 10_000, T + 11_000, T + 12_000]
    assert timetable.next_event_ms() == T + 13_000
    assert timetable.due_skipped(T + 20_000) == [T + 13_000, T + 14_000, T + 15_000]
    assert timetable.next_event_ms() == timetable.next_due_ms == T + 16_000


def test_every_slot_is_either_polled_or_skipped_exactly_once() -> None:
    timetable = schedule()
    polled = [poll(timetable, answered=False) for _ in range(7)]
    skipped = timetable.due_skipped(timetable.next_due_ms)
    slots = sorted(polled + skipped)
    assert slots == list(range(T, timetable.next_due_ms, 1000))
    assert set(polled).isdisjoint(skipped)


def test_the_first_answer_returns_the_device_to_its_interval() -> None:
    timetable = schedule()
    for _ in range(5):
        poll(timetable, answered=False)
    assert timetable.backing_off
    recovered = poll(timetable, answered=True)
    assert recovered == T + 16_000
    assert not timetable.backing_off
    assert "on time" in repr(timetable)
    assert [poll(timetable, answered=True) for _ in range(3)] == [T + 17_000, T + 18_000, T + 19_000]
    # the slots skipped before the answer are still owed; none after it
    assert timetable.due_skipped(T + 30_000) == [T + 3000, *range(T + 5000, T + 8000, 1000),
                                                 *range(T + 9000, T + 16_000, 1000)]


def test_one_answer_between_silences_starts_the_count_again() -> None:
    timetable = schedule()
    poll(timetable, answered=False)
    poll(timetable, answered=False)
    poll(timetable, answered=True)
    polled = [poll(timetable, answered=False) for _ in range(3)]
    assert polled == [T + 3000, T + 4000, T + 5000]
    assert timetable.next_due_ms == T + 7000  # the third silent poll in a row: now it backs off


def test_the_maximum_never_shortens_the_interval() -> None:
    timetable = schedule(backoff_max_ms=500)
    polled = [poll(timetable, answered=False) for _ in range(6)]
    assert polled == [T + 1000 * i for i in range(6)]


def test_the_wait_never_exceeds_backoff_max_ms() -> None:
    timetable = schedule(backoff_max_ms=2500)
    polled = [poll(timetable, answered=False) for _ in range(6)]
    waits = [after - before for before, after in itertools.pairwise(polled)]
    assert max(waits) <= 2500


# --- late polls and the clock ------------------------------------------------------------------------


def test_a_poll_longer_than_the_interval_restarts_from_now() -> None:
    timetable = schedule()
    due = timetable.next_due_ms
    timetable.polled(answered=True, due_ms=due, now_ms=due + 2500)  # slots 1000 and 2000 have passed
    assert timetable.next_due_ms == T + 3000  # the next slot from now, not a burst of catch-up polls
    assert timetable.late_polls == 1
    assert poll(timetable, answered=True) == T + 3000
    assert timetable.next_due_ms == T + 4000
    assert timetable.late_polls == 1


def test_a_late_poll_while_backing_off_records_the_slots_it_passed() -> None:
    timetable = schedule(failures_before_backoff=1)
    due = timetable.next_due_ms
    timetable.polled(answered=False, due_ms=due, now_ms=due + 3500)
    assert timetable.next_due_ms == T + 4000
    assert timetable.due_skipped(T + 4000) == [T + 1000, T + 2000, T + 3000]


def test_realign_after_the_clock_steps_back() -> None:
    timetable = schedule()
    for _ in range(4):
        poll(timetable, answered=False)  # backing off, with skipped slots owed
    assert timetable.next_due_ms == T + 8000
    stepped_back = T - 3_600_000 + 420  # NTP corrected an hour
    assert timetable.realign(stepped_back) is True
    assert timetable.next_due_ms == T - 3_600_000 + 1000
    assert timetable.due_skipped(T + 100_000) == []  # slots from the old timeline are dropped
    assert timetable.next_event_ms() == T - 3_600_000 + 1000


def test_no_realign_on_an_ordinary_wait() -> None:
    timetable = schedule()
    poll(timetable, answered=True)
    assert timetable.realign(T + 400) is False
    assert timetable.realign(T - 900) is False  # a small step back: the timetable holds
    assert timetable.next_due_ms == T + 1000
