"""The gateway's accountant: keeps each accounting unit's hourly figures up to date in the ledger.

It follows the ledger through a durable per-collector cursor (`sink_cursors`, consumer
"accounting"), like the time-series sink. Every readings block it reads marks the plant-local days
its readings fall in as dirty; each dirty day of each unit is then recomputed from all of its
blocks, of every collector that feeds the unit, with the same pure code as `stackline report`
(`unit.py`), its 24 (23, 25) hourly documents replace the stored ones, and they are copied to the
time-series store when there is one. Only then do the cursors move: a failure, or a crash in
between, leaves them where they were, and the next run redoes those days. So a backlog that
arrives after an outage, filling hours that were first computed as missing, recomputes those
hours, and the stored figures always equal a report of that day computed from scratch.

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
        """Read what is new, recompute the unit-days it touched (with the blocks of every collector
        that feeds the unit), copy them to the time-series store, and only then move the cursors:
        a recompute or a copy that fails, or a crash in between, leaves the cursor where it was,
        so the next run (or the next process) reads those blocks again and redoes the days. The
        number of unit-days recomputed."""
        positions = await self.ledger.sink_positions(ACCOUNTING_CURSOR)
        if not self._started:
            # the index of the days already accounted: read the chain up to the cursor once
            for collector_id, cursor in positions.items():
                await self._read(collector_id, 0, cursor, None)
            self._started = True
        dirty: set[_DayKey] = set()
        reached: dict[str, tuple[int, int]] = {}
        for collector_id, head in sorted((await self.ledger.heads()).items()):
            cursor = positions.get(collector_id, 0)
            if head.sequence > cursor:
                reached[collector_id] = (cursor, await self._read(collector_id, cursor, head.sequence, dirty))
        unit_days = sorted({key[1:] for key in dirty})
        failed = set()
        for unit_day in unit_days:
            if not await self._recompute(unit_day) or not await self._write(unit_day):
                failed.add(unit_day)
        for collector_id, (cursor, last) in reached.items():
            if any(key[0] == collector_id and key[1:] in failed for key in dirty):
                continue  # read again next time, and the day redone
            if not await self.ledger.advance_sink(ACCOUNTING_CURSOR, collector_id, from_sequence=cursor,
                                                  to_sequence=last):
                log.warning("the accounting cursor of %s was moved by another gateway; run the "
                            "accountant in one gateway only", collector_id)
        return len(unit_days) - len(failed)

    async def _write(self, unit_day: tuple[str, str, str]) -> bool:
        """Copy a recomputed unit-day to the time-series store, if there is one; False when the
        store refused it (the day is redone on the next run)."""
        if self.writer is None:
            return True
        plant_id, unit_id, day_text = unit_day
        day = date.fromisoformat(day_text)
        rows = await self.ledger.accounting_hours(
            plant_id, unit_id, start_unix_ms=_day_start_ms(day, -1),
            end_unix_ms=_day_start_ms(day + timedelta(days=1), +1))
        hours = [json.loads(text) for _, text in rows]
        lines = [line for hour in hours if _local_day(hour) == day_text
                 for line in hour_lines(plant_id, unit_id, hour)]
        try:
            await self.writer.write(lines)
        except TimeSeriesError as exc:
            log.warning("accounting of %s/%s on %s not yet in the time-series store (tried again "
                        "next run): %s", plant_id, unit_id, day_text, exc)
            return False
        self.stats.lines_written += len(lines)
        return True

    async def _recompute(self, unit_day: tuple[str, str, str]) -> bool:
        """Account one unit-day from the blocks of every collector that has readings of it;
        False when it failed (logged as an alarm)."""
        plant_id, unit_id, day_text = unit_day
        blocks: list[BlockInput] = []
        document: Mapping[str, Any] | None = None
        ranges = sorted((key[0], span) for key, span in self._days.items() if key[1:] == unit_day)
        for collector_id, (first, last) in ranges:
            rows = await self.ledger.read_blocks(collector_id, after_sequence=first - 1,
                                                 limit=last - first + 1)
            for row in rows:
                block = decode_block(row.payload)
                if block.kind != pb.BLOCK_KIND_READINGS:
                    continue
                blocks.append(BlockInput(collector_id, row.sequence, row.hash, block))
                found = self._configs.get((collector_id, bytes(block.config_digest)))
                if found is not None and _units(found) is not None:
                    document = found
        if document is None:
            return True  # nothing of this unit to account
        day = date.fromisoformat(day_text)
        try:
            unit = unit_config_from_document(document, unit_id)
            report = account_unit(unit=unit, blocks=blocks, start=day, end=day + timedelta(days=1),
                                  methodology=self._load_methodology(unit.methodology),
                                  gateway_id=self.gateway_id)
            hours = [(int(hour["start_unix_ms"]), json.dumps(hour, sort_keys=True, allow_nan=False))
                     for hour in report["hours"]]
            await self.ledger.put_accounting_hours(plant_id, unit_id, hours,
                                                   computed_unix_ms=int(self.clock() * 1000))
        except (GatewayError, ValueError):
            self.stats.failures += 1
            log.exception("ALARM: accounting of %s/%s on %s failed; it is tried again on the next run",
                          plant_id, unit_id, day_text)
            return False
        self.stats.days_recomputed += 1
        self.stats.hours_stored += len(hours)
        log.info("accounted %s/%s on %s from %d block(s) of %s", plant_id, unit_id, day_text,
                 len(blocks), ", ".join(collector for collector, _ in ranges))
        return True

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
