"""HJ 75 aggregation: samples to minute, hourly, daily and monthly values, with validity and flags.

Pure and deterministic (invariant 6): no I/O, no clock, no global state. The same inputs in any
order give identical output; sums are `math.fsum`, so the result does not depend on summation order.

The rules (REGULATION.md section 2, HJ 212-2017 Appendix D / HJ 75-2017):

- A **valid sample** has quality N. C, M, D, F and B are not valid data (HJ 75). T (over the upper
  measuring limit) and S (manually entered) are not valid for the automatic mean either: an
  over-range reading is not a measurement of the value, and a manual value is not CEMS data. A
  sample of quality N with a non-finite value is a broken reading and raises `AggregationError`.
- A **minute** is valid with at least `min_samples_per_minute` valid samples; an **hour** with at
  least `min_valid_minutes_per_hour` valid minutes; a **day** with `min_valid_hours_per_day` valid
  hours; a **month** with `min_valid_days_per_month` valid days (`min_valid_days_february` in
  February, leap year or not). The mean of a period is the mean of its valid constituents only, and
  `None` when the period is invalid; so are its minimum and maximum (extremes of the valid
  constituents' extremes).
- **Absence is data** (invariant 5): a minute, hour or day with nothing at all counts as an invalid
  constituent of its parent, and as a B (communication abnormal) constituent in the parent's flag.
  A parent's expected constituent count is explicit: 60 minutes per hour, the local day's hours
  from the time zone (23, 24 or 25), the month's days from the calendar. Periods with no
  constituent at all are not emitted; a caller that shows empty periods enumerates them itself.
- **Flag**: N when the period is valid and at least `normal_share_for_n_flag` of its constituents
  are N (inclusive: 45 of 60 is N, 44 of 60 is not). The share of a minute is over the samples
  received (the sampling interval is not fixed); the share of an hour, day or month is over the
  expected constituents, missing ones included. Otherwise the most frequent non-N letter among
  the constituents (missing ones counted as B), ties broken by `FLAG_PRIORITY` (F, M, C, D, B,
  T, S: the instrument's own state before the link's). A period with no non-N letter that is
  still not N (a minute with too few samples, all N) gets D, REGULATION.md's "otherwise D".
- **Time**: timestamps are UTC milliseconds; period boundaries are local wall-clock boundaries of
  the plant's time zone (invariant 8), so a local day starts at 16:00 UTC the day before in
  Asia/Shanghai and has 23 or 25 hours on daylight-saving days. Zones whose offset changes by less
  than an hour (Australia/Lord_Howe) have no well-defined local hour at the change and raise
  `AggregationError` there.

The thresholds come from effective-dated methodology data (`Thresholds`); this module holds none.
"""

from __future__ import annotations

import calendar
import itertools
import math
import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from gateway.errors import GatewayError
from proto.wire import FLAG_LETTERS

__all__ = [
    "FLAG_LETTERS",
    "FLAG_PRIORITY",
    "AggregationError",
    "PeriodValue",
    "Sample",
    "Thresholds",
    "daily_values",
    "hourly_values",
    "minute_values",
    "monthly_values",
]


# tie-break order of the non-N letters in a period flag, first wins
FLAG_PRIORITY: tuple[str, ...] = ("F", "M", "C", "D", "B", "T", "S")

_NORMAL = "N"
_MISSING = "B"  # the letter a constituent with no data at all counts as
_FALLBACK = "D"  # not N, and no non-N letter among the constituents

_MINUTE_MS = 60_000
_MINUTES_PER_HOUR = 60
_HOUR_MS = _MINUTES_PER_HOUR * _MINUTE_MS
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)
_FEBRUARY = 2


class AggregationError(GatewayError, ValueError):
    """Input the aggregation cannot give a figure for: an unknown quality code, a normal sample
    without a finite value, two values for the same period, a value that is not a whole period of
    its level, or a time zone without well-defined local hours."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of one point: UTC time in ms, value, and its stackline.v1 Quality code."""

    time_unix_ms: int
    value: float
    quality: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The HJ 75 validity parameters; the caller fills them from effective-dated methodology data.

    The defaults are REGULATION.md section 2's values.
    """

    min_samples_per_minute: int = 12
    min_valid_minutes_per_hour: int = 45
    min_valid_hours_per_day: int = 20
    min_valid_days_per_month: int = 25
    min_valid_days_february: int = 23
    normal_share_for_n_flag: float = 0.75

    def __post_init__(self) -> None:
        counts = {
            "min_samples_per_minute": self.min_samples_per_minute,
            "min_valid_minutes_per_hour": self.min_valid_minutes_per_hour,
            "min_valid_hours_per_day": self.min_valid_hours_per_day,
            "min_valid_days_per_month": self.min_valid_days_per_month,
            "min_valid_days_february": self.min_valid_days_february,
        }
        for name, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise AggregationError(f"Thresholds.{name} must be a whole number >= 1, not {count!r}")
        share = self.normal_share_for_n_flag
        if not 0.0 < share <= 1.0:
            raise AggregationError(f"Thresholds.normal_share_for_n_flag must be in (0, 1], not {share!r}")

    def min_valid_days(self, month: int) -> int:
        """The valid days a month needs: February has its own threshold."""
        return self.min_valid_days_february if month == _FEBRUARY else self.min_valid_days_per_month


@dataclass(frozen=True, slots=True)
class PeriodValue:
    """The value of one period [start, end) in UTC ms: statistics of its valid constituents, their
    count, the count it is judged against, and its HJ 212 flag letter.

    `total_count` is the number of samples received for a minute, and the expected number of
    constituents (60 minutes, the local day's hours, the month's days) for longer periods, so that
    missing constituents show as `total_count - valid_count`. `mean`, `minimum` and `maximum` are
    `None` when the period is invalid.
    """

    start_unix_ms: int
    end_unix_ms: int
    mean: float | None
    minimum: float | None
    maximum: float | None
    valid_count: int
    total_count: int
    flag: str

    def __post_init__(self) -> None:
        if self.end_unix_ms <= self.start_unix_ms:
            raise AggregationError(f"period {_span(self)} ends before it starts")
        if self.flag != _NORMAL and self.flag not in FLAG_PRIORITY:
            raise AggregationError(f"unknown flag letter {self.flag!r}")
        if not 0 <= self.valid_count <= self.total_count:
            raise AggregationError(f"valid count {self.valid_count} outside 0..{self.total_count}")

    @property
    def valid(self) -> bool:
        """Whether the period met its validity threshold (and so has a mean)."""
        return self.mean is not None


def minute_values(samples: Iterable[Sample], *, thresholds: Thresholds, tz: ZoneInfo) -> list[PeriodValue]:
    """The value of each local minute that has at least one sample, in time order.

    Valid samples are those of quality N (see the module docstring for C/M/D/F/B/T/S). The flag's
    normal share is over the samples received in the minute.
    """
    ordered = sorted(samples, key=_sample_order)
    minutes: list[PeriodValue] = []
    group: list[Sample] = []
    start = end = 0
    for sample in ordered:
        if sample.quality not in FLAG_LETTERS:
            raise AggregationError(
                f"sample at {sample.time_unix_ms} ms has unknown quality code {sample.quality}"
            )
        if not group or sample.time_unix_ms >= end:
            if group:
                minutes.append(_minute(start, end, group, thresholds))
            start = _local_floor(sample.time_unix_ms, _MINUTE_MS, tz, "minute")
            end = start + _MINUTE_MS
            group = []
        group.append(sample)
    if group:
        minutes.append(_minute(start, end, group, thresholds))
    return minutes


def hourly_values(
    minutes: Iterable[PeriodValue], *, thresholds: Thresholds, tz: ZoneInfo
) -> list[PeriodValue]:
    """The value of each local hour that has at least one minute value, in time order.

    An hour expects 60 minutes; missing minutes are invalid and count as B in the flag.
    """
    groups: dict[tuple[int, int], list[PeriodValue]] = {}
    for minute in minutes:
        start = _local_floor(minute.start_unix_ms, _MINUTE_MS, tz, "minute")
        if start != minute.start_unix_ms or minute.end_unix_ms != start + _MINUTE_MS:
            raise AggregationError(f"period {_span(minute)} is not one local minute")
        hour = _local_floor(start, _HOUR_MS, tz, "hour")
        groups.setdefault((hour, hour + _HOUR_MS), []).append(minute)
    return [
        _roll_up(
            start, end, members,
            expected=_MINUTES_PER_HOUR,
            min_valid=thresholds.min_valid_minutes_per_hour,
            share=thresholds.normal_share_for_n_flag,
        )
        for (start, end), members in sorted(groups.items())
    ]


def daily_values(hours: Iterable[PeriodValue], *, thresholds: Thresholds, tz: ZoneInfo) -> list[PeriodValue]:
    """The value of each local day that has at least one hour value, in time order.

    A day expects as many hours as the zone gives it (23 or 25 on daylight-saving days); missing
    hours are invalid and count as B in the flag.
    """
    groups: dict[date, list[PeriodValue]] = {}
    for hour in hours:
        start = _local_floor(hour.start_unix_ms, _HOUR_MS, tz, "hour")
        if start != hour.start_unix_ms or hour.end_unix_ms != start + _HOUR_MS:
            raise AggregationError(f"period {_span(hour)} is not one local hour")
        groups.setdefault(_local_date(start, tz), []).append(hour)
    days: list[PeriodValue] = []
    for day, members in sorted(groups.items()):
        start, end = _day_bounds(day, tz)
        if (end - start) % _HOUR_MS:
            raise AggregationError(f"local day {day} in {tz.key} is not a whole number of hours")
        days.append(
            _roll_up(
                start, end, members,
                expected=(end - start) // _HOUR_MS,
                min_valid=thresholds.min_valid_hours_per_day,
                share=thresholds.normal_share_for_n_flag,
            )
        )
    return days


def monthly_values(days: Iterable[PeriodValue], *, thresholds: Thresholds, tz: ZoneInfo) -> list[PeriodValue]:
    """The value of each local calendar month that has at least one day value, in time order.

    A month expects its calendar days; it needs `min_valid_days_per_month` valid days, or
    `min_valid_days_february` in February. Missing days are invalid and count as B in the flag.
    """
    groups: dict[tuple[int, int], list[PeriodValue]] = {}
    for day_value in days:
        day = _local_date(day_value.start_unix_ms, tz)
        if (day_value.start_unix_ms, day_value.end_unix_ms) != _day_bounds(day, tz):
            raise AggregationError(f"period {_span(day_value)} is not one local day in {tz.key}")
        groups.setdefault((day.year, day.month), []).append(day_value)
    months: list[PeriodValue] = []
    for (year, month), members in sorted(groups.items()):
        first = date(year, month, 1)
        following = date(year + 1, 1, 1) if month == 12 else date(year, month + 1, 1)
        months.append(
            _roll_up(
                _local_midnight(first, tz), _local_midnight(following, tz), members,
                expected=calendar.monthrange(year, month)[1],
                min_valid=thresholds.min_valid_days(month),
                share=thresholds.normal_share_for_n_flag,
            )
        )
    return months


def _sample_order(sample: Sample) -> tuple[int, int, int]:
    # a total order, NaN and -0.0 included, so that equal-time samples sort the same in any input order
    (bits,) = struct.unpack(">q", struct.pack(">d", sample.value))
    return sample.time_unix_ms, sample.quality, bits


def _minute(start: int, end: int, samples: Sequence[Sample], thresholds: Thresholds) -> PeriodValue:
    values: list[float] = []
    letters: Counter[str] = Counter()
    for sample in samples:
        letter = FLAG_LETTERS[sample.quality]
        letters[letter] += 1
        if letter == _NORMAL:
            if not math.isfinite(sample.value):
                raise AggregationError(
                    f"sample at {sample.time_unix_ms} ms is normal (N) but its value is {sample.value}"
                )
            values.append(sample.value)
    is_valid = len(values) >= thresholds.min_samples_per_minute
    return PeriodValue(
        start_unix_ms=start,
        end_unix_ms=end,
        mean=math.fsum(values) / len(values) if is_valid else None,
        minimum=min(values) if is_valid else None,
        maximum=max(values) if is_valid else None,
        valid_count=len(values),
        total_count=len(samples),
        flag=_flag(is_valid, letters, len(samples), thresholds.normal_share_for_n_flag),
    )


def _roll_up(
    start: int, end: int, members: list[PeriodValue], *, expected: int, min_valid: int, share: float
) -> PeriodValue:
    members.sort(key=lambda member: member.start_unix_ms)
    for earlier, later in itertools.pairwise(members):
        if earlier.start_unix_ms == later.start_unix_ms:
            raise AggregationError(f"two values for the period {_span(later)}")
    if len(members) > expected:
        raise AggregationError(f"{len(members)} values in {start}..{end} ms, which holds {expected}")
    valid = [member for member in members if member.valid]
    is_valid = len(valid) >= min_valid
    letters = Counter(member.flag for member in members)
    letters[_MISSING] += expected - len(members)
    mean = minimum = maximum = None
    if is_valid:
        means = [member.mean for member in valid if member.mean is not None]
        mean = math.fsum(means) / len(means)
        minimum = min(_present(member.minimum, member) for member in valid)
        maximum = max(_present(member.maximum, member) for member in valid)
    return PeriodValue(
        start_unix_ms=start,
        end_unix_ms=end,
        mean=mean,
        minimum=minimum,
        maximum=maximum,
        valid_count=len(valid),
        total_count=expected,
        flag=_flag(is_valid, letters, expected, share),
    )


def _present(statistic: float | None, member: PeriodValue) -> float:
    if statistic is None:
        raise AggregationError(f"valid period {_span(member)} has no minimum or maximum")
    return statistic


def _flag(is_valid: bool, letters: Counter[str], total: int, share: float) -> str:
    # float division is correctly rounded, so 45 / 60 == 0.75 exactly and a decimal share compares
    # as written (48 / 60 >= 0.8)
    if is_valid and letters[_NORMAL] / total >= share:
        return _NORMAL
    others = [(count, letter) for letter, count in letters.items() if letter != _NORMAL and count > 0]
    if not others:
        return _FALLBACK
    return min(others, key=lambda item: (-item[0], FLAG_PRIORITY.index(item[1])))[1]


def _offset_ms(time_unix_ms: int, tz: ZoneInfo) -> int:
    offset = (_EPOCH + time_unix_ms * _ONE_MS).astimezone(tz).utcoffset()
    if offset is None:  # a ZoneInfo always has an offset; this satisfies the type
        raise AggregationError(f"time zone {tz.key} has no UTC offset at {time_unix_ms} ms")
    return offset // _ONE_MS


def _local_floor(time_unix_ms: int, unit_ms: int, tz: ZoneInfo, unit: str) -> int:
    """Start (UTC ms) of the local minute or hour holding the instant."""
    offset = _offset_ms(time_unix_ms, tz)
    start = time_unix_ms - (time_unix_ms + offset) % unit_ms
    if _offset_ms(start, tz) != offset:
        raise AggregationError(
            f"time zone {tz.key} changes its UTC offset inside a local {unit} (at {time_unix_ms} ms): "
            f"its local {unit}s are not well defined"
        )
    return start


def _local_date(time_unix_ms: int, tz: ZoneInfo) -> date:
    return (_EPOCH + time_unix_ms * _ONE_MS).astimezone(tz).date()


def _local_midnight(day: date, tz: ZoneInfo) -> int:
    # fold=0: an ambiguous midnight is its first occurrence; a skipped one maps to the transition
    return (datetime.combine(day, time(0), tzinfo=tz) - _EPOCH) // _ONE_MS


def _day_bounds(day: date, tz: ZoneInfo) -> tuple[int, int]:
    return _local_midnight(day, tz), _local_midnight(day + timedelta(days=1), tz)


def _span(period: PeriodValue) -> str:
    return f"{period.start_unix_ms}..{period.end_unix_ms} ms"
