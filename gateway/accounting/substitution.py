"""HJ 75-2017 section 12: substitution of invalid and missing hourly values, each marked with its rule.

Pure and deterministic (invariant 6): no I/O, no clock, no global state; the same input gives the
same output, and sums are `math.fsum`. Every number of the rules (capture-rate tiers, the short-gap
length, the lookbacks) is a parameter of an effective-dated `Methodology`, read on the plant-local
date of each substituted hour (REGULATION.md section 2; `substitution.*` in cn-mee-2022).

The input is one pollutant of one unit: a chronological, contiguous sequence of `HourSlot`s, one per
hour, missing hours included (absence is data, invariant 5). A **gap** is a maximal run of
consecutive hours without a value. A run that mixes causes (maintenance, then lost data) is one gap:
its length counts every hour in it, since the monitor had no valid data for that long. Each hour of
the gap is then substituted by the table of its own cause, chosen by the quarter's valid-data
capture rate `rate` (HJ 75's alpha, computed by the caller; see the function `capture_rate`):

Maintenance, calibration and missing data (`cause` "maintenance" or "missing"; HJ 75 flags M, C, B):

- rate >= `capture_rate_high` and gap <= `short_gap_hours`: the mean of the valid hour before and the
  valid hour after the gap (`RULE_MEAN_OF_NEIGHBOURS`). The neighbours are taken from the slots only,
  since `history` has no times: a caller that wants the hour before the first slot as a neighbour
  passes it as a slot. With only one neighbour in the slots (a gap at the start, or one that runs to
  the end of the data, whose after-neighbour has not arrived yet), that neighbour's value
  (`RULE_BEFORE_NEIGHBOUR_ONLY` / `RULE_AFTER_NEIGHBOUR_ONLY`); with neither, the long-gap lookback
  maximum below.
- rate >= `capture_rate_high` and gap > `short_gap_hours`: the maximum of the previous
  `lookback_hours_long_gap` valid hours (rule "hj75-2017/12/max-720h" with the bundled values).
- `capture_rate_low` <= rate < `capture_rate_high`: the maximum of the previous
  `lookback_hours_low_capture` valid hours, whatever the gap's length ("hj75-2017/12/max-2160h").

Out of control (`cause` "out_of_control"; flag D): the maximum of the previous
`out_of_control_lookbacks[i]` valid hours, i = 0 for rate >= high and gap <= short, 1 for
rate >= high and gap > short, 2 for low <= rate < high ("hj75-2017/12/out-of-control-max-180h",
"...-720h", "...-2160h"). HJ 75 counts these hours back from the last passing calibration; its time
is not known here, so the start of the gap stands for it: the lookback base is the valid hours
before the gap, as for the other rules, and the basis text says so.

Below `capture_rate_low`, HJ 75 gives no rule: the unit failed the capture requirement. The hour is
still substituted, by the lowest tier's lookback (the most conservative figure the rules have), but
its rule id says `below-minimum-capture` ("hj75-2017/12/below-minimum-capture-max-2160h") so
that a report shows the failure instead of a figure that looks compliant.

"The previous N valid hours" are the last N of `history` (valid hourly values before the first slot,
oldest first) followed by the valid slot values before the gap. Substituted values never count as
valid hours. With fewer than N available, the maximum of those there are (the basis text says so);
with none, the hour keeps `value=None` and the rule `RULE_NO_BASIS`, `substituted=False`.

A lookback rule's id names its number of hours, from the methodology, so one methodology gives one
stable set of ids. Results at the end of the data are provisional: when later hours arrive, the gap
may get its after-neighbour or grow past `short_gap_hours`, so the caller recomputes it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.accounting.aggregate import FLAG_PRIORITY
from gateway.accounting.methodology import Methodology
from gateway.errors import GatewayError

__all__ = [
    "CAUSES",
    "CAUSE_MAINTENANCE",
    "CAUSE_MISSING",
    "CAUSE_OUT_OF_CONTROL",
    "HOUR_MS",
    "RULE_AFTER_NEIGHBOUR_ONLY",
    "RULE_BEFORE_NEIGHBOUR_ONLY",
    "RULE_MEAN_OF_NEIGHBOURS",
    "RULE_NO_BASIS",
    "RULE_PREFIX",
    "HourSlot",
    "SubstitutedHour",
    "SubstitutionError",
    "SubstitutionTiers",
    "capture_rate",
    "lookback_rule",
    "substitute",
]

HOUR_MS = 3_600_000

CAUSE_MAINTENANCE = "maintenance"
"""Planned maintenance or calibration (flags M, C)."""
CAUSE_OUT_OF_CONTROL = "out_of_control"
"""Instrument out of control (flag D)."""
CAUSE_MISSING = "missing"
"""No valid data for another reason: communication lost (flag B) or nothing received at all."""
CAUSES: tuple[str, ...] = (CAUSE_MAINTENANCE, CAUSE_OUT_OF_CONTROL, CAUSE_MISSING)
"""The causes of an hour without a value (an hour with a value needs none: "")."""

RULE_PREFIX = "hj75-2017/12/"
RULE_MEAN_OF_NEIGHBOURS = RULE_PREFIX + "mean-of-neighbours"
RULE_BEFORE_NEIGHBOUR_ONLY = RULE_PREFIX + "before-neighbour-only"
RULE_AFTER_NEIGHBOUR_ONLY = RULE_PREFIX + "after-neighbour-only"
RULE_NO_BASIS = "no-basis"
"""Not an HJ 75 rule: there was nothing to substitute from, and the hour stays without a value."""

_PARAMETER = "substitution."
_NORMAL = "N"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class SubstitutionError(GatewayError, ValueError):
    """Input substitution cannot give figures for: slots out of order, not whole contiguous hours,
    an unknown cause or a gap without one, a non-finite value, a capture rate outside 0..1, or
    methodology tiers that contradict each other."""


@dataclass(frozen=True, slots=True)
class HourSlot:
    """One hour [start, end) in UTC ms of one pollutant: its valid value, or None with the cause.

    `flag` is the hour's HJ 212 letter (carried to the output); `cause` is one of `CAUSES` when
    `value` is None. An hour with a value needs no cause: its cause is ignored (it may be "", or one
    of `CAUSES` from a caller that derives the cause from the flag for every hour).
    """

    start_unix_ms: int
    end_unix_ms: int
    value: float | None
    flag: str
    cause: str


@dataclass(frozen=True, slots=True)
class SubstitutedHour:
    """One hour after substitution: the valid value, or the substituted one with its rule and basis.

    Valid hours have `substituted=False`, `rule=None` and `basis=""`. A substituted hour has the rule
    id that produced it and a human-readable basis ("mean of 08:00 (31.2) and 12:00 (33.0)"). An
    hour with nothing to substitute from has `value=None`, `substituted=False`, `rule=RULE_NO_BASIS`.
    """

    start_unix_ms: int
    end_unix_ms: int
    value: float | None
    flag: str
    substituted: bool
    rule: str | None
    basis: str


@dataclass(frozen=True, slots=True)
class SubstitutionTiers:
    """The `substitution.*` parameters of a methodology in force on one day."""

    capture_rate_high: float
    capture_rate_low: float
    short_gap_hours: int
    lookback_hours_long_gap: int
    lookback_hours_low_capture: int
    out_of_control_lookbacks: tuple[int, int, int]

    @classmethod
    def from_methodology(cls, methodology: Methodology, on: date) -> SubstitutionTiers:
        """The tiers in force on the plant-local day `on`; SubstitutionError if they contradict."""
        lookbacks = methodology.integers(_PARAMETER + "out_of_control_lookbacks", on)
        where = f"methodology {methodology.name} on {on.isoformat()}"
        if len(lookbacks) != 3:
            raise SubstitutionError(f"{where}: {_PARAMETER}out_of_control_lookbacks needs 3 values "
                                    f"(short gap, long gap, low capture), not {list(lookbacks)}")
        tiers = cls(
            capture_rate_high=methodology.number(_PARAMETER + "capture_rate_high", on),
            capture_rate_low=methodology.number(_PARAMETER + "capture_rate_low", on),
            short_gap_hours=methodology.integer(_PARAMETER + "short_gap_hours", on),
            lookback_hours_long_gap=methodology.integer(_PARAMETER + "lookback_hours_long_gap", on),
            lookback_hours_low_capture=methodology.integer(_PARAMETER + "lookback_hours_low_capture", on),
            out_of_control_lookbacks=(lookbacks[0], lookbacks[1], lookbacks[2]),
        )
        if not 0.0 < tiers.capture_rate_low <= tiers.capture_rate_high <= 1.0:
            raise SubstitutionError(f"{where}: capture rates must satisfy 0 < low <= high <= 1, not "
                                    f"low {tiers.capture_rate_low} and high {tiers.capture_rate_high}")
        if tiers.short_gap_hours < 0:
            raise SubstitutionError(f"{where}: {_PARAMETER}short_gap_hours is negative "
                                    f"({tiers.short_gap_hours})")
        hours = (tiers.lookback_hours_long_gap, tiers.lookback_hours_low_capture, *lookbacks)
        if min(hours) < 1:
            raise SubstitutionError(f"{where}: every lookback must be at least 1 hour, not {list(hours)}")
        return tiers


def lookback_rule(hours: int, *, out_of_control: bool = False, below_minimum_capture: bool = False) -> str:
    """The id of a lookback-maximum rule: "hj75-2017/12/max-720h", "...out-of-control-max-180h",
    "...below-minimum-capture-max-2160h", "...below-minimum-capture-out-of-control-max-2160h"."""
    kind = f"max-{hours}h"
    if out_of_control:
        kind = "out-of-control-" + kind
    if below_minimum_capture:
        kind = "below-minimum-capture-" + kind
    return RULE_PREFIX + kind


def capture_rate(slots: Sequence[HourSlot]) -> float:
    """Valid-data capture rate of `slots`: hours with a value / hours in the slots (0..1).

    The caller decides which hours count (HJ 75's alpha is over a quarter); SubstitutionError if empty.
    """
    if not slots:
        raise SubstitutionError("no hours to compute a capture rate over")
    return sum(1 for slot in slots if slot.value is not None) / len(slots)


@dataclass(frozen=True, slots=True)
class _Gap:
    length: int
    before: HourSlot | None
    after: HourSlot | None
    pool_end: int  # the valid hours before the gap are the pool's first `pool_end`, oldest first


def substitute(
    slots: Sequence[HourSlot],
    *,
    history: Sequence[float],
    capture_rate: float,
    methodology: Methodology,
    tz: ZoneInfo,
) -> list[SubstitutedHour]:
    """Every slot once, in order: valid hours unchanged, the others substituted by HJ 75-2017 section 12.

    `history` holds the valid hourly values before the first slot, oldest first (at least as many as
    the largest lookback); `capture_rate` is the quarter's valid-data capture rate (0..1). Parameters
    are read from `methodology` on each hour's local date in `tz`. See the module docstring.
    """
    _check_slots(slots)
    for index, value in enumerate(history):
        if not math.isfinite(value):
            raise SubstitutionError(f"history value {index} is {value}, not a finite number")
    if not 0.0 <= capture_rate <= 1.0:  # also refuses NaN
        raise SubstitutionError(f"capture rate must be within 0..1, not {capture_rate}")
    pool: list[float] = list(history)  # the valid hours so far; only ever appended to
    substitution = _Substitution(capture_rate, methodology, tz, pool)
    result: list[SubstitutedHour] = []
    index = 0
    while index < len(slots):
        slot = slots[index]
        if slot.value is not None:
            result.append(SubstitutedHour(slot.start_unix_ms, slot.end_unix_ms, slot.value, slot.flag,
                                          substituted=False, rule=None, basis=""))
            pool.append(slot.value)
            index += 1
            continue
        end = index
        while end < len(slots) and slots[end].value is None:
            end += 1
        gap = _Gap(
            length=end - index,
            before=slots[index - 1] if index > 0 else None,
            after=slots[end] if end < len(slots) else None,
            pool_end=len(pool),
        )
        result.extend(substitution.hour(slots[position], gap) for position in range(index, end))
        index = end
    return result


def _check_slots(slots: Sequence[HourSlot]) -> None:
    for position, slot in enumerate(slots):
        where = f"slot {position} ({slot.start_unix_ms} ms)"
        if slot.end_unix_ms - slot.start_unix_ms != HOUR_MS:
            raise SubstitutionError(f"{where} is not one hour: it ends at {slot.end_unix_ms} ms")
        if position and slot.start_unix_ms != slots[position - 1].end_unix_ms:
            raise SubstitutionError(
                f"{where} does not start where slot {position - 1} ends ({slots[position - 1].end_unix_ms} "
                "ms): pass every hour, missing ones as slots with cause 'missing'")
        if slot.flag != _NORMAL and slot.flag not in FLAG_PRIORITY:
            raise SubstitutionError(f"{where} has an unknown flag letter {slot.flag!r}")
        if slot.value is None:
            if slot.cause not in CAUSES:
                raise SubstitutionError(f"{where} has no value and cause {slot.cause!r}, not one of "
                                        f"{', '.join(CAUSES)}")
        elif not math.isfinite(slot.value):
            raise SubstitutionError(f"{where} has the value {slot.value}, not a finite number")
        elif slot.cause and slot.cause not in CAUSES:
            raise SubstitutionError(f"{where} has an unknown cause {slot.cause!r}")


class _Substitution:
    """The rules for one call: the capture rate, and the tiers of each local day, read once."""

    def __init__(self, rate: float, methodology: Methodology, tz: ZoneInfo, pool: list[float]) -> None:
        self.rate = rate
        self.methodology = methodology
        self.tz = tz
        self.pool = pool
        self.tiers_by_day: dict[date, SubstitutionTiers] = {}
        # (pool_end, hours) -> (maximum, hours it was taken over): every hour of a long gap asks the same
        self.maxima: dict[tuple[int, int], tuple[float, int]] = {}

    def hour(self, slot: HourSlot, gap: _Gap) -> SubstitutedHour:
        day = _local(slot.start_unix_ms, self.tz).date()
        tiers = self.tiers_by_day.get(day)
        if tiers is None:
            tiers = self.tiers_by_day[day] = SubstitutionTiers.from_methodology(self.methodology, day)
        below_minimum = self.rate < tiers.capture_rate_low
        if self.rate >= tiers.capture_rate_high:
            tier = 0 if gap.length <= tiers.short_gap_hours else 1
        else:
            tier = 2
        if slot.cause == CAUSE_OUT_OF_CONTROL:
            return self._lookback_max(slot, gap, tiers.out_of_control_lookbacks[tier], tiers,
                                      out_of_control=True, below_minimum=below_minimum)
        if tier == 0:
            return self._neighbours(slot, gap, tiers)
        lookback = tiers.lookback_hours_long_gap if tier == 1 else tiers.lookback_hours_low_capture
        return self._lookback_max(slot, gap, lookback, tiers, out_of_control=False,
                                  below_minimum=below_minimum)

    def _neighbours(self, slot: HourSlot, gap: _Gap, tiers: SubstitutionTiers) -> SubstitutedHour:
        before, after = gap.before, gap.after
        if before is not None and after is not None and before.value is not None and after.value is not None:
            value = math.fsum((before.value, after.value)) / 2
            basis = f"mean of {self._label(before, slot)} and {self._label(after, slot)}"
            return _substituted(slot, value, RULE_MEAN_OF_NEIGHBOURS, basis)
        if before is not None and before.value is not None:
            basis = (f"{self._label(before, slot)}, the valid hour before the gap; the hour after it is "
                     "not in the data yet")
            return _substituted(slot, before.value, RULE_BEFORE_NEIGHBOUR_ONLY, basis)
        if after is not None and after.value is not None:
            basis = (f"{self._label(after, slot)}, the valid hour after the gap; the hour before it is "
                     "not in the data")
            return _substituted(slot, after.value, RULE_AFTER_NEIGHBOUR_ONLY, basis)
        return self._lookback_max(slot, gap, tiers.lookback_hours_long_gap, tiers, out_of_control=False,
                                  below_minimum=False,
                                  note="no valid hour before or after the gap in the data; ")

    def _lookback_max(self, slot: HourSlot, gap: _Gap, hours: int, tiers: SubstitutionTiers, *,
                      out_of_control: bool, below_minimum: bool, note: str = "") -> SubstitutedHour:
        if below_minimum:
            note = (f"capture rate {self.rate:.1%} is below the minimum {tiers.capture_rate_low:.1%}; "
                    + note)
        if out_of_control:
            note += "the last passing calibration is not known, so the lookback ends at the gap's start; "
        if gap.pool_end == 0:
            return SubstitutedHour(slot.start_unix_ms, slot.end_unix_ms, None, slot.flag,
                                   substituted=False, rule=RULE_NO_BASIS,
                                   basis=f"{note}no valid hour before the gap to take a maximum from")
        key = (gap.pool_end, hours)
        if key not in self.maxima:
            window = self.pool[max(0, gap.pool_end - hours):gap.pool_end]
            self.maxima[key] = (max(window), len(window))
        value, count = self.maxima[key]
        rule = lookback_rule(hours, out_of_control=out_of_control, below_minimum_capture=below_minimum)
        if count == hours:
            basis = f"{note}maximum of the previous {hours} valid hours ({value!r})"
        else:
            basis = (f"{note}maximum of the {count} valid hours available before the gap, of the "
                     f"{hours} the rule asks for ({value!r})")
        return _substituted(slot, value, rule, basis)

    def _label(self, neighbour: HourSlot, slot: HourSlot) -> str:
        # the neighbour's local start time, with its date when that is not the substituted hour's
        start = _local(neighbour.start_unix_ms, self.tz)
        same_day = start.date() == _local(slot.start_unix_ms, self.tz).date()
        when = start.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M")
        return f"{when} ({neighbour.value!r})"


def _substituted(slot: HourSlot, value: float, rule: str, basis: str) -> SubstitutedHour:
    return SubstitutedHour(slot.start_unix_ms, slot.end_unix_ms, value, slot.flag,
                           substituted=True, rule=rule, basis=basis)


def _local(unix_ms: int, tz: ZoneInfo) -> datetime:
    return (_EPOCH + timedelta(milliseconds=unix_ms)).astimezone(tz)
