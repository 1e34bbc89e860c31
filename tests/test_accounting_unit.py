"""A generated day of the demo plant's unit with a known answer: a calibration hour, a two-hour
communication gap of the CEMS, an O2 excursion; the hourly table and the daily totals are stated
here from the formulas, independently of the accounting code."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from collector.config import load_plant
from collector.plan import compile_plan
from gateway.accounting.methodology import load_methodology
from gateway.accounting.render import render_json
from gateway.accounting.unit import BlockInput, UnitConfig, account_unit, unit_config_from_document
from proto.stackline.v1 import stackline_pb2 as pb
from tests.conftest import DEMO_PLANT

TZ = ZoneInfo("Asia/Shanghai")
DAY = date(2026, 11, 10)
VALUES = {"so2": 30.0, "nox": 50.0, "particulate": 5.0, "co2": 200_000.0, "o2": 6.0, "flow": 100.0,
          "temperature": 120.0, "static_pressure": 0.0, "moisture": 10.0}
CALIBRATION_HOUR, GAP_HOURS, O2_HOUR = 3, (10, 11), 15
# 21 of 24 hours valid: a capture rate of 87.5 %, below the 90 % tier, so every invalid hour takes
# the maximum of the valid hours before it (HJ 75-2017 section 12, as REGULATION.md states it)
SUBSTITUTION = "hj75-2017/12/max-2160h"
FEED_PER_READING_T = 0.01  # each feeder's totalizer counts 10 kg every 5 s
# standard dry flow: 100 m3/s x 3600, at 120 degC, 101,325 Pa (static 0), 10 % moisture
Q_SN = 100.0 * 3600 * 273 / (273 + 120.0) * 101_325 / 101_325 * (1 - 0.10)


def _hour_start_ms(hour: int) -> int:
    return int(datetime(DAY.year, DAY.month, DAY.day, hour, tzinfo=TZ).timestamp() * 1000)


def day_of_blocks() -> tuple[list[BlockInput], dict[str, Any]]:
    plan = compile_plan(load_plant(DEMO_PLANT))
    document = json.loads(plan.config_document)
    blocks = []
    sequence = 1
    for minute in range(24 * 60):
        hour = minute // 60
        start = _hour_start_ms(0) + minute * 60_000
        block = pb.Block(collector_id="demo-plant-c1", sequence=sequence + 1,
                         window_start_unix_ms=start, window_end_unix_ms=start + 60_000,
                         config_digest=plan.config_digest, kind=pb.BLOCK_KIND_READINGS)
        for second in range(0, 60, 5):
            t = start + second * 1000
            for name, nominal in VALUES.items():
                value, quality = nominal, pb.QUALITY_NORMAL
                if name == "o2" and hour == O2_HOUR:
                    value = 12.0
                if hour == CALIBRATION_HOUR:
                    quality = pb.QUALITY_CALIBRATION
                if hour in GAP_HOURS:
                    value, quality = math.nan, pb.QUALITY_COMM_LOSS
                block.readings.add(point_id=f"demo-plant/cems-1/{name}", time_unix_ms=t, value=value,
                                   quality=quality)
            for feeder in ("feeder-1a", "feeder-1b"):
                block.readings.add(point_id=f"demo-plant/{feeder}/total", time_unix_ms=t, value=1000.0,
                                   quality=pb.QUALITY_NORMAL, increment=FEED_PER_READING_T,
                                   counter_event=pb.COUNTER_EVENT_CONTINUED)
        payload = block.SerializeToString()
        blocks.append(BlockInput("demo-plant-c1", sequence + 1, hashlib.sha256(payload).digest(), block))
        sequence += 1
    return blocks, document


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    blocks, document = day_of_blocks()
    unit = unit_config_from_document(document, "unit-1")
    return account_unit(unit=unit, blocks=blocks, start=DAY, end=date(2026, 11, 11),
                        methodology=load_methodology("cn-mee-2022"), gateway_id="test-gateway")


def test_the_hourly_table_is_the_known_answer(report: dict[str, Any]) -> None:
    hours = report["hours"]
    assert isinstance(hours, list) and len(hours) == 24
    assert hours[0]["start"] == "2026-11-10T00:00:00+08:00"
    for hour, row in enumerate(hours):
        so2 = row["pollutants"]["so2"]
        assert so2["mean_mg_per_m3"] == pytest.approx(30.0, rel=1e-12), hour
        assert so2["mass_kg"] == pytest.approx(30.0 * Q_SN * 1e-6, rel=1e-12), hour
        assert row["flow_std_dry_m3_per_h"] == pytest.approx(Q_SN, rel=1e-12), hour
        assert row["fuel_t"] == pytest.approx(2 * 720 * FEED_PER_READING_T, rel=1e-12), hour
        if hour == CALIBRATION_HOUR:
            assert (so2["flag"], so2["valid_minutes"]) == ("C", 0)
            assert so2["substituted"] == SUBSTITUTION
            assert row["flow_substituted"] == SUBSTITUTION
            assert so2["corrected_mg_per_m3"] is None  # O2 was calibrating too
        elif hour in GAP_HOURS:
            assert (so2["flag"], so2["valid_minutes"]) == ("B", 0)
            assert so2["substituted"] == SUBSTITUTION
            assert row["o2_percent"] is None
        else:
            assert (so2["flag"], so2["valid_minutes"], so2["substituted"]) == ("N", 60, None)
            expected_corrected = 30.0 * (21 - 6) / (21 - 12) if hour == O2_HOUR else 30.0
            assert so2["corrected_mg_per_m3"] == pytest.approx(expected_corrected, rel=1e-12), hour
        assert row["provenance"]["blocks"] == 60 and row["provenance"]["collector"] == "demo-plant-c1"


def test_the_daily_totals_are_the_known_answer(report: dict[str, Any]) -> None:
    (day,) = report["days"]
    assert day["date"] == "2026-11-10"
    assert day["valid_hours"]["so2"] == 21 and day["substituted_hours"]["so2"] == 3
    assert day["mean_mg_per_m3"]["so2"] == pytest.approx(30.0, rel=1e-12)
    assert day["flag"]["so2"] == "N"  # 21 of 24 hours normal: at least 75 %
    for name, concentration in (("so2", 30.0), ("nox", 50.0), ("particulate", 5.0), ("co2", 200_000.0)):
        assert day["mass_kg"][name] == pytest.approx(24 * concentration * Q_SN * 1e-6, rel=1e-12), name
    assert day["fuel_t"] == pytest.approx(24 * 14.4, rel=1e-12)
    assert day["co2_cems_t"] == pytest.approx(24 * 200_000.0 * Q_SN * 1e-9, rel=1e-12)
    assert day["provenance"]["blocks"] == 24 * 60


def test_co2_both_ways_and_their_difference(report: dict[str, Any]) -> None:
    co2 = report["totals"]["co2"]
    # November's lab values of the demo plant: measured carbon 0.5702 tC/t; oxidation 0.99
    fuel_t = 24 * 14.4 * 0.5702 * 0.99 * 44 / 12
    cems_t = 24 * 200_000.0 * Q_SN * 1e-9
    assert co2["fuel_t"] == pytest.approx(fuel_t, rel=1e-12)
    assert co2["cems_t"] == pytest.approx(cems_t, rel=1e-12)
    assert co2["difference_t"] == pytest.approx(cems_t - fuel_t, rel=1e-9)
    assert co2["difference_percent"] == pytest.approx((cems_t - fuel_t) / fuel_t * 100, rel=1e-9)
    (month,) = co2["fuel_months"]
    assert (month["month"], month["carbon_content_measured"]) == ("2026-11", True)


def test_the_report_is_deterministic() -> None:
    blocks, document = day_of_blocks()
    unit = unit_config_from_document(document, "unit-1")
    methodology = load_methodology("cn-mee-2022")
    first = render_json(account_unit(unit=unit, blocks=blocks, start=DAY, end=date(2026, 11, 11),
                                     methodology=methodology, gateway_id="g"))
    again = render_json(account_unit(unit=unit, blocks=list(reversed(blocks)), start=DAY,
                                     end=date(2026, 11, 11), methodology=methodology, gateway_id="g"))
    assert first == again  # byte for byte, whatever order the blocks come in


def test_the_month_and_the_year_of_the_day(report: dict[str, Any]) -> None:
    (month,) = report["months"]
    # one valid day of November in the report: no monthly mean (25 valid days needed), flag B
    assert (month["month"], month["mean_mg_per_m3"]["so2"], month["flag"]["so2"]) == ("2026-11", None, "B")
    (day,) = report["days"]
    assert month["mass_kg"] == day["mass_kg"] and month["fuel_t"] == day["fuel_t"]
    (year,) = report["years"]
    assert year["year"] == "2026"
    assert year["co2_cems_t"] == pytest.approx(day["co2_cems_t"], rel=1e-12)
    assert year["co2_fuel_t"] == report["totals"]["co2"]["fuel_t"]


def test_a_month_with_25_valid_days_has_a_monthly_mean() -> None:
    """Twenty-five days of hourly values make November valid; the monthly mean is over the days."""
    blocks, document = day_of_blocks()
    unit = unit_config_from_document(document, "unit-1")
    shifted: list[BlockInput] = []
    for offset in range(-9, 16):  # the generated day (November 10), repeated on November 1..25
        for entry in blocks:
            block = pb.Block()
            block.CopyFrom(entry.block)
            block.sequence = entry.sequence + (offset + 9) * 10_000
            # SO2 alone keeps the test quick; the month's mean is what it is about
            kept = [r for r in block.readings if r.point_id == "demo-plant/cems-1/so2"]
            del block.readings[:]
            block.readings.extend(kept)
            for reading in block.readings:
                reading.time_unix_ms += offset * 86_400_000
            shifted.append(BlockInput(entry.collector_id, block.sequence, entry.block_hash, block))
    november = account_unit(unit=unit, blocks=shifted, start=date(2026, 11, 1), end=date(2026, 11, 26),
                            methodology=load_methodology("cn-mee-2022"), gateway_id="g")
    (month,) = november["months"]
    assert month["month"] == "2026-11" and len(november["days"]) == 25
    assert month["mean_mg_per_m3"]["so2"] == pytest.approx(30.0, rel=1e-12)
    assert month["flag"]["so2"] == "N"  # 25 of November's 30 days N: at least 75 %
    # one day fewer and the month is invalid: 24 < 25 valid days
    short = account_unit(unit=unit, blocks=[b for b in shifted if b.sequence < 24 * 10_000],
                         start=date(2026, 11, 1), end=date(2026, 11, 26),
                         methodology=load_methodology("cn-mee-2022"), gateway_id="g")
    assert short["months"][0]["mean_mg_per_m3"]["so2"] is None


def test_a_unit_measuring_ppm_and_velocity_is_converted() -> None:
    """SO2 reported in ppm (converted with M = 64 g/mol) and velocity instead of flow (times the
    duct's cross-section): one hour, every 5 s."""
    unit = UnitConfig(
        plant_id="p", plant_name="", timezone="UTC", unit_id="u", emission_standard="coal_boiler",
        barometric_pressure_kpa=101.325, fuel="coal", methodology="cn-mee-2022",
        points={"p/a/so2": "a21026", "p/a/v": "a01011", "p/a/t": "a01012", "p/a/ps": "a01013",
                "p/a/h2o": "a01014", "p/a/o2": "a19001"},
        point_units={"p/a/so2": "ppm", "p/a/v": "m/s", "p/a/t": "degC", "p/a/ps": "kPa",
                     "p/a/h2o": "%", "p/a/o2": "%"},
        duct_area_m2=12.5)
    values = {"p/a/so2": 10.0, "p/a/v": 10.0, "p/a/t": 120.0, "p/a/ps": 0.0, "p/a/h2o": 10.0,
              "p/a/o2": 6.0}
    start = int(datetime(2026, 11, 10, tzinfo=ZoneInfo("UTC")).timestamp() * 1000)
    block = pb.Block(collector_id="c", sequence=1, kind=pb.BLOCK_KIND_READINGS)
    for step in range(720):
        for point_id, value in values.items():
            block.readings.add(point_id=point_id, time_unix_ms=start + step * 5000, value=value,
                               quality=pb.QUALITY_NORMAL)
    report = account_unit(unit=unit, blocks=[BlockInput("c", 1, b"\x01" * 32, block)],
                          start=date(2026, 11, 10), end=date(2026, 11, 11),
                          methodology=load_methodology("cn-mee-2022"), gateway_id="g")
    first = report["hours"][0]
    flow = 10.0 * 12.5 * 3600 * 273 / (273 + 120.0) * (1 - 0.10)
    assert first["flow_std_dry_m3_per_h"] == pytest.approx(flow, rel=1e-12)
    so2 = first["pollutants"]["so2"]
    assert so2["mean_mg_per_m3"] == pytest.approx(10.0 * 64 / 22.4, rel=1e-12)  # 28.571 mg/m3
    assert so2["mass_kg"] == pytest.approx(10.0 * 64 / 22.4 * flow * 1e-6, rel=1e-12)
