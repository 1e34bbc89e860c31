"""The gateway's accountant: keeps each accounting unit's hourly figures up to date in the ledger.

It follows the ledger through a durable per-collector cursor (`sink_cursors`, consumer
"accounting"), like the time-series sink. Every readings block it reads marks the plant-local days
its readings fall in as dirty; each dirty day of each unit is then recomputed from all of its
blocks with the same pure code as `stackline report` (`unit.py`) and its 24 (23, 25) hourly
documents replace the stored ones. So a backlog that arrives after an outage, filling hours that
were first computed as missing, recomputes those hours, and the stored figures always equal a
report of that day computed from scratch.

To recompute a day it needs the sequence range of the day's blocks: it keeps that index in memory
and rebuilds it at start by reading the chain once up to its cursor. Run it in one gateway of a
deployment (several gateways would each hold only part of the index).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from gateway.accounting.methodology import Methodology, load_methodology
from gateway.accounting.unit import BlockInput, account_unit, unit_config_from_document
from gateway.errors import GatewayError, TimeSeriesError
from gateway.ledger.base import Ledger, StoredRow
from gateway.lineproto import FLAG_LETTERS, format_line
from gateway.tsdb import TimeSeriesWriter
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block

__all__ = ["ACCOUNTING_CURSOR", "Accountant", "AccountantStats", "hour_lines"]

log = logging.getLogger(__name__)

ACCOUNTING_CURSOR = "accounting"
QUALITY_OF_FLAG = {letter: quality for quality, letter in FLAG_LETTERS.items()}
BATCH_BLOCKS = 2000

_DayKey = tuple[str, str, str, str]  # collector, plant, unit, local day (ISO)


@dataclass(slots=True)
class AccountantStats:
    """What the accountant has done."""

    blocks_read: int = 0
    days_recomputed: int = 0
    hours_stored: int = 0
    lines_written: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Units:
    """A configuration's accounting units: time zone and which points feed which unit."""

    plant_id: str
    tz: ZoneInfo
    unit_of_point: dict[str, str] = field(default_factory=dict)


def _units(document: Mapping[str, Any]) -> _Units | None:
    accounting = document.get("accounting")
    if not isinstance(accounting, Mapping) or not accounting.get("units"):
        return None
    plant = document.get("plant") or {}
    units = {str(u.get("id")) for u in accounting.get("units") or [] if isinstance(u, Mapping)}
    found = _Units(str(plant.get("id")), ZoneInfo(str(plant.get("timezone") or "UTC")))
    for device in document.get("devices") or []:
        unit = device.get("emission_unit")
        if unit not in units:
            continue
        for point in (device.get("profile") or {}).get("points") or []:
            found.unit_of_point[f"{plant.get('id')}/{device.get('id')}/{point.get('name')}"] = str(unit)
    return found


def _day_start_ms(day: date, margin_days: int) -> int:
    """UTC ms of `day` at 00:00 UTC, widened by whole days (the plant's zone is within +-14 h)."""
    midnight = int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)
    return midnight + margin_days * 86_400_000


def _local_day(hour: Mapping[str, Any]) -> str:
    return str(hour["start"])[:10]


def hour_lines(plant_id: str, unit_id: str, hour: Mapping[str, Any]) -> list[str]:
    """One stored hour as line protocol: `accounting` per pollutant (mean, corrected mean, mass,
    valid minutes, substituted 0/1, flag as its stackline.v1 quality code) and `accounting_unit`
    (standard dry flow, O2, fuel), at the hour's start. Tags are plant, unit (and pollutant):
    a recomputed hour overwrites the same series at the same instant."""
    start = int(hour["start_unix_ms"])
    tags: dict[str, str | None] = {"plant": plant_id, "unit": unit_id}
    lines = []
    for name, row in sorted(hour["pollutants"].items()):
        fields: dict[str, float | int] = {
            "valid_minutes": int(row["valid_minutes"]), "substituted": 1 if row["substituted"] else 0,
            "quality": QUALITY_OF_FLAG.get(row["flag"], 0)}
        for key in ("mean_mg_per_m3", "corrected_mg_per_m3", "mass_kg"):
            if row[key] is not None:
                fields[key] = float(row[key])
        lines.append(format_line("accounting", {**tags, "pollutant": name}, fields, start))
    unit_fields = {key: float(hour[key]) for key in ("flow_std_dry_m3_per_h", "o2_percent", "fuel_t")
                   if hour[key] is not None}
    unit_fields["flow_substituted"] = 1 if hour["flow_substituted"] else 0
    lines.append(format_line("accounting_unit", tags, unit_fields, start))
    return lines


class Accountant:
    """Follows the ledger and keeps the stored hourly accounting of every unit current."""

    def __init__(self, *, ledger: Ledger, gateway_id: str, interval_s: float = 60.0,
                 clock: Callable[[], float] = time.time,
                 methodologies: Callable[[str], Methodology] = load_methodology,
                 writer: TimeSeriesWriter | None = None) -> None:
        self.ledger = ledger
        self.writer = writer
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.clock = clock
        self.stats = AccountantStats()
        self._load_methodology = methodologies
        self._configs: dict[tuple[str, bytes], Mapping[str, Any]] = {}
        self._units: dict[tuple[str, bytes], _Units | None] = {}
        self._days: dict[_DayKey, list[int]] = {}  # first and last sequence of the day's blocks
        self._started = False
        self._unwritten: set[_DayKey] = set()  # days stored but not yet in the time-series store

    def __repr__(self) -> str:
        return (f"Accountant(gateway={self.gateway_id!r}, days={len(self._days)}, "
                f"recomputed={self.stats.days_recomputed})")

    def _index(self, row: StoredRow, dirty: set[_DayKey] | None) -> None:
        block = decode_block(row.payload)
        key = (row.collector_id, bytes(block.config_digest))
        if block.kind == pb.BLOCK_KIND_CONFIG:
            try:
                document = json.loads(block.config_document)
            except (UnicodeDecodeError, json.JSONDecodeError):
                return
            if isinstance(document, dict):
                self._configs[key] = document
                self._units[key] = _units(document)
            return
        units = self._units.get(key)
        if units is None:
            return
        days: set[tuple[str, str]] = set()
        for reading in block.readings:
            unit = units.unit_of_point.get(reading.point_id)
            if unit is not None:
                local = datetime.fromtimestamp(reading.time_unix_ms / 1000, tz=UTC).astimezone(units.tz)
                days.add((unit, local.date().isoformat()))
        for unit, day in days:
            day_key = (row.collector_id, units.plant_id, unit, day)
            span = self._days.setdefault(day_key, [row.sequence, row.sequence])
            span[0], span[1] = min(span[0], row.sequence), max(span[1], row.sequence)
            if dirty is not None:
                dirty.add(day_key)

    async def _read(self, collector_id: str, after: int, until: int, dirty: set[_DayKey] | None) -> int:
        """Index the collector's blocks in (after, until]; the last sequence read."""
        while after < until:
            rows = await self.ledger.read_blocks(collector_id, after_sequence=after,
                                                 limit=min(BATCH_BLOCKS, until - after))
            if not rows:
                break
            for row in rows:
                self._index(row, dirty)
            self.stats.blocks_read += len(rows)
            after = rows[-1].sequence
        return after

    async def run_once(self) -> int:
        """Read what is new, recompute the days it touched; the number of days recomputed."""
        positions = await self.ledger.sink_positions(ACCOUNTING_CURSOR)
        if not self._started:
            # the index of the days already accounted: read the chain up to the cursor once
            for collector_id, cursor in positions.items():
                await self._read(collector_id, 0, cursor, None)
            self._started = True
        dirty: set[_DayKey] = set()
        for collector_id, head in sorted((await self.ledger.heads()).items()):
            cursor = positions.get(collector_id, 0)
            if head.sequence <= cursor:
                continue
            reached = await self._read(collector_id, cursor, head.sequence, dirty)
            if not await self.ledger.advance_sink(ACCOUNTING_CURSOR, collector_id, from_sequence=cursor,
                                                  to_sequence=reached):
                log.warning("the accounting cursor of %s was moved by another gateway; run the "
                            "accountant in one gateway only", collector_id)
        for key in sorted(dirty):
            await self._recompute(key)
        await self._write_unwritten()
        return len(dirty)

    async def _write_unwritten(self) -> None:
        """Copy recomputed days to the time-series store; a day the store refuses now is tried
        again on the next run (the ledger holds it meanwhile)."""
        if self.writer is None:
            self._unwritten.clear()
            return
        for key in sorted(self._unwritten):
            _, plant_id, unit_id, day_text = key
            day = date.fromisoformat(day_text)
            rows = await self.ledger.accounting_hours(
                plant_id, unit_id, start_unix_ms=_day_start_ms(day, -1),
                end_unix_ms=_day_start_ms(day + timedelta(days=1), +1))
            lines = [line for _, text in rows
                     for line in hour_lines(plant_id, unit_id, json.loads(text))
                     if _local_day(json.loads(text)) == day_text]
            try:
                await self.writer.write(lines)
            except TimeSeriesError as exc:
                log.warning("accounting of %s/%s on %s not yet in the time-series store: %s", plant_id,
                            unit_id, day_text, exc)
                return
            self._unwritten.discard(key)
            self.stats.lines_written += len(lines)

    async def _recompute(self, key: _DayKey) -> None:
        collector_id, plant_id, unit_id, day_text = key
        first, last = self._days[key]
        rows = await self.ledger.read_blocks(collector_id, after_sequence=first - 1, limit=last - first + 1)
        blocks = []
        document: Mapping[str, Any] | None = None
        for row in rows:
            block = decode_block(row.payload)
            if block.kind != pb.BLOCK_KIND_READINGS:
                continue
            blocks.append(BlockInput(collector_id, row.sequence, row.hash, block))
            document = self._configs.get((collector_id, bytes(block.config_digest)), document)
        if document is None:
            return
        day = date.fromisoformat(day_text)
        unit = unit_config_from_document(document, unit_id)
        try:
            report = account_unit(unit=unit, blocks=blocks, start=day, end=day + timedelta(days=1),
                                  methodology=self._load_methodology(unit.methodology),
                                  gateway_id=self.gateway_id)
        except (GatewayError, ValueError):
            self.stats.failures += 1
            log.exception("ALARM: accounting of %s/%s on %s failed", plant_id, unit_id, day_text)
            return
        hours = [(int(hour["start_unix_ms"]), json.dumps(hour, sort_keys=True, allow_nan=False))
                 for hour in report["hours"]]
        await self.ledger.put_accounting_hours(plant_id, unit_id, hours,
                                               computed_unix_ms=int(self.clock() * 1000))
        self.stats.days_recomputed += 1
        self.stats.hours_stored += len(hours)
        self._unwritten.add(key)
        log.info("accounted %s/%s on %s from blocks %d..%d of %s", plant_id, unit_id, day_text,
                 first, last, collector_id)

    async def run(self) -> None:
        """Run until cancelled, every `interval_s`; a failure is logged and retried next time."""
        while True:
            try:
                await self.run_once()
            except GatewayError as exc:
                self.stats.failures += 1
                log.error("ALARM: the accountant failed, retrying in %.0f s: %s",  # noqa: TRY400 - an outage, not a bug: no traceback
                          self.interval_s, exc)
            await asyncio.sleep(self.interval_s)
