"""HJ 75-2017 section 12 substitution (gateway/accounting/substitution.py): each tier with hand-computed
values, the boundaries of gap length and capture rate, gaps at the edges of the data, rule ids and
basis texts, parameters taken from the methodology in force on each hour's date, and refusals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.methodology import Methodology, load_methodology, parse_methodology
from gateway.accounting.substitution import (
    CAUSES,
    HOUR_MS,
    RULE_AFTER_NEIGHBOUR_ONLY,
    RULE_BEFORE_NEIGHBOUR_ONLY,
    RULE_MEAN_OF_NEIGHBOURS,
    RULE_NO_BASIS,
    HourSlot,
    SubstitutedHour,
    SubstitutionError,
    SubstitutionTiers,
    capture_rate,
    lookback_rule,
    substitute,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
BUNDLED = Path(__file__).resolve().parent.parent / "gateway/accounting/methodology/cn-mee-2022.yaml"
CN_MEE_2022 = load_methodology("cn-mee-2022")
# an invalid hour by its flag letter: the cause the caller derives from it
CAUSE_OF_FLAG = {"M": "maintenance", "C": "maintenance", "D": "out_of_control", "B": "missing"}
Token = float | str


def local_ms(year: int, month: int, day: int, hour: int = 0) -> int:
    return int(datetime(year, month, day, hour, tzinfo=SHANGHAI).timestamp() * 1000)


MIDNIGHT = local_ms(2024, 3, 1)  # 2024-02-29 16:00 UTC


def slots_of(tokens: Sequence[Token], *, start_ms: int = MIDNIGHT) -> list[HourSlot]:
    """Contiguous hours from `start_ms`: a number is a valid hour (N), a letter an invalid one."""
    slots = []
    for index, token in enumerate(tokens):
        start = start_ms + index * HOUR_MS
        if isinstance(token, str):
            slots.append(HourSlot(start, start + HOUR_MS, None, token, CAUSE_OF_FLAG[token]))
        else:
            slots.append(HourSlot(start, start + HOUR_MS, token, "N", ""))
    return slots


def history_around(lookback: int, *, inside: float, outside: float, length: int = 2500) -> list[float]:
    """History of 10.0s for a gap after exactly one valid slot: `inside` is the oldest value within the
    last `lookback` valid hours (that slot counts as one), `outside` the value just before it."""
    history = [10.0] * length
    history[-lookback] = outside
    history[-(lookback - 1)] = inside
    return history


def run(tokens: Sequence[Token], *, rate: float, history: Sequence[float] = (),
        methodology: Methodology = CN_MEE_2022, start_ms: int = MIDNIGHT) -> list[SubstitutedHour]:
    return substitute(slots_of(tokens, start_ms=start_ms), history=history, capture_rate=rate,
                      methodology=methodology, tz=SHANGHAI)


def edited(change: Callable[[dict[str, Any]], None]) -> Methodology:
    """The bundled methodology with `change` applied to a copy of its YAML text."""
    document: dict[str, Any] = yaml.safe_load(BUNDLED.read_text(encoding="utf-8"))
    change(document)
    return parse_methodology(yaml.safe_dump(document, sort_keys=False, allow_unicode=True),
                             source="edited copy of cn-mee-2022")


def set_value(name: str, value: object) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        (version,) = document["parameters"][f"substitution.{name}"]
        version["value"] = value
    return change


def gap_hours(result: Sequence[SubstitutedHour]) -> list[SubstitutedHour]:
    return [hour for hour in result if hour.flag != "N"]


# --- the tiers of maintenance and missing hours -------------------------------------------------------


def test_a_3_hour_maintenance_gap_at_95_percent_takes_the_mean_of_its_neighbours() -> None:
    result = run([31.25, "M", "C", "M", 33.0], rate=0.95, start_ms=local_ms(2024, 3, 1, 8))
    gap = gap_hours(result)
    assert [hour.value for hour in gap] == [32.125, 32.125, 32.125]
    assert {hour.rule for hour in gap} == {"hj75-2017/12/mean-of-neighbours"}
    assert {hour.basis for hour in gap} == {"mean of 08:00 (31.25) and 12:00 (33.0)"}
    assert all(hour.substituted for hour in gap)
    assert [hour.flag for hour in gap] == ["M", "C", "M"]  # the flag says why; `substituted` what was done


def test_a_30_hour_gap_at_95_percent_takes_the_maximum_of_the_previous_720_valid_hours() -> None:
    history = history_around(720, inside=77.0, outside=500.0)
    gap = gap_hours(run([20.0, *["B"] * 30, 40.0], rate=0.95, history=history))
    assert len(gap) == 30
    assert {hour.value for hour in gap} == {77.0}
    assert {hour.rule for hour in gap} == {"hj75-2017/12/max-720h"}
    assert {hour.basis for hour in gap} == {"maximum of the previous 720 valid hours (77.0)"}


def test_at_80_percent_even_a_short_gap_takes_the_maximum_of_the_previous_2160_valid_hours() -> None:
    history = history_around(2160, inside=88.0, outside=500.0)
    gap = gap_hours(run([20.0, "M", "M", "M", 40.0], rate=0.80, history=history))
    assert {hour.value for hour in gap} == {88.0}
    assert {hour.rule for hour in gap} == {"hj75-2017/12/max-2160h"}


def test_below_75_percent_the_2160_hour_maximum_is_marked_below_minimum_capture() -> None:
    history = history_around(2160, inside=88.0, outside=500.0)
    gap = gap_hours(run([20.0, "M", "M", "M", 40.0], rate=0.60, history=history))
    assert {hour.value for hour in gap} == {88.0}
    assert {hour.rule for hour in gap} == {"hj75-2017/12/below-minimum-capture-max-2160h"}
    assert {hour.basis for hour in gap} == {
        "capture rate 60.0% is below the minimum 75.0%; maximum of the previous 2160 valid hours (88.0)"}


@pytest.mark.parametrize(("hours", "rule"), [
    (24, "hj75-2017/12/mean-of-neighbours"),
    (25, "hj75-2017/12/max-720h"),
])
def test_a_gap_of_exactly_24_hours_is_short_and_25_is_long(hours: int, rule: str) -> None:
    gap = gap_hours(run([20.0, *["M"] * hours, 40.0], rate=0.95, history=[99.0] * 800))
    assert {hour.rule for hour in gap} == {rule}
    assert {hour.value for hour in gap} == {30.0 if hours == 24 else 99.0}


@pytest.mark.parametrize(("rate", "rule"), [
    (0.90, "hj75-2017/12/mean-of-neighbours"),
    (0.8999, "hj75-2017/12/max-2160h"),
    (0.75, "hj75-2017/12/max-2160h"),
    (0.7499, "hj75-2017/12/below-minimum-capture-max-2160h"),
    (0.0, "hj75-2017/12/below-minimum-capture-max-2160h"),
    (1.0, "hj75-2017/12/mean-of-neighbours"),
])
def test_capture_rate_boundaries_are_inclusive_at_the_lower_end_of_each_tier(rate: float, rule: str) -> None:
    gap = gap_hours(run([20.0, "M", 40.0], rate=rate, history=[99.0] * 2200))
    assert [hour.rule for hour in gap] == [rule]


# --- out of control ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "hours", "lookback", "rule"), [
    (0.95, 3, 180, "hj75-2017/12/out-of-control-max-180h"),
    (0.95, 24, 180, "hj75-2017/12/out-of-control-max-180h"),
    (0.95, 25, 720, "hj75-2017/12/out-of-control-max-720h"),
    (0.80, 3, 2160, "hj75-2017/12/out-of-control-max-2160h"),
    (0.60, 3, 2160, "hj75-2017/12/below-minimum-capture-out-of-control-max-2160h"),
])
def test_out_of_control_hours_take_the_maximum_of_180_720_or_2160_valid_hours_before_the_gap(
        rate: float, hours: int, lookback: int, rule: str) -> None:
    history = history_around(lookback, inside=66.0, outside=500.0)
    gap = gap_hours(run([20.0, *["D"] * hours, 40.0], rate=rate, history=history))
    assert {hour.value for hour in gap} == {66.0}
    assert {hour.rule for hour in gap} == {rule}
    (basis,) = {hour.basis for hour in gap}
    assert basis.endswith("the last passing calibration is not known, so the lookback ends at the gap's "
                          f"start; maximum of the previous {lookback} valid hours (66.0)")


def test_a_gap_that_mixes_causes_is_one_gap_and_each_hour_follows_its_own_cause() -> None:
    history = history_around(180, inside=66.0, outside=500.0)
    result = run([20.0, "D", "D", "M", "B", 40.0], rate=0.95, history=history)
    assert [(hour.rule, hour.value) for hour in gap_hours(result)] == [
        ("hj75-2017/12/out-of-control-max-180h", 66.0),
        ("hj75-2017/12/out-of-control-max-180h", 66.0),
        ("hj75-2017/12/mean-of-neighbours", 30.0),
        ("hj75-2017/12/mean-of-neighbours", 30.0),
    ]
    # 12 maintenance + 13 lost hours are a 25-hour gap, not two short ones
    long_mix = run([20.0, *["M"] * 12, *["B"] * 13, 40.0], rate=0.95, history=[99.0] * 800)
    assert {hour.rule for hour in gap_hours(long_mix)} == {"hj75-2017/12/max-720h"}


# --- the edges of the data ------------------------------------------------------------------------------


def test_a_gap_at_the_start_takes_the_hour_after_it() -> None:
    gap = gap_hours(run(["M", "M", 40.0], rate=0.95, history=[99.0] * 800))
    assert [(hour.value, hour.rule) for hour in gap] == [(40.0, RULE_AFTER_NEIGHBOUR_ONLY)] * 2
    assert gap[0].basis == "02:00 (40.0), the valid hour after the gap; the hour before it is not in the data"


def test_a_gap_at_the_end_takes_the_hour_before_it() -> None:
    gap = gap_hours(run([30.0, "B", "B"], rate=0.95, history=[99.0] * 800))
    assert [(hour.value, hour.rule) for hour in gap] == [(30.0, RULE_BEFORE_NEIGHBOUR_ONLY)] * 2
    assert gap[0].basis == ("00:00 (30.0), the valid hour before the gap; the hour after it is not in the "
                            "data yet")


def test_a_neighbour_on_another_day_is_named_with_its_date() -> None:
    result = run([30.0, "M", "M", 40.0], rate=0.95, start_ms=local_ms(2024, 3, 1, 22))
    assert [hour.basis for hour in gap_hours(result)] == [
        "mean of 22:00 (30.0) and 2024-03-02 01:00 (40.0)",  # the hour at 23:00 on 03-01
        "mean of 2024-03-01 22:00 (30.0) and 01:00 (40.0)",  # the hour at 00:00 on 03-02
    ]


def test_without_any_valid_neighbour_a_short_gap_takes_the_720_hour_maximum() -> None:
    # no valid slot before the gap: the last 720 valid hours are all history, 55.0 the oldest of them
    gap = gap_hours(run(["M", "M"], rate=0.95, history=history_around(721, inside=55.0, outside=500.0)))
    assert {(hour.value, hour.rule) for hour in gap} == {(55.0, "hj75-2017/12/max-720h")}
    assert {hour.basis for hour in gap} == {
        "no valid hour before or after the gap in the data; maximum of the previous 720 valid hours (55.0)"}


def test_with_less_history_than_the_lookback_the_maximum_of_what_there_is_says_so() -> None:
    gap = gap_hours(run([20.0, *["B"] * 30], rate=0.95, history=[12.0, 25.0, 3.0, 8.0]))
    assert {hour.value for hour in gap} == {25.0}
    assert {hour.basis for hour in gap} == {
        "maximum of the 5 valid hours available before the gap, of the 720 the rule asks for (25.0)"}


@pytest.mark.parametrize("flag", ["M", "D", "B"])
def test_with_nothing_to_substitute_from_the_hour_stays_without_a_value(flag: str) -> None:
    (hour,) = run([flag], rate=0.95)
    assert hour.value is None
    assert hour.substituted is False
    assert hour.rule == RULE_NO_BASIS == "no-basis"
    assert "no valid hour before the gap" in hour.basis


def test_substituted_hours_do_not_count_as_valid_hours_of_a_later_lookback() -> None:
    # 90.0 is the 720th valid hour before the second gap; had the first gap's 3 substituted hours
    # counted, it would have fallen out of the window (and the maximum would be 40.0)
    history = [10.0] * 1000
    history[-718] = 90.0
    result = run([20.0, "B", "B", "B", 40.0, *["B"] * 30], rate=0.95, history=history)
    assert {hour.value for hour in result[1:4]} == {30.0}
    assert {(hour.rule, hour.value) for hour in result[5:]} == {("hj75-2017/12/max-720h", 90.0)}


# --- pass-through, determinism, rule ids ---------------------------------------------------------------


def test_valid_hours_pass_through_unchanged_and_every_hour_appears_once_in_order() -> None:
    slots = slots_of([5.5, 6.0, "M", 7.25, "D", "B", 8.0])
    result = substitute(slots, history=[1.0] * 200, capture_rate=0.95, methodology=CN_MEE_2022, tz=SHANGHAI)
    assert [(hour.start_unix_ms, hour.end_unix_ms, hour.flag) for hour in result] == [
        (slot.start_unix_ms, slot.end_unix_ms, slot.flag) for slot in slots]
    valid = [hour for hour in result if hour.flag == "N"]
    assert valid == [SubstitutedHour(slot.start_unix_ms, slot.end_unix_ms, slot.value, "N", substituted=False,
                                     rule=None, basis="") for slot in slots if slot.value is not None]
    assert substitute([], history=[], capture_rate=0.5, methodology=CN_MEE_2022, tz=SHANGHAI) == []


def test_the_cause_of_a_valid_hour_is_ignored() -> None:
    # a caller may derive the cause from the flag for every hour, valid ones included
    slots = slots_of([20.0, "M", 40.0])
    tagged = [HourSlot(s.start_unix_ms, s.end_unix_ms, s.value, s.flag, s.cause or "missing") for s in slots]
    assert substitute(tagged, history=[], capture_rate=0.95, methodology=CN_MEE_2022, tz=SHANGHAI) == \
        substitute(slots, history=[], capture_rate=0.95, methodology=CN_MEE_2022, tz=SHANGHAI)


def test_the_same_input_gives_the_same_output() -> None:
    tokens: list[Token] = [0.1, "M", 0.2, *["B"] * 40, 0.3, "D", "D", 0.7]
    history = [0.1 * index for index in range(2200)]
    assert run(tokens, rate=0.93, history=history) == run(tokens, rate=0.93, history=tuple(history))


def test_rule_ids_are_stable_strings() -> None:
    assert RULE_MEAN_OF_NEIGHBOURS == "hj75-2017/12/mean-of-neighbours"
    assert RULE_BEFORE_NEIGHBOUR_ONLY == "hj75-2017/12/before-neighbour-only"
    assert RULE_AFTER_NEIGHBOUR_ONLY == "hj75-2017/12/after-neighbour-only"
    assert lookback_rule(720) == "hj75-2017/12/max-720h"
    assert lookback_rule(180, out_of_control=True) == "hj75-2017/12/out-of-control-max-180h"
    assert lookback_rule(2160, below_minimum_capture=True) == "hj75-2017/12/below-minimum-capture-max-2160h"
    assert CAUSES == ("maintenance", "out_of_control", "missing")


# --- parameters come from the methodology ----------------------------------------------------------------


def test_the_bundled_tiers() -> None:
    assert SubstitutionTiers.from_methodology(CN_MEE_2022, date(2024, 3, 1)) == SubstitutionTiers(
        capture_rate_high=0.90, capture_rate_low=0.75, short_gap_hours=24, lookback_hours_long_gap=720,
        lookback_hours_low_capture=2160, out_of_control_lookbacks=(180, 720, 2160))


@pytest.mark.parametrize(("change", "tokens", "rate", "expected"), [
    # a 3-hour gap is long when short gaps end at 2 hours
    (set_value("short_gap_hours", 2), [20.0, "M", "M", "M", 40.0], 0.95, ("hj75-2017/12/max-720h", 90.0)),
    # a 100-hour lookback misses the 90.0 that lies 150 valid hours back
    (set_value("lookback_hours_long_gap", 100), [20.0, *["M"] * 30, 40.0], 0.95,
     ("hj75-2017/12/max-100h", 20.0)),
    # 95 % is no longer the high tier
    (set_value("capture_rate_high", 0.96), [20.0, "M", 40.0], 0.95, ("hj75-2017/12/max-2160h", 90.0)),
    # 80 % is below a minimum of 85 %
    (set_value("capture_rate_low", 0.85), [20.0, "M", 40.0], 0.80,
     ("hj75-2017/12/below-minimum-capture-max-2160h", 90.0)),
    (set_value("lookback_hours_low_capture", 100), [20.0, "M", 40.0], 0.80, ("hj75-2017/12/max-100h", 20.0)),
    (set_value("out_of_control_lookbacks", [100, 720, 2160]), [20.0, "D", 40.0], 0.95,
     ("hj75-2017/12/out-of-control-max-100h", 20.0)),
])
def test_other_tier_values_give_other_results(change: Callable[[dict[str, Any]], None],
                                             tokens: list[Token], rate: float,
                                             expected: tuple[str, float]) -> None:
    history = [10.0] * 2200
    history[-150] = 90.0
    bundled = gap_hours(run(tokens, rate=rate, history=history))
    modified = gap_hours(run(tokens, rate=rate, history=history, methodology=edited(change)))
    assert {(hour.rule, hour.value) for hour in modified} == {expected}
    assert {(hour.rule, hour.value) for hour in bundled} != {expected}


def test_each_hour_uses_the_parameters_in_force_on_its_own_local_date() -> None:
    def shorter_from_march_2(document: dict[str, Any]) -> None:
        versions = document["parameters"]["substitution.short_gap_hours"]
        versions[0]["effective_to"] = date(2024, 3, 1)
        versions.append({**versions[0], "value": 2, "effective_from": date(2024, 3, 2), "effective_to": None})

    methodology = edited(shorter_from_march_2)
    # a 3-hour gap from 22:00 local on 03-01 to 01:00 on 03-02 (14:00 to 17:00 UTC on 03-01)
    result = run([20.0, "M", "M", "M", 40.0], rate=0.95, history=[90.0] * 800,
                 methodology=methodology, start_ms=local_ms(2024, 3, 1, 21))
    assert [(hour.rule, hour.value) for hour in gap_hours(result)] == [
        ("hj75-2017/12/mean-of-neighbours", 30.0),
        ("hj75-2017/12/mean-of-neighbours", 30.0),
        ("hj75-2017/12/max-720h", 90.0),
    ]


@pytest.mark.parametrize(("change", "message"), [
    (set_value("capture_rate_low", 0.95), "0 < low <= high <= 1"),
    (set_value("out_of_control_lookbacks", [180, 720]), "needs 3 values"),
    (set_value("lookback_hours_long_gap", 0), "at least 1 hour"),
    (set_value("short_gap_hours", -1), "negative"),
])
def test_contradictory_tiers_are_refused_naming_the_methodology_and_day(
        change: Callable[[dict[str, Any]], None], message: str) -> None:
    with pytest.raises(SubstitutionError, match=message) as caught:
        run([20.0, "M", 40.0], rate=0.95, methodology=edited(change))
    assert "methodology cn-mee-2022 on 2024-03-01" in str(caught.value)


# --- capture rate and refusals ---------------------------------------------------------------------------


def test_capture_rate_is_valid_hours_over_hours() -> None:
    assert capture_rate(slots_of([1.0, "M", 2.0, "B"])) == 0.5
    assert capture_rate(slots_of([1.0] * 9 + ["D"])) == 0.9
    with pytest.raises(SubstitutionError, match="no hours"):
        capture_rate([])


def _slot(start: int, value: float | None = 1.0, flag: str = "N", cause: str = "") -> HourSlot:
    return HourSlot(start, start + HOUR_MS, value, flag, cause)


@pytest.mark.parametrize(("slots", "message"), [
    ([_slot(0), _slot(2 * HOUR_MS)], "does not start where slot 0 ends"),
    ([_slot(HOUR_MS), _slot(0)], "does not start where slot 0 ends"),
    ([HourSlot(0, HOUR_MS - 1, 1.0, "N", "")], "is not one hour"),
    ([_slot(0, None, "M", "repair")], "cause 'repair'"),
    ([_slot(0, None, "M", "")], "no value and cause ''"),
    ([_slot(0, 1.0, "N", "maintenace")], "unknown cause 'maintenace'"),
    ([_slot(0, math.nan)], "not a finite number"),
    ([_slot(0, None, "X", "missing")], "unknown flag letter 'X'"),
])
def test_malformed_slots_are_refused(slots: list[HourSlot], message: str) -> None:
    with pytest.raises(SubstitutionError, match=message):
        substitute(slots, history=[], capture_rate=0.95, methodology=CN_MEE_2022, tz=SHANGHAI)


@pytest.mark.parametrize(("history", "rate", "message"), [
    ([1.0, math.inf], 0.95, "history value 1 is inf"),
    ([], 1.01, "within 0..1"),
    ([], -0.1, "within 0..1"),
    ([], math.nan, "within 0..1"),
])
def test_bad_history_or_capture_rate_is_refused(history: list[float], rate: float, message: str) -> None:
    with pytest.raises(SubstitutionError, match=message):
        run([1.0], rate=rate, history=history)


# --- properties ------------------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    tokens=st.lists(st.one_of(st.floats(0.0, 1000.0), st.sampled_from(["M", "C", "D", "B"])), max_size=60),
    history=st.lists(st.floats(0.0, 1000.0), max_size=30),
    rate=st.floats(0.0, 1.0),
)
def test_every_hour_once_and_substitutes_within_the_range_of_the_valid_data(
        tokens: list[Token], history: list[float], rate: float) -> None:
    result = run(tokens, rate=rate, history=history)
    assert result == run(tokens, rate=rate, history=history)
    assert len(result) == len(tokens)
    known = [*history, *(token for token in tokens if not isinstance(token, str))]
    for token, hour in zip(tokens, result, strict=True):
        if not isinstance(token, str):
            assert (hour.value, hour.substituted, hour.rule) == (token, False, None)
        elif hour.value is None:
            assert (hour.substituted, hour.rule) == (False, RULE_NO_BASIS)
        else:
            assert hour.substituted
            assert hour.rule is not None
            assert min(known) <= hour.value <= max(known)
