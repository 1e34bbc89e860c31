"""What a totalizer counted between two readings, across rollovers and resets. Pure logic.

A totalizer (a cumulative flow or energy meter) only ever counts up, so a drop in its raw count
means one of two things: it passed its maximum and started again from zero (a rollover: what it
counted is the distance to the maximum plus the new count), or it was reset or replaced (what it
counted before the reset is lost; only the new count is known). Telling them apart takes the
meter's span and, when configured, the most it can count per second: a rollover whose implied
increase no meter could have counted in the time between readings is a reset.

Raw counts of integer types are Python ints and are handled with exact integer arithmetic; the
scale is applied only to the final difference, so a uint64 near 2**64 loses nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from collector.config import DataType, TotalizerSpec
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["CounterStep", "TotalizerTracker", "rollover_span"]

# Where unsigned meters wrap when the configuration does not say: the register width.
_DEFAULT_SPANS: dict[DataType, int] = {
    DataType.UINT16: 2**16,
    DataType.UINT32: 2**32,
    DataType.UINT64: 2**64,
}
_INTEGER_TYPES = frozenset({
    DataType.BOOL, DataType.BITS,
    DataType.INT16, DataType.UINT16, DataType.INT32, DataType.UINT32, DataType.INT64, DataType.UINT64,
})
_EVENT_NAMES: dict[int, str] = {
    pb.COUNTER_EVENT_UNSPECIFIED: "UNSPECIFIED",
    pb.COUNTER_EVENT_FIRST: "FIRST",
    pb.COUNTER_EVENT_CONTINUED: "CONTINUED",
    pb.COUNTER_EVENT_ROLLOVER: "ROLLOVER",
    pb.COUNTER_EVENT_RESET: "RESET",
}


@dataclass(frozen=True, slots=True)
class CounterStep:
    """How one totalizer reading relates to the previous one.

    `increment` is in engineering units (raw difference times scale; the offset cancels out) and
    is None only for `COUNTER_EVENT_FIRST`. After a reset it is what the meter counted from zero.
    """

    increment: float | None
    event: int  # a pb.COUNTER_EVENT_* value

    def __repr__(self) -> str:
        name = _EVENT_NAMES.get(self.event, str(self.event))
        return f"CounterStep(increment={self.increment!r}, event={name})"


def rollover_span(spec: TotalizerSpec, data_type: DataType) -> int | float | None:
    """The raw count at which the meter starts again from zero, or None when it has none.

    `spec.rollover_at` when set, else 2**16 / 2**32 / 2**64 for uint16 / uint32 / uint64. A
    whole-number `rollover_at` of an integer type is returned as an int, so that the wrap is
    computed exactly (1e8 as a float is exact, but `raw + 1e8` would not be beyond 2**53).
    """
    if spec.rollover_at is not None:
        if data_type in _INTEGER_TYPES and spec.rollover_at.is_integer():
            return int(spec.rollover_at)
        return spec.rollover_at
    return _DEFAULT_SPANS.get(data_type)


class TotalizerTracker:
    """Turns the successive raw counts of one totalizer point into `CounterStep`s.

    Holds the previous raw count and its time; one tracker per point and per run of the
    collector. `forget()` after anything that breaks the sequence (the device was replaced, its
    readings were lost for longer than a rollover could be told apart) makes the next reading
    FIRST again, rather than guessing across the gap.
    """

    def __init__(self, *, spec: TotalizerSpec, data_type: DataType, scale: float) -> None:
        self._spec = spec
        self._data_type = data_type
        self._scale = scale
        self._span = rollover_span(spec, data_type)
        self._previous_raw: int | float | None = None
        self._previous_time_unix_ms: int | None = None

    def __repr__(self) -> str:
        return (
            f"TotalizerTracker(data_type={self._data_type.value}, scale={self._scale!r}, "
            f"span={self._span!r}, max_increase_per_s={self._spec.max_increase_per_s!r}, "
            f"previous_raw={self._previous_raw!r}, previous_time_unix_ms={self._previous_time_unix_ms!r})"
        )

    def observe(self, raw: int | float, time_unix_ms: int) -> CounterStep:
        """Classify `raw` (the meter's count before scale and offset) against the previous one.

        The tracker keeps `raw` and `time_unix_ms` as the new previous reading whatever the event.
        A NaN or infinite count raises ValueError and leaves the tracker as it was: it cannot be
        ordered against the previous count, and keeping it would poison the next step too.
        """
        if isinstance(raw, float) and not math.isfinite(raw):
            raise ValueError(f"a totalizer count must be finite, got {raw!r}")
        previous_raw, previous_time_unix_ms = self._previous_raw, self._previous_time_unix_ms
        self._previous_raw, self._previous_time_unix_ms = raw, time_unix_ms
        if previous_raw is None or previous_time_unix_ms is None:
            return CounterStep(increment=None, event=pb.COUNTER_EVENT_FIRST)
        if raw >= previous_raw:
            return CounterStep(increment=(raw - previous_raw) * self._scale, event=pb.COUNTER_EVENT_CONTINUED)
        if self._span is not None:
            # Counted up to the span, wrapped to zero, then counted up to `raw`.
            wrapped = raw + self._span - previous_raw
            elapsed_s = (time_unix_ms - previous_time_unix_ms) / 1000
            if self._is_rollover(wrapped, self._span, elapsed_s):
                return CounterStep(increment=wrapped * self._scale, event=pb.COUNTER_EVENT_ROLLOVER)
        # The meter started again from zero somewhere below `raw`; what it counted between the
        # previous reading and the reset is unknown, so only the count since zero is reported.
        return CounterStep(increment=raw * self._scale, event=pb.COUNTER_EVENT_RESET)

    def forget(self) -> None:
        """Drop the previous reading: the next `observe()` is FIRST again."""
        self._previous_raw = None
        self._previous_time_unix_ms = None

    def _is_rollover(self, wrapped: int | float, span: int | float, elapsed_s: float) -> bool:
        """Whether a drop that would mean counting `wrapped` raw units is a plausible rollover."""
        if wrapped <= 0:
            # Only when the previous count was at or above the span: outside the meter's range,
            # so it cannot have wrapped from there.
            return False
        max_increase_per_s = self._spec.max_increase_per_s
        if max_increase_per_s is not None and elapsed_s > 0:
            return wrapped * abs(self._scale) <= max_increase_per_s * elapsed_s
        # No rate, or no time between the readings to apply it to (a clock step back): a meter
        # read often enough to be useful moves less than half its range between readings, while
        # a reset usually leaves it near zero, far more than half a range "ahead". Compared in
        # raw units, which is the same rule as in engineering units but exact for integers.
        return 2 * wrapped <= span
