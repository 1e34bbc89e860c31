"""One emission unit's accounting over a period: from verified blocks to the report document.

Pure (invariant 6): the inputs are the blocks (with their hashes and sequence numbers), the
configuration document that gives the readings their meaning, and the methodology; the output
is a plain document (`stackline.report/v1`, see docs/accounting.md) that `render.py` prints as
JSON, CSV or HTML. Nothing here reads a clock or a file, so the gateway, `stackline report` and a
verifier's recomputation give the same figures to the last digit.

Per local hour of the plant's time zone: HJ 75 hourly means of each quantity (`aggregate.py`);
the standard dry flow from the actual flow, temperature, static pressure, moisture and the site's
barometric pressure; invalid or missing hours substituted (`substitution.py`); mass = mean
concentration x standard dry flow; the concentration at the emission standard's reference O2;
fuel burnt from the totalizers' increments. Per day and in total: sums and daily means; CO2 both
by CEMS (hourly CO2 mass) and by the ETS fuel calculation (monthly fuel, lab NCV and carbon
content, oxidation rate), and their difference. Every figure carries its provenance: the
collector, the sequence range of the blocks its readings came from, and a SHA-256 digest over
those blocks' hashes in sequence order.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from gateway.accounting.aggregate import (
    PeriodValue,
    Sample,
    Thresholds,
    daily_values,
    hourly_values,
    minute_values,
    monthly_values,
)
from gateway.accounting.conversions import (
    MOLAR_MASS_G_PER_MOL,
    actual_flow_m3_per_h,
    correct_to_reference_o2,
    hourly_emission_kg,
    ppm_to_mg_per_m3,
    standard_dry_flow_m3_per_h,
)
from gateway.accounting.ets import MonthlyFuelRecord, monthly_fuel_co2
from gateway.accounting.methodology import Methodology
from gateway.accounting.substitution import HourSlot, SubstitutedHour, capture_rate, substitute
from gateway.errors import GatewayError
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = [
    "FLUE_QUANTITIES",
    "POLLUTANTS",
    "AccountingError",
    "BlockInput",
    "UnitConfig",
    "account_unit",
    "unit_config_from_document",
]

REPORT_FORMAT = "stackline.report/v1"
# pollutant name → HJ 212-2017 factor code; the order is the report's column order
POLLUTANTS: dict[str, str] = {"so2": "a21026", "nox": "a21002", "particulate": "a34013", "co2": "a05001"}
# the flue-gas quantities the standard dry flow and the O2 correction need
FLUE_QUANTITIES: dict[str, str] = {
    "flow_m3_per_s": "a00000", "temperature_c": "a01012", "static_pressure_kpa": "a01013",
    "moisture_percent": "a01014", "o2_percent": "a19001", "velocity_m_per_s": "a01011",
}
# the molar mass a pollutant reported in ppm converts with (NOx is reported as NO2)
PPM_MOLAR_MASS_G_PER_MOL: dict[str, float] = {
    "a21026": MOLAR_MASS_G_PER_MOL["SO2"], "a21002": MOLAR_MASS_G_PER_MOL["NO2"],
    "a05001": MOLAR_MASS_G_PER_MOL["CO2"], "a21005": MOLAR_MASS_G_PER_MOL["CO"],
}
HOUR_MS = 3_600_000


class AccountingError(GatewayError):
    """The accounting cannot be done as asked (no such unit, no configuration, ...)."""


@dataclass(frozen=True, slots=True)
class BlockInput:
    """A verified readings block: its collector, sequence, hash (SHA-256 of the payload) and
    parsed contents."""

    collector_id: str
    sequence: int
    block_hash: bytes
    block: pb.Block


@dataclass(frozen=True, slots=True)
class UnitConfig:
    """What the accounting knows about one unit, from the plant's signed configuration."""

    plant_id: str
    plant_name: str
    timezone: str
    unit_id: str
    emission_standard: str
    barometric_pressure_kpa: float
    fuel: str
    methodology: str
    points: Mapping[str, str]  # point id → quantity, for the unit's points
    lab_values: Mapping[tuple[str, str], tuple[float, float | None]] = field(default_factory=dict)
    point_units: Mapping[str, str] = field(default_factory=dict)  # point id → engineering unit
    duct_area_m2: float | None = None
    # (YYYY-MM, fuel) → (NCV GJ/t, measured carbon content tC/t or None)


def unit_config_from_document(document: Mapping[str, Any], unit_id: str) -> UnitConfig:
    """The unit's accounting configuration from a configuration document (collector/plan.py's
    `_config_document`, as recorded in the chain); AccountingError naming what is missing."""
    plant = document.get("plant") or {}
    accounting = document.get("accounting")
    if not isinstance(accounting, Mapping):
        raise AccountingError(f"plant {plant.get('id')!r}: its configuration has no accounting section; "
                              "add one (see docs/accounting.md) and reload the collector")
    unit = next((u for u in accounting.get("units") or [] if u.get("id") == unit_id), None)
    if unit is None:
        known = ", ".join(u.get("id", "?") for u in accounting.get("units") or []) or "none"
        raise AccountingError(
            f"plant {plant.get('id')!r} has no accounting unit {unit_id!r} (units: {known})")
    points: dict[str, str] = {}
    point_units: dict[str, str] = {}
    for device in document.get("devices") or []:
        if device.get("emission_unit") != unit_id:
            continue
        for point in (device.get("profile") or {}).get("points") or []:
            point_id = f"{plant.get('id')}/{device.get('id')}/{point.get('name')}"
            points[point_id] = str(point.get("quantity"))
            point_units[point_id] = str(point.get("unit"))
    lab = {(str(v["month"]), str(v.get("fuel", "coal"))): (float(v["ncv_gj_per_t"]),
           None if v.get("carbon_content_tc_per_t") is None else float(v["carbon_content_tc_per_t"]))
           for v in accounting.get("lab_values") or []}
    return UnitConfig(
        plant_id=str(plant.get("id")), plant_name=str(plant.get("name") or ""),
        timezone=str(plant.get("timezone") or "UTC"), unit_id=unit_id,
        emission_standard=str(unit.get("emission_standard", "coal_boiler")),
        barometric_pressure_kpa=float(unit.get("barometric_pressure_kpa", 101.325)),
        fuel=str(unit.get("fuel", "coal")), methodology=str(accounting.get("methodology", "cn-mee-2022")),
        points=points, lab_values=lab, point_units=point_units,
        duct_area_m2=None if unit.get("duct_area_m2") is None else float(unit["duct_area_m2"]),
    )


@dataclass(slots=True)
class _Trail:
    """The blocks behind a figure, by (collector, sequence)."""

    blocks: dict[tuple[str, int], bytes] = field(default_factory=dict)

    def add(self, collector_id: str, sequence: int, block_hash: bytes) -> None:
        self.blocks[(collector_id, sequence)] = block_hash

    def merge(self, other: _Trail) -> None:
        self.blocks.update(other.blocks)

    def document(self) -> dict[str, Any] | None:
        """Collector, sequence range, count and SHA-256 over the block hashes in (collector,
        sequence) order; with blocks of several collectors, also each collector's own part."""
        if not self.blocks:
            return None
        ordered = sorted(self.blocks)
        collectors = sorted({collector for collector, _ in ordered})
        digest = hashlib.sha256(b"".join(self.blocks[key] for key in ordered)).hexdigest()
        sequences = [sequence for _, sequence in ordered]
        document: dict[str, Any] = {"collector": ",".join(collectors),
                                    "sequences": [min(sequences), max(sequences)],
                                    "blocks": len(ordered), "digest": digest}
        if len(collectors) > 1:
            document["parts"] = [_part(collector, [k for k in ordered if k[0] == collector], self.blocks)
                                 for collector in collectors]
        return document


def _part(collector: str, keys: list[tuple[str, int]],
          blocks: Mapping[tuple[str, int], bytes]) -> dict[str, Any]:
    return {"collector": collector, "sequences": [keys[0][1], keys[-1][1]], "blocks": len(keys),
            "digest": hashlib.sha256(b"".join(blocks[key] for key in keys)).hexdigest()}


def _local_hours(start: date, end: date, tz: ZoneInfo) -> list[int]:
    """Every local hour start (UTC ms) from local midnight of `start` to that of `end`."""
    first = int(datetime(start.year, start.month, start.day, tzinfo=tz).timestamp() * 1000)
    last = int(datetime(end.year, end.month, end.day, tzinfo=tz).timestamp() * 1000)
    return list(range(first, last, HOUR_MS))


def _thresholds(methodology: Methodology, on: date) -> Thresholds:
    return Thresholds(
        min_samples_per_minute=methodology.integer("min_samples_per_minute", on),
        min_valid_minutes_per_hour=methodology.integer("min_valid_minutes_per_hour", on),
        min_valid_hours_per_day=methodology.integer("min_valid_hours_per_day", on),
        min_valid_days_per_month=methodology.integer("min_valid_days_per_month", on),
        min_valid_days_february=methodology.integer("min_valid_days_february", on),
        normal_share_for_n_flag=methodology.number("normal_share_for_n_flag", on),
    )


def _iso(time_unix_ms: int, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(time_unix_ms / 1000, tz=UTC).astimezone(tz).isoformat()


def _sum(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return math.fsum(present) if present else None


def _hourly_series(samples: list[Sample], hours: list[int], thresholds: Thresholds,
                   tz: ZoneInfo) -> dict[int, PeriodValue]:
    minutes = minute_values(samples, thresholds=thresholds, tz=tz)
    return {h.start_unix_ms: h for h in hourly_values(minutes, thresholds=thresholds, tz=tz)
            if h.start_unix_ms in set(hours)}


def _slots(hours: list[int], series: Mapping[int, PeriodValue]) -> list[HourSlot]:
    slots = []
    for start in hours:
        value = series.get(start)
        flag = value.flag if value is not None else "B"
        cause = ("maintenance" if flag in ("M", "C") else "out_of_control" if flag == "D" else "missing")
        slots.append(HourSlot(start, start + HOUR_MS, value.mean if value is not None else None, flag,
                              cause))
    return slots


@dataclass(slots=True)
class _Collected:
    """The unit's readings in the period, sorted out."""

    by_quantity: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    fuel_by_hour: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    trails: dict[int, _Trail] = field(default_factory=lambda: defaultdict(_Trail))


def _collect(unit: UnitConfig, blocks: Sequence[BlockInput], period_start: int,
             period_end: int) -> _Collected:
    collected = _Collected()
    fuel_quantity = f"fuel.{unit.fuel}.total"
    wanted = {*POLLUTANTS.values(), *FLUE_QUANTITIES.values()}
    for entry in sorted(blocks, key=lambda b: (b.collector_id, b.sequence)):
        for reading in entry.block.readings:
            quantity = unit.points.get(reading.point_id)
            t = reading.time_unix_ms
            if quantity is None or not period_start <= t < period_end:
                continue
            hour = period_start + (t - period_start) // HOUR_MS * HOUR_MS
            if quantity in wanted:
                value = reading.value
                if unit.point_units.get(reading.point_id) == "ppm" and quantity in PPM_MOLAR_MASS_G_PER_MOL:
                    value = ppm_to_mg_per_m3(value, molar_mass_g_per_mol=PPM_MOLAR_MASS_G_PER_MOL[quantity])
                collected.by_quantity[quantity].append(Sample(t, value, reading.quality))
            elif quantity == fuel_quantity and reading.HasField("increment"):
                collected.fuel_by_hour[hour].append(reading.increment)
            else:
                continue
            collected.trails[hour].add(entry.collector_id, entry.sequence, entry.block_hash)
    return collected


def _cause(flag: str) -> str:
    return "maintenance" if flag in ("M", "C") else "out_of_control" if flag == "D" else "missing"


def _actual_flow(h: int, flue: Mapping[str, Mapping[int, PeriodValue]],
                 duct_area_m2: float | None) -> PeriodValue | None:
    """The hour's actual flow in m3/s: measured (a00000), or velocity (a01011) times the duct's
    cross-section when the unit measures velocity."""
    measured = flue["flow_m3_per_s"].get(h)
    velocity = flue["velocity_m_per_s"].get(h)
    if measured is not None or velocity is None or duct_area_m2 is None:
        return measured
    mean = None if velocity.mean is None else actual_flow_m3_per_h(
        duct_area_m2=duct_area_m2, velocity_m_per_s=velocity.mean) / 3600
    return PeriodValue(velocity.start_unix_ms, velocity.end_unix_ms, mean, None, None,
                       velocity.valid_count, velocity.total_count, velocity.flag)


def _flow_slots(hours: list[int], flue: Mapping[str, Mapping[int, PeriodValue]],
                barometric_pa: float, duct_area_m2: float | None) -> list[HourSlot]:
    """The standard dry flow of each hour, valid when its four inputs are; otherwise it takes the
    measured flow's own flag when that says why, and B (no data) when it does not."""
    slots = []
    for h in hours:
        parts = [_actual_flow(h, flue, duct_area_m2)] + [
            flue[name].get(h) for name in ("temperature_c", "static_pressure_kpa", "moisture_percent")]
        means = [p.mean if p is not None else None for p in parts]
        value: float | None = None
        if all(m is not None for m in means):
            actual, temperature, static, moisture = (float(m or 0.0) for m in means)
            value = standard_dry_flow_m3_per_h(
                actual * 3600, temperature_c=temperature, barometric_pressure_pa=barometric_pa,
                static_pressure_pa=static * 1000, moisture_fraction=moisture / 100)
        measured = parts[0]
        flag = "N" if value is not None else (
            measured.flag if measured is not None and measured.flag != "N" else "B")
        slots.append(HourSlot(h, h + HOUR_MS, value, flag, _cause(flag)))
    return slots


def _pollutant_rows(hours: list[int], hourly: Mapping[int, PeriodValue], filled: Sequence[SubstitutedHour],
                    *, flows: Sequence[SubstitutedHour], o2: Mapping[int, PeriodValue],
                    reference_o2: float) -> list[dict[str, Any]]:
    rows = []
    for h, result, flow_hour in zip(hours, filled, flows, strict=True):
        o2_hour = o2.get(h)
        value = result.value
        corrected = None
        if value is not None and o2_hour is not None and o2_hour.mean is not None and o2_hour.mean < 21:
            corrected = correct_to_reference_o2(value, o2_measured_percent=o2_hour.mean,
                                                o2_reference_percent=reference_o2)
        mass = None
        if value is not None and flow_hour.value is not None:
            mass = hourly_emission_kg(concentration_mg_per_m3=value,
                                      standard_dry_flow_m3_per_h=flow_hour.value)
        period = hourly.get(h)
        rows.append({
            "mean_mg_per_m3": value, "corrected_mg_per_m3": corrected, "flag": result.flag,
            "valid_minutes": period.valid_count if period is not None else 0,
            "substituted": result.rule if result.substituted else None,
            "substitution_basis": result.basis if result.substituted else None,
            "mass_kg": mass,
        })
    return rows


def account_unit(*, unit: UnitConfig, blocks: Sequence[BlockInput], start: date, end: date,
                 methodology: Methodology, gateway_id: str,
                 history: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The report document of `unit` for the local days [start, end). `blocks` are the verified
    readings blocks that may hold the unit's readings in that period (others are ignored);
    `history` gives, per pollutant and for the flow, the valid hourly values before the period
    (oldest first) that substitution looks back over."""
    if end <= start:
        raise AccountingError(f"the period must end after it starts ({start} .. {end})")
    tz = ZoneInfo(unit.timezone)
    hours = _local_hours(start, end, tz)
    thresholds = _thresholds(methodology, start)
    collected = _collect(unit, blocks, hours[0], hours[-1] + HOUR_MS)
    series = {q: _hourly_series(samples, hours, thresholds, tz)
              for q, samples in collected.by_quantity.items()}
    flue = {name: series.get(code, {}) for name, code in FLUE_QUANTITIES.items()}
    history = history or {}
    flow_slots = _flow_slots(hours, flue, unit.barometric_pressure_kpa * 1000, unit.duct_area_m2)
    flows = substitute(flow_slots, history=history.get("flow", ()), capture_rate=capture_rate(flow_slots),
                       methodology=methodology, tz=tz)
    reference_o2 = methodology.number(f"reference_o2_percent.{unit.emission_standard}", start)
    pollutant_rows: dict[str, list[dict[str, Any]]] = {}
    for name, code in POLLUTANTS.items():
        hourly = series.get(code, {})
        slots = _slots(hours, hourly)
        filled = substitute(slots, history=history.get(name, ()), capture_rate=capture_rate(slots),
                            methodology=methodology, tz=tz)
        pollutant_rows[name] = _pollutant_rows(hours, hourly, filled, flows=flows, o2=flue["o2_percent"],
                                               reference_o2=reference_o2)
    hour_docs = []
    for index, h in enumerate(hours):
        o2 = flue["o2_percent"].get(h)
        hour_docs.append({
            "start": _iso(h, tz), "start_unix_ms": h,
            "flow_std_dry_m3_per_h": flows[index].value, "flow_flag": flows[index].flag,
            "flow_substituted": flows[index].rule if flows[index].substituted else None,
            "o2_percent": o2.mean if o2 is not None else None,
            "fuel_t": _sum(collected.fuel_by_hour.get(h, [])),
            "pollutants": {name: pollutant_rows[name][index] for name in POLLUTANTS},
            "provenance": collected.trails[h].document() if h in collected.trails else None,
        })
    daily: dict[str, list[PeriodValue]] = {}
    days = _days(hours, hour_docs, series, collected.trails, thresholds=thresholds, tz=tz, daily=daily)
    totals = _totals(unit, hour_docs, collected.trails, methodology)
    month_docs, years = _periods(hours, hour_docs, collected.trails, daily, thresholds=thresholds, tz=tz,
                                 months=totals["co2"]["fuel_months"])
    return {
        "format": REPORT_FORMAT,
        "plant": {"id": unit.plant_id, "name": unit.plant_name, "timezone": unit.timezone},
        "unit": unit.unit_id,
        "period": {"from": start.isoformat(), "to": end.isoformat()},
        "methodology": {"name": methodology.name, "digest": methodology.digest},
        "gateway": gateway_id,
        "pollutants": list(POLLUTANTS),
        "units": {"concentration": "mg/m3", "mass": "kg", "flow": "m3/h", "co2_mass": "t", "fuel": "t"},
        "reference_o2_percent": reference_o2,
        "hours": hour_docs,
        "days": days,
        "months": month_docs,
        "years": years,
        "totals": totals,
    }


def _counts(docs: Sequence[Mapping[str, Any]], kind: str) -> dict[str, int]:
    """Per pollutant: hours valid as measured, or substituted."""
    def counted(row: Mapping[str, Any]) -> bool:
        if kind == "valid":
            return row["flag"] == "N" and row["substituted"] is None
        return bool(row["substituted"])
    return {n: sum(1 for d in docs if counted(d["pollutants"][n])) for n in POLLUTANTS}


def _trail_of(hours: Iterable[int], trails: Mapping[int, _Trail]) -> _Trail:
    trail = _Trail()
    for h in hours:
        if h in trails:
            trail.merge(trails[h])
    return trail


def _periods(hours: list[int], hour_docs: list[dict[str, Any]], trails: Mapping[int, _Trail],
             daily: Mapping[str, list[PeriodValue]], *, thresholds: Thresholds, tz: ZoneInfo,
             months: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Monthly values (HJ 75: 25 valid days, 23 in February) and annual totals; a month or year
    only partly inside the report's period is shown for the part inside it (so a monthly mean
    needs the whole month in the period)."""
    by_month: dict[str, list[int]] = defaultdict(list)
    for index, h in enumerate(hours):
        by_month[_iso(h, tz)[:7]].append(index)
    month_docs: list[dict[str, Any]] = []
    for month, indexes in sorted(by_month.items()):
        docs = [hour_docs[i] for i in indexes]
        means: dict[str, float | None] = {}
        flags: dict[str, str] = {}
        for name in POLLUTANTS:
            days = [d for d in daily.get(name, []) if _iso(d.start_unix_ms, tz)[:7] == month]
            values = monthly_values(days, thresholds=thresholds, tz=tz) if days else []
            means[name] = values[0].mean if values else None
            flags[name] = values[0].flag if values else "B"
        month_docs.append({
            "month": month, "mean_mg_per_m3": means, "flag": flags,
            "valid_hours": _counts(docs, "valid"), "substituted_hours": _counts(docs, "substituted"),
            "mass_kg": {n: _sum(d["pollutants"][n]["mass_kg"] for d in docs) for n in POLLUTANTS},
            "fuel_t": _sum(d["fuel_t"] for d in docs), "co2_cems_t": _co2_t(docs),
            "provenance": _trail_of((hours[i] for i in indexes), trails).document(),
        })
    years = []
    for year in sorted({month[:4] for month in by_month}):
        indexes = [i for i, h in enumerate(hours) if _iso(h, tz)[:4] == year]
        docs = [hour_docs[i] for i in indexes]
        fuel_months = [m for m in months if m["month"][:4] == year]
        years.append({
            "year": year,
            "mass_kg": {n: _sum(d["pollutants"][n]["mass_kg"] for d in docs) for n in POLLUTANTS},
            "fuel_t": _sum(d["fuel_t"] for d in docs), "co2_cems_t": _co2_t(docs),
            "co2_fuel_t": math.fsum(m["co2_t"] for m in fuel_months) if fuel_months else None,
            "provenance": _trail_of((hours[i] for i in indexes), trails).document(),
        })
    return month_docs, years


def _days(hours: list[int], hour_docs: list[dict[str, Any]],
          series: Mapping[str, Mapping[int, PeriodValue]], trails: Mapping[int, _Trail], *,
          thresholds: Thresholds, tz: ZoneInfo,
          daily: dict[str, list[PeriodValue]]) -> list[dict[str, Any]]:
    by_day: dict[str, list[int]] = defaultdict(list)
    for index, h in enumerate(hours):
        by_day[_iso(h, tz)[:10]].append(index)
    days = []
    for day, indexes in sorted(by_day.items()):
        docs = [hour_docs[i] for i in indexes]
        trail = _Trail()
        for i in indexes:
            if hours[i] in trails:
                trail.merge(trails[hours[i]])
        means: dict[str, float | None] = {}
        flags: dict[str, str] = {}
        for name, code in POLLUTANTS.items():
            hourly = [series.get(code, {}).get(hours[i]) for i in indexes]
            present = [p for p in hourly if p is not None]
            values = daily_values(present, thresholds=thresholds, tz=tz) if present else []
            means[name] = values[0].mean if values else None
            flags[name] = values[0].flag if values else "B"
            daily.setdefault(name, []).extend(values)
        days.append({
            "date": day,
            "valid_hours": _counts(docs, "valid"),
            "substituted_hours": _counts(docs, "substituted"),
            "mean_mg_per_m3": means,
            "flag": flags,
            "mass_kg": {n: _sum(d["pollutants"][n]["mass_kg"] for d in docs) for n in POLLUTANTS},
            "fuel_t": _sum(d["fuel_t"] for d in docs),
            "co2_cems_t": _co2_t(docs),
            "provenance": trail.document(),
        })
    return days


def _co2_t(docs: Iterable[Mapping[str, Any]]) -> float | None:
    kg = _sum(d["pollutants"]["co2"]["mass_kg"] for d in docs)
    return None if kg is None else kg / 1000


def _totals(unit: UnitConfig, hour_docs: list[dict[str, Any]], trails: Mapping[int, _Trail],
            methodology: Methodology) -> dict[str, Any]:
    trail = _Trail()
    for h in sorted(trails):
        trail.merge(trails[h])
    fuel_by_month: dict[str, list[float]] = defaultdict(list)
    for doc in hour_docs:
        if doc["fuel_t"] is not None:
            fuel_by_month[doc["start"][:7]].append(doc["fuel_t"])
    months: list[dict[str, Any]] = []
    missing_lab = []
    for month, amounts in sorted(fuel_by_month.items()):
        lab = unit.lab_values.get((month, unit.fuel))
        if lab is None:
            missing_lab.append(month)
            continue
        ncv, measured = lab
        year, number = (int(part) for part in month.split("-"))
        result = monthly_fuel_co2(MonthlyFuelRecord(
            month=date(year, number, 1), fuel=unit.fuel, consumption_t=math.fsum(amounts),
            ncv_gj_per_t=ncv, carbon_content_tc_per_t=measured), methodology)
        months.append({"month": month, "consumption_t": result.record.consumption_t,
                       "ncv_gj_per_t": ncv, "carbon_content_tc_per_t": result.carbon_content_tc_per_t,
                       "carbon_content_measured": result.carbon_content_basis == "measured",
                       "oxidation_rate": result.oxidation_rate, "co2_t": result.co2_t})
    cems = _co2_t(hour_docs)
    fuel_co2 = math.fsum(m["co2_t"] for m in months) if months and not missing_lab else None
    difference = cems - fuel_co2 if cems is not None and fuel_co2 is not None else None
    return {
        "mass_kg": {n: _sum(d["pollutants"][n]["mass_kg"] for d in hour_docs) for n in POLLUTANTS},
        "valid_hours": _counts(hour_docs, "valid"),
        "invalid_hours": {n: sum(1 for d in hour_docs if d["pollutants"][n]["mean_mg_per_m3"] is None
                                 or d["pollutants"][n]["substituted"]) for n in POLLUTANTS},
        "substituted_hours": _counts(hour_docs, "substituted"),
        "fuel_t": _sum(d["fuel_t"] for d in hour_docs),
        "co2": {"cems_t": cems, "fuel_t": fuel_co2, "difference_t": difference,
                "difference_percent": (difference / fuel_co2 * 100
                                       if difference is not None and fuel_co2 else None),
                "fuel_months": months, "months_without_lab_values": missing_lab},
        "provenance": trail.document(),
    }

