"""When each device is polled: its own interval on the UTC grid, and backoff while it is silent.

Pure: times are passed in, nothing sleeps here. A device is due at every multiple of its poll
interval (so two collectors with the same interval poll at the same instants). After
`failures_before_backoff` polls in a row that got no answer at all, the wait doubles with every
further silent poll, up to `backoff_max_ms`; the slots skipped meanwhile are handed out so that
the collector records them as flagged readings (absence is recorded), and the first answer
brings the device back to its interval.
"""

from __future__ import annotations

from collections import deque

from collector.plan import DevicePlan

__all__ = ["DeviceSchedule", "next_slot"]


def next_slot(after_ms: int, interval_ms: int) -> int:
    """The first multiple of `interval_ms` at or after `after_ms`."""
    return -(-after_ms // interval_ms) * interval_ms


class DeviceSchedule:
    """The polling timetable of one device."""

    def __init__(self, *, device: DevicePlan, now_ms: int) -> None:
        self.device_id = device.device_id
        self.interval_ms = device.poll_interval_ms
        self.failures_before_backoff = device.failures_before_backoff
        self.backoff_max_ms = device.backoff_max_ms
        self.next_due_ms = next_slot(now_ms, self.interval_ms)
        self.silent_polls = 0  # polls in a row that got no answer at all
        self.late_polls = 0  # polls that started after the next slot had passed
        self.skipped = deque[int]()  # slots passed over while backing off, not yet recorded

    def __repr__(self) -> str:
        state = f"backing off after {self.silent_polls} silent polls" if self.backing_off else "on time"
        return f"DeviceSchedule({self.device_id!r}, every {self.interval_ms} ms, {state})"

    @property
    def backing_off(self) -> bool:
        """The device is polled less often than its interval."""
        return self.silent_polls >= self.failures_before_backoff

    def wait_ms(self) -> int:
        """How long after a poll the next one comes, given the silent polls so far."""
        if not self.backing_off:
            return self.interval_ms
        doublings = self.silent_polls - self.failures_before_backoff + 1
        return min(self.interval_ms << min(doublings, 32), max(self.backoff_max_ms, self.interval_ms))

    def polled(self, *, answered: bool, due_ms: int, now_ms: int) -> None:
        """Advance past the poll made for the slot `due_ms`, which ended at `now_ms`."""
        self.silent_polls = 0 if answered else self.silent_polls + 1
        # the last slot within the wait: the wait never exceeds backoff_max_ms
        following = max(due_ms + self.interval_ms,
                        (due_ms + self.wait_ms()) // self.interval_ms * self.interval_ms)
        if following <= now_ms:
            # the poll (or the line) took longer than the interval: start again from now
            self.late_polls += 1
            following = next_slot(now_ms, self.interval_ms)
        if self.backing_off:
            slot = due_ms + self.interval_ms
            while slot < following:
                self.skipped.append(slot)
                slot += self.interval_ms
        self.next_due_ms = following

    def due_skipped(self, now_ms: int) -> list[int]:
        """Skipped slots whose time has come, in order; each is returned once."""
        passed = []
        while self.skipped and self.skipped[0] <= now_ms:
            passed.append(self.skipped.popleft())
        return passed

    def next_event_ms(self) -> int:
        """The next time this schedule needs attention: a poll or a skipped slot to record."""
        return min(self.next_due_ms, self.skipped[0]) if self.skipped else self.next_due_ms

    def realign(self, now_ms: int) -> bool:
        """After the wall clock stepped back, start the timetable again from now; True if it did."""
        if now_ms >= self.next_due_ms - 2 * max(self.interval_ms, self.wait_ms()):
            return False
        self.next_due_ms = next_slot(now_ms, self.interval_ms)
        self.skipped.clear()
        return True
