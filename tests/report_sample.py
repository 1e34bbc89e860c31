"""A hand-built report document (stackline.report/v1) for the renderer tests.

One local day, 2026-11-28 in Asia/Shanghai, of a coal-fired unit:

- 03:00 is a calibration hour of the gas analyser: so2, nox and co2 are flagged C with 20 valid
  minutes, invalid, and substituted by the mean of the valid hours before and after; particulate
  (its own instrument) and the flow stay N.
- 09:00 and 10:00 are a communication gap (B) of the whole CEMS: no valid minute, no O2 (so no
  corrected concentration), every concentration and the flow substituted from 08:00 and 11:00.
- 14:00 is an O2 excursion (air in-leakage): O2 12.8 %, measured concentrations diluted and the
  flow up by the same factor, so the O2-corrected values and the masses stay ordinary.
- The fuel meter answers every hour.

The day and the totals are computed from the hours as the producer computes them (mass = mean x
flow x 1e-6 kg, substituted hours included; daily mean over valid hours only; ETS CO2 = FC x NCV x
CC x OF x 44/12), with the producer's rounding, so the figures agree with each other.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["POLLUTANTS", "sample_report"]

POLLUTANTS = ("so2", "nox", "particulate", "co2")
ZONE = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 28, tzinfo=ZONE)
REFERENCE_O2_PERCENT = 6.0
RULE_SHORT_GAP = "hj75-2017/12.short-gap-mean"
CALIBRATION_HOUR = 3
GAP_HOURS = (9, 10)
EXCURSION_HOUR = 14
BLOCKS_PER_HOUR = 3600
FIRST_SEQUENCE = 101

# the unit's load over the day, as a share of full load: low at night, two daytime peaks
LOAD = (0.72, 0.70, 0.68, 0.68, 0.69, 0.72, 0.80, 0.88, 0.94, 0.96, 0.97, 0.98,
        0.95, 0.93, 0.94, 0.96, 0.98, 1.00, 0.99, 0.97, 0.92, 0.86, 0.80, 0.75)
# hourly means at the stack (standard, dry, not O2-corrected), mg/m3, before any dilution
SO2 = (31.2, 30.8, 30.1, 29.9, 30.6, 31.9, 33.8, 35.2, 36.0, 36.4, 36.9, 37.3,
       36.1, 35.6, 35.9, 36.6, 37.8, 38.4, 38.1, 37.2, 35.7, 34.1, 32.9, 32.0)
NOX = (44.1, 43.5, 42.8, 42.6, 43.2, 44.9, 47.7, 49.8, 51.2, 51.9, 52.4, 52.8,
       51.5, 50.7, 51.0, 52.1, 53.6, 54.9, 54.2, 52.9, 50.6, 48.3, 46.4, 45.0)
PARTICULATE = (4.1, 4.0, 3.9, 3.9, 4.0, 4.2, 4.6, 4.9, 5.1, 5.2, 5.3, 5.3,
               5.2, 5.0, 5.1, 5.2, 5.4, 5.6, 5.5, 5.3, 5.0, 4.8, 4.5, 4.3)
O2_PERCENT = (7.3, 7.4, 7.5, 7.5, 7.4, 7.2, 6.9, 6.6, 6.4, 6.3, 6.3, 6.2,
              6.4, 6.5, 12.8, 6.3, 6.2, 6.1, 6.1, 6.3, 6.6, 6.9, 7.1, 7.2)
FULL_LOAD_FLOW_M3_PER_H = 468_000.0
FULL_LOAD_FUEL_T = 46.0
# CO2 from a bituminous coal at the measured O2: about 12.6 % by volume dry at 6.2 % O2
CO2_AT_ZERO_O2_MG_PER_M3 = 350_000.0
NCV_GJ_PER_T = 20.934
DEFAULT_CC_TC_PER_GJ = 0.03085
OXIDATION_RATE = 0.99


def sample_report() -> dict[str, Any]:
    """A fresh copy of the sample document (callers may change it)."""
    hours = [_hour(index) for index in range(24)]
    day = _day(hours)
    return {
        "format": "stackline.report/v1",
        "plant": {"id": "demo-plant", "name": "Demo Thermal Power Plant <Unit 1 & 2>",
                  "timezone": "Asia/Shanghai"},
        "unit": "unit-1",
        "period": {"from": "2026-11-28", "to": "2026-11-29"},
        "methodology": {"name": "cn-mee-2022", "digest": _digest("methodology cn-mee-2022")},
        "gateway": "gateway-1",
        "pollutants": list(POLLUTANTS),
        "units": {"concentration": "mg/m3", "mass": "kg", "flow": "m3/h", "co2_mass": "t", "fuel": "t"},
        "hours": hours,
        "days": [day],
        "months": [_month(day)],
        "years": [_year(day, _totals(hours, day))],
        "totals": _totals(hours, day),
    }


def _month(day: dict[str, Any]) -> dict[str, Any]:
    """November 2026 with one day in the report: too few valid days for a monthly mean."""
    return {"month": "2026-11", "mean_mg_per_m3": dict.fromkeys(POLLUTANTS),
            "flag": dict.fromkeys(POLLUTANTS, "B"), "valid_hours": day["valid_hours"],
            "substituted_hours": day["substituted_hours"], "mass_kg": day["mass_kg"],
            "fuel_t": day["fuel_t"], "co2_cems_t": day["co2_cems_t"], "provenance": day["provenance"]}


def _year(day: dict[str, Any], totals: dict[str, Any]) -> dict[str, Any]:
    return {"year": "2026", "mass_kg": day["mass_kg"], "fuel_t": day["fuel_t"],
            "co2_cems_t": day["co2_cems_t"], "co2_fuel_t": totals["co2"]["fuel_t"],
            "provenance": day["provenance"]}


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _provenance(first_hour: int, last_hour: int) -> dict[str, Any]:
    first = FIRST_SEQUENCE + first_hour * BLOCKS_PER_HOUR
    last = FIRST_SEQUENCE + (last_hour + 1) * BLOCKS_PER_HOUR - 1
    return {"collector": "demo-plant-c1", "sequences": [first, last], "blocks": last - first + 1,
            "digest": _digest(f"blocks {first}..{last}")}


def _measured(index: int) -> dict[str, float]:
    """What the instruments saw in an hour (before validity): the excursion dilutes the gas."""
    dilution = (21 - O2_PERCENT[index]) / (21 - 6.5) if index == EXCURSION_HOUR else 1.0
    return {
        "so2": round(SO2[index] * dilution, 1),
        "nox": round(NOX[index] * dilution, 1),
        "particulate": round(PARTICULATE[index] * dilution, 1),
        "co2": round(CO2_AT_ZERO_O2_MG_PER_M3 * (21 - O2_PERCENT[index]) / 21 / 100) * 100.0,
        "flow": round(FULL_LOAD_FLOW_M3_PER_H * LOAD[index] / dilution, 1),
    }


def _corrected(value: float, o2_percent: float | None) -> float | None:
    if o2_percent is None:
        return None
    return round(value * (21 - REFERENCE_O2_PERCENT) / (21 - o2_percent), 1)


def _mean_of_neighbours(before: float, after: float) -> float:
    return round((before + after) / 2, 1)


def _hour(index: int) -> dict[str, Any]:
    start = DAY + timedelta(hours=index)
    measured = _measured(index)
    in_gap = index in GAP_HOURS
    o2: float | None = None if in_gap else O2_PERCENT[index]
    flow = measured["flow"]
    flow_flag, flow_substituted = "N", None
    if in_gap:
        flow = _mean_of_neighbours(_measured(GAP_HOURS[0] - 1)["flow"], _measured(GAP_HOURS[-1] + 1)["flow"])
        flow_flag, flow_substituted = "B", RULE_SHORT_GAP
    pollutants: dict[str, Any] = {}
    for name in POLLUTANTS:
        value = measured[name]
        flag, valid_minutes, rule, basis = "N", 60, None, None
        if index == 16:
            valid_minutes = 58  # two minutes short of samples during a soot-blowing: still N
        calibrated = index == CALIBRATION_HOUR and name != "particulate"
        if calibrated or in_gap:
            first, last = (index - 1, index + 1) if calibrated else (GAP_HOURS[0] - 1, GAP_HOURS[-1] + 1)
            before, after = _measured(first)[name], _measured(last)[name]
            value = _mean_of_neighbours(before, after)
            flag, valid_minutes = ("C", 20) if calibrated else ("B", 0)
            rule = RULE_SHORT_GAP
            basis = (f"mean of the valid hours {first:02d}:00 ({before}) and {last:02d}:00 ({after}); "
                     f"quarter capture rate 0.97")
        pollutants[name] = {
            "mean_mg_per_m3": value,
            # CO2 is not corrected to reference O2 (an emission standard's correction, not the ETS's)
            "corrected_mg_per_m3": None if name == "co2" else _corrected(value, o2),
            "flag": flag,
            "valid_minutes": valid_minutes,
            "substituted": rule,
            "substitution_basis": basis,
            "mass_kg": round(value * flow * 1e-6, 3),
        }
    return {
        "start": start.isoformat(),
        "start_unix_ms": int(start.timestamp() * 1000),
        "flow_std_dry_m3_per_h": flow,
        "flow_flag": flow_flag,
        "flow_substituted": flow_substituted,
        "o2_percent": o2,
        "fuel_t": round(FULL_LOAD_FUEL_T * LOAD[index], 2),
        "pollutants": pollutants,
        "provenance": _provenance(index, index),
    }


def _day(hours: list[dict[str, Any]]) -> dict[str, Any]:
    valid: dict[str, int] = {}
    substituted: dict[str, int] = {}
    means: dict[str, float | None] = {}
    masses: dict[str, float] = {}
    for name in POLLUTANTS:
        values = [hour["pollutants"][name] for hour in hours]
        valid_values = [value["mean_mg_per_m3"] for value in values if value["substituted"] is None]
        valid[name] = len(valid_values)
        substituted[name] = sum(value["substituted"] is not None for value in values)
        enough = len(valid_values) >= 20  # a daily mean needs 20 valid hours
        means[name] = round(math.fsum(valid_values) / len(valid_values), 1) if enough else None
        masses[name] = round(math.fsum(value["mass_kg"] for value in values), 3)
    return {
        "date": "2026-11-28",
        "valid_hours": valid,
        "substituted_hours": substituted,
        "mean_mg_per_m3": means,
        # at least 75 % of the 24 hours are N for every pollutant
        "flag": dict.fromkeys(POLLUTANTS, "N"),
        "mass_kg": masses,
        "fuel_t": round(math.fsum(hour["fuel_t"] for hour in hours), 2),
        "co2_cems_t": round(masses["co2"] / 1000, 1),
        "provenance": _provenance(0, len(hours) - 1),
    }


def _totals(hours: list[dict[str, Any]], day: dict[str, Any]) -> dict[str, Any]:
    consumption_t = day["fuel_t"]
    carbon_content = round(NCV_GJ_PER_T * DEFAULT_CC_TC_PER_GJ, 6)
    co2_fuel_t = round(consumption_t * carbon_content * OXIDATION_RATE * 44 / 12, 1)
    co2_cems_t = day["co2_cems_t"]
    return {
        "mass_kg": dict(day["mass_kg"]),
        "valid_hours": dict(day["valid_hours"]),
        "invalid_hours": {name: len(hours) - day["valid_hours"][name] for name in POLLUTANTS},
        "substituted_hours": dict(day["substituted_hours"]),
        "fuel_t": consumption_t,
        "co2": {
            "cems_t": co2_cems_t,
            "fuel_t": co2_fuel_t,
            "difference_t": round(co2_cems_t - co2_fuel_t, 1),
            "difference_percent": round((co2_cems_t - co2_fuel_t) / co2_fuel_t * 100, 2),
            "fuel_months": [{
                "month": "2026-11",
                "consumption_t": consumption_t,
                "ncv_gj_per_t": NCV_GJ_PER_T,
                "carbon_content_tc_per_t": carbon_content,
                "carbon_content_measured": False,
                "oxidation_rate": OXIDATION_RATE,
                "co2_t": co2_fuel_t,
            }],
        },
        "provenance": _provenance(0, len(hours) - 1),
    }
