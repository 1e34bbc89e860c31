"""Totalizer increments across rollovers and resets: golden cases and a simulated meter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config import DataType, TotalizerSpec
from collector.totalizer import CounterStep, TotalizerTracker, rollover_span
from proto.stackline.v1 import stackline_pb2 as pb

T0_MS = 1_700_000_000_000
FIRST = pb.COUNTER_EVENT_FIRST
CONTINUED = pb.COUNTER_EVENT_CONTINUED
ROLLOVER = pb.COUNTER_EVENT_ROLLOVER
RESET = pb.COUNTER_EVENT_RESET


def _tracker(data_type: DataType, *, scale: float = 1.0, rollover_at: float | None = None,
             max_increase_per_s: float | None = None) -> TotalizerTracker:
    spec = TotalizerSpec(rollover_at=rollover_at, max_increase_per_s=max_increase_per_s)
    return TotalizerTracker(spec=spec, data_type=data_type, scale=scale)


def _pair(tracker: TotalizerTracker, previous: int | float, raw: int | float, *,
          elapsed_ms: int = 1000) -> CounterStep:
    """Observe `previous` then `raw`; the second step is the one under test."""
    assert tracker.observe(previous, T0_MS) == CounterStep(increment=None, event=FIRST)
    return tracker.observe(raw, T0_MS + elapsed_ms)


# --- rollover_span ---------------------------------------------------------------------------


@pytest.mark.parametrize(("data_type", "span"), [
    (DataType.UINT16, 65536), (DataType.UINT32, 4294967296), (DataType.UINT64, 18446744073709551616),
    (DataType.INT16, None), (DataType.INT32, None), (DataType.FLOAT32, None), (DataType.FLOAT64, None),
])
def test_rollover_span_defaults_to_the_width_of_unsigned_types_only(data_type: DataType,
                                                                    span: int | None) -> None:
    assert rollover_span(TotalizerSpec(), data_type) == span


def test_rollover_span_prefers_rollover_at_and_keeps_integer_types_exact() -> None:
    odometer = rollover_span(TotalizerSpec(rollover_at=1e8), DataType.UINT32)
    assert odometer == 100_000_000
    assert isinstance(odometer, int)
    assert rollover_span(TotalizerSpec(rollover_at=1e6), DataType.FLOAT32) == 1e6
    assert rollover_span(TotalizerSpec(rollover_at=999.5), DataType.FLOAT64) == 999.5


# --- golden cases, one per event -------------------------------------------------------------


def test_first_observation_has_no_increment() -> None:
    tracker = _tracker(DataType.UINT32)
    assert tracker.observe(123, T0_MS) == CounterStep(increment=None, event=FIRST)


def test_continued_counts_the_difference_times_scale() -> None:
    step = _pair(_tracker(DataType.UINT32, scale=0.5), 100, 150)
    assert step == CounterStep(increment=25.0, event=CONTINUED)


def test_an_unchanged_count_is_continued_with_zero() -> None:
    assert _pair(_tracker(DataType.UINT16), 7, 7) == CounterStep(increment=0.0, event=CONTINUED)


def test_uint32_rollover_counts_up_to_the_span_and_on_from_zero() -> None:
    # 4294967290 .. 4294967295 is 6 counts (the last reaching 2**32 = 0), then 0 .. 5 is 5 more.
    step = _pair(_tracker(DataType.UINT32, scale=0.01), 4294967290, 5)
    assert step.event == ROLLOVER
    assert step.increment == 11 * 0.01
    assert step.increment == pytest.approx(0.11)


def test_uint16_rollover() -> None:
    assert _pair(_tracker(DataType.UINT16), 65530, 4) == CounterStep(increment=10.0, event=ROLLOVER)


def test_uint64_rollover_and_continuation_are_exact_near_the_top() -> None:
    # As floats, 2**64 - 3 and 2**64 - 1000 are not representable: these would come out wrong.
    assert _pair(_tracker(DataType.UINT64), 2**64 - 3, 2) == CounterStep(increment=5.0, event=ROLLOVER)
    assert _pair(_tracker(DataType.UINT64), 2**64 - 1000, 2**64 - 1) == CounterStep(
        increment=999.0, event=CONTINUED)
    # ... and as floats these two would be equal, not a drop.
    assert _pair(_tracker(DataType.UINT64), 2**64 - 1, 2**64 - 2) == CounterStep(
        increment=float(2**64 - 2), event=RESET)


def test_a_meter_reset_counts_from_zero() -> None:
    # A drop from 1,000,000 to 3 would be a wrap of almost 2**32: far more than half the range.
    step = _pair(_tracker(DataType.UINT32, scale=0.1), 1_000_000, 3)
    assert step.event == RESET
    assert step.increment == pytest.approx(0.3)


def test_half_the_span_is_the_largest_rollover_without_a_rate() -> None:
    # 65536 - 40000 + 7232 = 32768 = span / 2; one count more is a reset.
    assert _pair(_tracker(DataType.UINT16), 40000, 7232) == CounterStep(increment=32768.0, event=ROLLOVER)
    assert _pair(_tracker(DataType.UINT16), 40000, 7233) == CounterStep(increment=7233.0, event=RESET)


def test_a_drop_too_large_for_the_rate_is_a_reset_though_under_half_the_span() -> None:
    # A wrap of 15536 counts is under half of 65536, but the meter counts at most 100 a second.
    assert _pair(_tracker(DataType.UINT16), 60000, 10000) == CounterStep(increment=15536.0, event=ROLLOVER)
    step = _pair(_tracker(DataType.UINT16, max_increase_per_s=100.0), 60000, 10000, elapsed_ms=1000)
    assert step == CounterStep(increment=10000.0, event=RESET)


def test_a_drop_that_fits_the_rate_is_a_rollover() -> None:
    step = _pair(_tracker(DataType.UINT16, max_increase_per_s=100.0), 65500, 20, elapsed_ms=1000)
    assert step == CounterStep(increment=56.0, event=ROLLOVER)


def test_the_rate_is_in_engineering_units_and_grows_with_the_time_between_readings() -> None:
    # 56 counts at scale 10 are 560 units: too many for 100 units/s in one second, not in six.
    too_fast = _pair(_tracker(DataType.UINT16, scale=10.0, max_increase_per_s=100.0), 65500, 20)
    assert too_fast == CounterStep(increment=200.0, event=RESET)
    in_time = _pair(_tracker(DataType.UINT16, scale=10.0, max_increase_per_s=100.0), 65500, 20,
                    elapsed_ms=6000)
    assert in_time == CounterStep(increment=560.0, event=ROLLOVER)


def test_the_rate_compares_the_size_of_a_negatively_scaled_increase() -> None:
    # A meter wired to count down in engineering units still counts up in raw counts.
    step = _pair(_tracker(DataType.UINT16, scale=-10.0, max_increase_per_s=100.0), 65500, 20)
    assert step == CounterStep(increment=-200.0, event=RESET)


def test_a_large_wrap_fits_a_fast_meter_read_seldom() -> None:
    # 60000 counts at scale 0.01 = 600 units: more than half the span, but in 61 s at up to
    # 10 units/s the meter could have counted 610.
    step = _pair(_tracker(DataType.UINT16, scale=0.01, max_increase_per_s=10.0), 5536, 0,
                 elapsed_ms=61_000)
    assert step.event == ROLLOVER
    assert step.increment == 60000 * 0.01


@pytest.mark.parametrize("elapsed_ms", [0, -5000])
def test_without_time_between_readings_the_rate_gives_way_to_half_the_span(elapsed_ms: int) -> None:
    tracker = _tracker(DataType.UINT16, max_increase_per_s=1.0)
    assert _pair(tracker, 65500, 20, elapsed_ms=elapsed_ms) == CounterStep(increment=56.0, event=ROLLOVER)
    tracker.forget()
    assert _pair(tracker, 1000, 20, elapsed_ms=elapsed_ms) == CounterStep(increment=20.0, event=RESET)


def test_a_float_totalizer_rolls_over_at_rollover_at() -> None:
    tracker = _tracker(DataType.FLOAT32, scale=2.0, rollover_at=1e6)
    assert _pair(tracker, 999_999.5, 2.5) == CounterStep(increment=6.0, event=ROLLOVER)


def test_an_odometer_with_a_decimal_rollover() -> None:
    step = _pair(_tracker(DataType.UINT32, rollover_at=1e8), 99_999_990, 5)
    assert step == CounterStep(increment=15.0, event=ROLLOVER)


def test_a_signed_counter_with_rollover_at_wraps_through_the_negatives() -> None:
    assert _pair(_tracker(DataType.INT16, rollover_at=65536), 32767, -32768) == CounterStep(
        increment=1.0, event=ROLLOVER)


def test_a_float_without_a_span_can_only_reset() -> None:
    assert _pair(_tracker(DataType.FLOAT64, scale=0.5), 1000.0, 999.0) == CounterStep(
        increment=499.5, event=RESET)


def test_a_previous_count_beyond_the_span_is_no_rollover() -> None:
    # 1500 is outside a meter that wraps at 1000; the "wrap" would be -300 counts.
    step = _pair(_tracker(DataType.FLOAT64, rollover_at=1000.0), 1500.0, 200.0)
    assert step == CounterStep(increment=200.0, event=RESET)


def test_the_tracker_counts_on_from_each_reading_whatever_its_event() -> None:
    tracker = _tracker(DataType.UINT16)
    events = [tracker.observe(raw, T0_MS + i * 1000) for i, raw in enumerate([65000, 100, 50, 70])]
    assert events == [
        CounterStep(increment=None, event=FIRST),
        CounterStep(increment=636.0, event=ROLLOVER),
        CounterStep(increment=50.0, event=RESET),
        CounterStep(increment=20.0, event=CONTINUED),
    ]


def test_forget_makes_the_next_observation_first_again() -> None:
    tracker = _tracker(DataType.UINT32, max_increase_per_s=1.0)
    tracker.observe(500, T0_MS)
    tracker.forget()
    assert tracker.observe(10, T0_MS + 1000) == CounterStep(increment=None, event=FIRST)
    assert tracker.observe(12, T0_MS + 2000) == CounterStep(increment=2.0, event=CONTINUED)


def test_a_count_that_is_not_a_number_is_refused_and_leaves_the_tracker_as_it_was() -> None:
    tracker = _tracker(DataType.FLOAT32, rollover_at=1e6)
    tracker.observe(10.0, T0_MS)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="finite"):
            tracker.observe(bad, T0_MS + 1000)
    assert tracker.observe(12.5, T0_MS + 2000) == CounterStep(increment=2.5, event=CONTINUED)


def test_repr_shows_the_state() -> None:
    tracker = _tracker(DataType.UINT16, scale=0.01)
    tracker.observe(42, T0_MS)
    text = repr(tracker)
    assert "uint16" in text
    assert "span=65536" in text
    assert "previous_raw=42" in text
    assert repr(CounterStep(increment=1.5, event=ROLLOVER)) == "CounterStep(increment=1.5, event=ROLLOVER)"


# --- a simulated meter -----------------------------------------------------------------------


@dataclass(frozen=True)
class Meter:
    """A run of a meter that wraps at `span`: its first count and what it counted at each step."""

    data_type: DataType
    span: int | float
    rollover_at: float | None
    start: int | float
    steps: list[int | float]


_WIDTHS = {DataType.UINT16: 2**16, DataType.UINT32: 2**32, DataType.UINT64: 2**64}


@st.composite
def meters(draw: st.DrawFn, *, exact_steps: bool) -> Meter:
    """Meters whose steps are each under half the span.

    With `exact_steps`, every step and count is exactly representable as a float (integer steps
    below 2**53, quarter steps on a float meter), so sums can be compared exactly.
    """
    data_type = draw(st.sampled_from([DataType.UINT16, DataType.UINT32, DataType.UINT64, DataType.FLOAT64]))
    if data_type is DataType.FLOAT64:
        span: int | float = 1e6
        quarters = st.integers(0, 2 * 10**6 - 1)  # below 500000 = span / 2
        start: int | float = draw(quarters) / 2
        steps: list[int | float] = [q / 4 for q in draw(st.lists(quarters, max_size=40))]
        return Meter(data_type, span, span, start, steps)
    span = _WIDTHS[data_type]
    max_step = span // 2 - 1
    if exact_steps:
        max_step = min(max_step, 2**53 - 1)
    # Start anywhere, or close enough to the top that a wrap is likely even for uint64.
    start = draw(st.one_of(st.integers(0, span - 1), st.integers(max(0, span - 8 * max_step), span - 1)))
    steps = list(draw(st.lists(st.integers(0, max_step), max_size=40)))
    return Meter(data_type, span, None, start, steps)


def _run(meter: Meter, tracker: TotalizerTracker) -> list[tuple[int | float, CounterStep, int]]:
    """Feed the meter's counts to the tracker: (true step, tracker's step, expected event)."""
    raw = meter.start
    assert tracker.observe(raw, T0_MS) == CounterStep(increment=None, event=FIRST)
    results: list[tuple[int | float, CounterStep, int]] = []
    for i, counted in enumerate(meter.steps, start=1):
        wraps = raw + counted >= meter.span
        raw = raw + counted - meter.span if wraps else raw + counted
        step = tracker.observe(raw, T0_MS + i * 1000)
        results.append((counted, step, ROLLOVER if wraps else CONTINUED))
    return results


@given(meter=meters(exact_steps=True), scale=st.sampled_from([1.0, 0.5, 0.125, 4.0, -2.0]),
       with_rate=st.booleans())
def test_increments_sum_to_what_the_meter_counted(meter: Meter, scale: float, with_rate: bool) -> None:
    # A rate any step fits (steps are one second apart) takes the other branch of the rollover test.
    rate = meter.span * abs(scale) if with_rate else None
    spec = TotalizerSpec(rollover_at=meter.rollover_at, max_increase_per_s=rate)
    tracker = TotalizerTracker(spec=spec, data_type=meter.data_type, scale=scale)
    results = _run(meter, tracker)
    assert [step.event for _, step, _ in results] == [event for _, _, event in results]
    # Power-of-two scales and steps below 2**53: every increment is exact, so is their sum.
    increments = [Fraction(step.increment) for _, step, _ in results if step.increment is not None]
    assert len(increments) == len(meter.steps)
    assert sum(increments) == Fraction(sum(meter.steps)) * Fraction(scale)


@given(meter=meters(exact_steps=False), scale=st.sampled_from([0.01, 0.001, 2.5, 1e-6, -0.1]))
def test_each_increment_is_the_raw_step_times_scale(meter: Meter, scale: float) -> None:
    # Any scale, uint64 steps up to 2**63: the raw difference is exact, scaled once at the end.
    tracker = TotalizerTracker(spec=TotalizerSpec(rollover_at=meter.rollover_at),
                               data_type=meter.data_type, scale=scale)
    for counted, step, event in _run(meter, tracker):
        assert step == CounterStep(increment=counted * scale, event=event)
