"""HJ 75 aggregation: validity thresholds, flag roll-up, local-time periods, determinism."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from fractions import Fraction
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.aggregate import (
    FLAG_LETTERS,
    AggregationError,
    PeriodValue,
    Sample,
    Thresholds,
    daily_values,
    hourly_values,
    minute_values,
    monthly_values,
)
from proto.stackline.v1 import stackline_pb2 as pb

N, C, M, D, B, F, T, S = (
    int(quality) for quality in (
        pb.QUALITY_NORMAL, pb.QUALITY_CALIBRATION, pb.QUALITY_MAINTENANCE, pb.QUALITY_FAULT,
        pb.QUALITY_COMM_LOSS, pb.QUALITY_STOPPED, pb.QUALITY_OVER_RANGE, pb.QUALITY_MANUAL,
    )
)
SHANGHAI = ZoneInfo("Asia/Shanghai")
NEW_YORK = ZoneInfo("America/New_York")
DEFAULTS = Thresholds()
MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000


def utc_ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return local_ms(ZoneInfo("UTC"), year, month, day, hour, minute, second)


def local_ms(tz: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0,
             second: int = 0) -> int:
    """UTC ms of a local wall-clock time (the first one where it is ambiguous)."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()) * 1000


def samples_in_minute(
    start_ms: int, qualities: Sequence[int], values: Sequence[float] | None = None
) -> list[Sample]:
    """One sample per quality, spaced evenly inside the minute starting at `start_ms`."""
    values = values if values is not None else [10.0] * len(qualities)
    step = MINUTE_MS // max(len(qualities), 1)
    return [
        Sample(start_ms + i * step, math.nan if quality == B else value, quality)
        for i, (quality, value) in enumerate(zip(qualities, values, strict=True))
    ]


def minute(start_ms: int, mean: float | None = 10.0, flag: str = "N") -> PeriodValue:
    """A minute value as minute_values would give it (12 samples, all valid when it has a mean)."""
    valid_count = 12 if mean is not None else 0
    return PeriodValue(start_ms, start_ms + MINUTE_MS, mean, mean, mean, valid_count, 12, flag)


def hour(start_ms: int, mean: float | None = 10.0, flag: str = "N") -> PeriodValue:
    valid_count = 60 if mean is not None else 0
    return PeriodValue(start_ms, start_ms + HOUR_MS, mean, mean, mean, valid_count, 60, flag)


def day(tz: ZoneInfo, year: int, month: int, day_of_month: int, mean: float | None = 10.0,
        flag: str = "N") -> PeriodValue:
    following = date(year, month, day_of_month) + timedelta(days=1)
    start = local_ms(tz, year, month, day_of_month)
    end = local_ms(tz, following.year, following.month, following.day)
    hours = [hour(t, mean, flag) for t in range(start, end, HOUR_MS)]
    (value,) = daily_values(hours, thresholds=DEFAULTS, tz=tz)
    return value


# ---------------------------------------------------------------------------------------------- thresholds

def test_thresholds_defaults_are_regulation_section_2() -> None:
    assert Thresholds() == Thresholds(
        min_samples_per_minute=12, min_valid_minutes_per_hour=45, min_valid_hours_per_day=20,
        min_valid_days_per_month=25, min_valid_days_february=23, normal_share_for_n_flag=0.75,
    )
    assert DEFAULTS.min_valid_days(2) == 23
    assert DEFAULTS.min_valid_days(3) == 25


@pytest.mark.parametrize(
    "field", ["min_samples_per_minute", "min_valid_minutes_per_hour", "min_valid_hours_per_day",
              "min_valid_days_per_month", "min_valid_days_february"],
)
def test_thresholds_reject_counts_below_one(field: str) -> None:
    with pytest.raises(AggregationError, match=field):
        Thresholds(**{field: 0})


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, math.nan])
def test_thresholds_reject_impossible_shares(share: float) -> None:
    with pytest.raises(AggregationError, match="normal_share_for_n_flag"):
        Thresholds(normal_share_for_n_flag=share)


def test_quality_codes_map_to_hj212_letters() -> None:
    assert FLAG_LETTERS == {N: "N", C: "C", M: "M", D: "D", B: "B", F: "F", T: "T", S: "S"}
    assert (N, C, M, D, B, F, T, S) == (1, 2, 3, 4, 5, 6, 7, 8)


# ---------------------------------------------------------------------------------------------- minutes

def test_minute_needs_12_valid_samples() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    (eleven,) = minute_values(samples_in_minute(start, [N] * 11), thresholds=DEFAULTS, tz=SHANGHAI)
    assert (eleven.valid, eleven.mean, eleven.valid_count, eleven.total_count) == (False, None, 11, 11)
    assert eleven.flag == "D"  # not N, and no other letter among the samples: the regulation's default
    (twelve,) = minute_values(samples_in_minute(start, [N] * 12), thresholds=DEFAULTS, tz=SHANGHAI)
    assert (twelve.valid, twelve.mean, twelve.valid_count, twelve.flag) == (True, 10.0, 12, "N")
    assert (twelve.start_unix_ms, twelve.end_unix_ms) == (start, start + MINUTE_MS)


def test_minute_threshold_comes_from_thresholds() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    (six,) = minute_values(
        samples_in_minute(start, [N] * 6), thresholds=Thresholds(min_samples_per_minute=6), tz=SHANGHAI
    )
    assert six.valid


def test_minute_mean_is_hand_computed_over_normal_samples_only() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    normal = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.5]
    qualities = [N] * 12 + [C, M, D, F, B, T, S]
    values = [*normal, 1000.0, 2000.0, -3000.0, 4000.0, math.nan, 9999.0, 0.001]
    (value,) = minute_values(samples_in_minute(start, qualities, values), thresholds=DEFAULTS, tz=SHANGHAI)
    assert value.mean == 78.5 / 12
    assert (value.minimum, value.maximum) == (1.0, 12.5)
    assert (value.valid_count, value.total_count) == (12, 19)
    # 12 of 19 normal is below 75 %; one each of C, M, D, F, B, T, S: the priority order picks F
    assert value.flag == "F"


def test_minute_of_excluded_flags_only_is_invalid_with_their_flag() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    for quality, letter in [(C, "C"), (M, "M"), (D, "D"), (F, "F"), (B, "B"), (T, "T"), (S, "S")]:
        (value,) = minute_values(samples_in_minute(start, [quality] * 12), thresholds=DEFAULTS, tz=SHANGHAI)
        assert (value.valid, value.mean, value.minimum, value.flag) == (False, None, None, letter)


def test_minute_normal_share_is_inclusive_at_75_percent() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    (at_75,) = minute_values(samples_in_minute(start, [N] * 21 + [C] * 7), thresholds=DEFAULTS, tz=SHANGHAI)
    assert (at_75.valid, at_75.flag) == (True, "N")  # 21 of 28 = 75 %
    (below,) = minute_values(samples_in_minute(start, [N] * 20 + [C] * 7), thresholds=DEFAULTS, tz=SHANGHAI)
    assert (below.valid, below.flag) == (True, "C")  # 20 of 27 = 74.07 %: valid mean, flag C
    assert below.mean == 10.0


def test_minute_flag_is_the_most_frequent_letter() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    (value,) = minute_values(samples_in_minute(start, [N] * 12 + [B] * 5 + [C] * 4),
                             thresholds=DEFAULTS, tz=SHANGHAI)
    assert value.flag == "B"


def test_minutes_split_at_minute_boundaries() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    samples = [Sample(start + i * 5000, float(i), N) for i in range(24)]
    first, second = minute_values(samples, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (first.start_unix_ms, first.mean) == (start, 5.5)
    assert (second.start_unix_ms, second.mean) == (start + MINUTE_MS, 17.5)


def test_unknown_quality_and_broken_normal_values_raise() -> None:
    start = utc_ms(2024, 3, 1, 0, 0)
    for quality in (0, 9):
        with pytest.raises(AggregationError, match="unknown quality code"):
            minute_values([Sample(start, 1.0, quality)], thresholds=DEFAULTS, tz=SHANGHAI)
    for value in (math.nan, math.inf):
        with pytest.raises(AggregationError, match="normal"):
            minute_values([Sample(start, value, N)], thresholds=DEFAULTS, tz=SHANGHAI)


# ---------------------------------------------------------------------------------------------- hours

def test_hour_needs_45_valid_minutes_and_missing_minutes_count() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    minutes = [minute(start + i * MINUTE_MS) for i in range(45)]
    (h45,) = hourly_values(minutes, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (h45.valid, h45.mean, h45.valid_count, h45.total_count, h45.flag) == (True, 10.0, 45, 60, "N")
    assert (h45.start_unix_ms, h45.end_unix_ms) == (start, start + HOUR_MS)
    # 44 minutes present, all valid: the 16 missing minutes make the hour invalid (absence is data)
    (h44,) = hourly_values(minutes[:44], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (h44.valid, h44.mean, h44.valid_count, h44.total_count, h44.flag) == (False, None, 44, 60, "B")


def test_hour_with_invalid_minutes_present() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    minutes = [minute(start + i * MINUTE_MS) for i in range(44)]
    minutes += [minute(start + i * MINUTE_MS, None, "D") for i in range(44, 60)]
    (value,) = hourly_values(minutes, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (value.valid, value.valid_count, value.flag) == (False, 44, "D")


def test_hour_normal_share_is_inclusive_at_45_of_60() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    at_75 = [minute(start + i * MINUTE_MS, flag="N" if i < 45 else "C") for i in range(60)]
    (value,) = hourly_values(at_75, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (value.valid, value.flag) == (True, "N")
    below = [minute(start + i * MINUTE_MS, flag="N" if i < 44 else "C") for i in range(60)]
    (value,) = hourly_values(below, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (value.valid, value.valid_count, value.flag) == (True, 60, "C")  # 44 of 60 = 73.3 %


def test_hour_mean_is_the_mean_of_valid_minutes_by_hand() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    means = [0.1 * (i + 1) for i in range(50)]
    minutes = [minute(start + i * MINUTE_MS, mean) for i, mean in enumerate(means)]
    minutes += [minute(start + i * MINUTE_MS, None, "C") for i in range(50, 60)]
    (value,) = hourly_values(minutes, thresholds=DEFAULTS, tz=SHANGHAI)
    exact_sum = sum(Fraction(mean) for mean in means)
    assert value.mean == float(exact_sum) / 50  # fsum: the correctly rounded sum, whatever the order
    assert (value.minimum, value.maximum) == (min(means), max(means))
    assert value.valid_count == 50


def test_calibration_hour_is_invalid_and_flagged_c() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    samples = [Sample(start + i * 5000, 50.0, C) for i in range(720)]
    minutes = minute_values(samples, thresholds=DEFAULTS, tz=SHANGHAI)
    assert len(minutes) == 60
    assert all(value.flag == "C" and not value.valid for value in minutes)
    (value,) = hourly_values(minutes, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (value.valid, value.mean, value.valid_count, value.flag) == (False, None, 0, "C")


def test_communication_gap_hours_are_invalid_and_flagged_b() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 0)
    samples = [Sample(start + i * 5000, 20.0, N) for i in range(720)]  # 00:00 normal
    samples += [Sample(start + HOUR_MS + i * 5000, math.nan, B) for i in range(720)]  # 01:00 link down
    samples += [Sample(start + 2 * HOUR_MS + i * 5000, 20.0, N) for i in range(360)]  # 02:00-02:30 only
    hours = hourly_values(minute_values(samples, thresholds=DEFAULTS, tz=SHANGHAI), thresholds=DEFAULTS,
                          tz=SHANGHAI)
    assert [(value.valid, value.valid_count, value.flag) for value in hours] == [
        (True, 60, "N"), (False, 0, "B"), (False, 30, "B"),
    ]
    assert hours[0].mean == 20.0


def test_constituents_must_be_whole_distinct_periods() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 1, 8)
    with pytest.raises(AggregationError, match="two values"):
        hourly_values([minute(start), minute(start)], thresholds=DEFAULTS, tz=SHANGHAI)
    with pytest.raises(AggregationError, match="not one local minute"):
        hourly_values([minute(start + 1000)], thresholds=DEFAULTS, tz=SHANGHAI)
    with pytest.raises(AggregationError, match="not one local hour"):
        daily_values([minute(start)], thresholds=DEFAULTS, tz=SHANGHAI)
    with pytest.raises(AggregationError, match="not one local day"):
        monthly_values([hour(start)], thresholds=DEFAULTS, tz=SHANGHAI)


def test_zone_with_half_hour_daylight_saving_has_no_local_hours_at_the_change() -> None:
    lord_howe = ZoneInfo("Australia/Lord_Howe")
    change = utc_ms(2024, 10, 5, 15, 30)  # 02:00 +10:30 becomes 02:30 +11
    samples = [Sample(change + i * 5000, 1.0, N) for i in range(24)]
    minutes = minute_values(samples, thresholds=DEFAULTS, tz=lord_howe)  # minutes are well defined
    with pytest.raises(AggregationError, match="Lord_Howe"):
        hourly_values(minutes, thresholds=DEFAULTS, tz=lord_howe)


# ---------------------------------------------------------------------------------------------- days

def test_day_needs_20_valid_hours() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 2)
    (d20,) = daily_values([hour(start + i * HOUR_MS) for i in range(20)], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (d20.valid, d20.mean, d20.valid_count, d20.total_count, d20.flag) == (True, 10.0, 20, 24, "N")
    (d19,) = daily_values([hour(start + i * HOUR_MS) for i in range(19)], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (d19.valid, d19.mean, d19.valid_count, d19.total_count, d19.flag) == (False, None, 19, 24, "B")


def test_day_mean_by_hand_and_share_over_expected_hours() -> None:
    start = local_ms(SHANGHAI, 2024, 3, 2)
    hours = [hour(start + i * HOUR_MS, float(i), "N" if i < 18 else "M") for i in range(21)]
    (value,) = daily_values(hours, thresholds=DEFAULTS, tz=SHANGHAI)
    assert value.mean == 210.0 / 21
    assert (value.minimum, value.maximum) == (0.0, 20.0)
    assert value.flag == "N"  # 18 of 24 = 75 %, the 3 missing hours included in the 24
    (value,) = daily_values(hours[1:], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (value.valid, value.flag) == (True, "B")  # 17 of 24 N; 4 missing (B) beat 3 M


def test_shanghai_local_day_starts_at_16_utc_the_day_before() -> None:
    before = utc_ms(2024, 3, 1, 15, 59, 55)
    after = utc_ms(2024, 3, 1, 16, 0, 0)
    samples = [Sample(before, 1.0, N), Sample(after, 2.0, N)]
    minutes = minute_values(samples, thresholds=Thresholds(min_samples_per_minute=1), tz=SHANGHAI)
    hours = hourly_values(minutes, thresholds=DEFAULTS, tz=SHANGHAI)
    days = daily_values(hours, thresholds=DEFAULTS, tz=SHANGHAI)
    assert [(value.start_unix_ms, value.end_unix_ms) for value in days] == [
        (utc_ms(2024, 2, 29, 16), utc_ms(2024, 3, 1, 16)),  # local 2024-03-01
        (utc_ms(2024, 3, 1, 16), utc_ms(2024, 3, 2, 16)),  # local 2024-03-02
    ]
    assert [value.total_count for value in days] == [24, 24]


def test_new_york_spring_forward_day_has_23_hours() -> None:
    start, end = local_ms(NEW_YORK, 2024, 3, 10), local_ms(NEW_YORK, 2024, 3, 11)
    assert end - start == 23 * HOUR_MS
    hours = [hour(start + i * HOUR_MS, flag="N" if i < 18 else "C") for i in range(23)]
    (value,) = daily_values(hours, thresholds=DEFAULTS, tz=NEW_YORK)
    assert (value.start_unix_ms, value.end_unix_ms) == (start, end)
    assert (value.valid_count, value.total_count, value.flag) == (23, 23, "N")  # 18 of 23 = 78 %
    (value,) = daily_values(hours[1:], thresholds=DEFAULTS, tz=NEW_YORK)
    assert (value.valid_count, value.total_count, value.flag) == (22, 23, "C")  # 17 of 23 = 73.9 %


def test_new_york_fall_back_day_has_25_hours_from_samples() -> None:
    start, end = local_ms(NEW_YORK, 2024, 11, 3), local_ms(NEW_YORK, 2024, 11, 4)
    assert end - start == 25 * HOUR_MS
    samples = [Sample(start + i * 5000, 7.0, N) for i in range(25 * 720)]
    minutes = minute_values(samples, thresholds=DEFAULTS, tz=NEW_YORK)
    hours = hourly_values(minutes, thresholds=DEFAULTS, tz=NEW_YORK)
    assert len(hours) == 25  # local 01:00 twice: EDT and EST
    assert hours[1].start_unix_ms == utc_ms(2024, 11, 3, 5)  # 01:00 EDT
    assert hours[2].start_unix_ms == utc_ms(2024, 11, 3, 6)  # 01:00 EST
    (value,) = daily_values(hours, thresholds=DEFAULTS, tz=NEW_YORK)
    assert (value.start_unix_ms, value.end_unix_ms) == (start, end)
    assert (value.valid, value.mean, value.flag) == (True, 7.0, "N")
    assert (value.valid_count, value.total_count) == (25, 25)
    # 19 of 25 normal is 76 %: N; 18 of 25 is 72 %: not N
    flagged = [hour(value.start_unix_ms, flag="N" if i < 19 else "M") for i, value in enumerate(hours)]
    assert daily_values(flagged, thresholds=DEFAULTS, tz=NEW_YORK)[0].flag == "N"
    flagged = [hour(value.start_unix_ms, flag="N" if i < 18 else "M") for i, value in enumerate(hours)]
    assert daily_values(flagged, thresholds=DEFAULTS, tz=NEW_YORK)[0].flag == "M"


# ---------------------------------------------------------------------------------------------- months

def test_month_needs_25_valid_days() -> None:
    days = [day(SHANGHAI, 2024, 4, d) for d in range(1, 26)]
    (m25,) = monthly_values(days, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (m25.valid, m25.mean, m25.valid_count, m25.total_count, m25.flag) == (True, 10.0, 25, 30, "N")
    assert (m25.start_unix_ms, m25.end_unix_ms) == (utc_ms(2024, 3, 31, 16), utc_ms(2024, 4, 30, 16))
    (m24,) = monthly_values(days[:24], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (m24.valid, m24.mean, m24.valid_count, m24.flag) == (False, None, 24, "B")


@pytest.mark.parametrize(("year", "length"), [(2023, 28), (2024, 29)])
def test_february_needs_23_valid_days(year: int, length: int) -> None:
    days = [day(SHANGHAI, year, 2, d) for d in range(1, 24)]
    (m23,) = monthly_values(days, thresholds=DEFAULTS, tz=SHANGHAI)
    assert (m23.valid, m23.valid_count, m23.total_count) == (True, 23, length)
    (m22,) = monthly_values(days[:22], thresholds=DEFAULTS, tz=SHANGHAI)
    assert (m22.valid, m22.valid_count, m22.total_count) == (False, 22, length)


def test_month_mean_by_hand_skips_invalid_days() -> None:
    days = [day(SHANGHAI, 2024, 4, d, float(d)) for d in range(1, 27)]
    days += [day(SHANGHAI, 2024, 4, d, None, "C") for d in range(27, 31)]
    (value,) = monthly_values(days, thresholds=DEFAULTS, tz=SHANGHAI)
    assert value.mean == sum(range(1, 27)) / 26
    assert (value.minimum, value.maximum, value.valid_count, value.total_count) == (1.0, 26.0, 26, 30)
    assert value.flag == "N"  # 26 of 30


def test_new_york_months_follow_local_midnight() -> None:
    days = [day(NEW_YORK, 2024, 3, d) for d in range(1, 32)]
    assert days[9].total_count == 23  # 2024-03-10
    (value,) = monthly_values(days, thresholds=DEFAULTS, tz=NEW_YORK)
    assert (value.start_unix_ms, value.end_unix_ms) == (utc_ms(2024, 3, 1, 5), utc_ms(2024, 4, 1, 4))
    assert (value.valid_count, value.total_count, value.flag) == (31, 31, "N")


# ---------------------------------------------------------------------------------------------- determinism

QUALITIES = st.sampled_from([N, N, N, N, C, M, D, B, F, T, S])
START = utc_ms(2024, 11, 3, 4)  # around New York's fall-back hour


@st.composite
def sample_lists(draw: st.DrawFn) -> list[Sample]:
    raw = draw(st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=3 * HOUR_MS // 5000),
            QUALITIES,
            st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        ),
        max_size=300,
    ))
    return [
        Sample(START + tick * 5000, math.nan if quality == B else value, quality)
        for tick, quality, value in raw
    ]


def pipeline(samples: list[Sample], tz: ZoneInfo) -> tuple[list[PeriodValue], ...]:
    thresholds = Thresholds(min_samples_per_minute=1, min_valid_minutes_per_hour=2, min_valid_hours_per_day=1,
                            min_valid_days_per_month=1, min_valid_days_february=1)
    minutes = minute_values(samples, thresholds=thresholds, tz=tz)
    hours = hourly_values(minutes, thresholds=thresholds, tz=tz)
    days = daily_values(hours, thresholds=thresholds, tz=tz)
    return minutes, hours, days, monthly_values(days, thresholds=thresholds, tz=tz)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), samples=sample_lists())
def test_any_input_order_gives_identical_output(data: st.DataObject, samples: list[Sample]) -> None:
    shuffled = data.draw(st.permutations(samples))
    for tz in (NEW_YORK, SHANGHAI):
        expected = pipeline(samples, tz)
        got = pipeline(shuffled, tz)
        assert repr(got) == repr(expected)  # repr: equal to the last digit, -0.0 and all
        minutes, hours, _, _ = got
        starts = [value.start_unix_ms for value in minutes]
        assert starts == sorted(set(starts))
        assert sum(value.total_count for value in minutes) == len(samples)
        assert all(value.total_count == 60 for value in hours)


def test_equal_time_samples_give_the_same_extremes_in_any_order() -> None:
    start = utc_ms(2024, 3, 1)
    samples = [Sample(start, 0.0, N), Sample(start, -0.0, N)]
    thresholds = Thresholds(min_samples_per_minute=1)
    forward = minute_values(samples, thresholds=thresholds, tz=SHANGHAI)
    backward = minute_values(samples[::-1], thresholds=thresholds, tz=SHANGHAI)
    assert repr(forward) == repr(backward)
