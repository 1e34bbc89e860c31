"""The accounting's view of a ledger: the blocks and configuration behind one unit and period.

The only module of the accounting that reads anything: it walks the ledger's verified blocks,
keeps the configuration documents, and hands `unit.py` the readings blocks whose windows touch
the period, with their hashes for provenance.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from gateway.accounting.unit import AccountingError, BlockInput, UnitConfig, unit_config_from_document
from gateway.ledger.base import StoredRow
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block

__all__ = ["MARGIN_MS", "BlockReader", "PeriodTooLarge", "UnitData", "load_unit_data",
           "unit_collectors"]

MARGIN_MS = 3_600_000  # blocks this far outside the period are read too: a slow poll's reading


class BlockReader(Protocol):
    """What the accounting reads: stored blocks by collector and sequence. A `Ledger` is one; an
    evidence bundle's blocks are another (gateway/bundle_verify.py recomputes a report from them)."""

    def iter_blocks(self, collector_id: str | None = None) -> AsyncIterator[StoredRow]:
        """Every stored block (or one collector's), by collector and sequence."""
        ...


class PeriodTooLarge(AccountingError):
    """The period holds more readings blocks than the caller lets one accounting hold in memory:
    `blocks` collected when it stopped (one more than `max_blocks`), and the cap."""

    def __init__(self, *, blocks: int, max_blocks: int) -> None:
        super().__init__(f"the period holds more than {max_blocks:,} readings blocks (stopped "
                         f"reading at {blocks:,})")
        self.blocks = blocks
        self.max_blocks = max_blocks


@dataclass(frozen=True, slots=True)
class UnitData:
    """What the accounting of one unit and period needs from the ledger."""

    unit: UnitConfig
    blocks: list[BlockInput]
    config_document: Mapping[str, Any]


def _documents(raw: bytes) -> Mapping[str, Any] | None:
    try:
        parsed = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _has_unit(document: Mapping[str, Any], unit_id: str, plant_id: str | None) -> bool:
    plant = (document.get("plant") or {}).get("id")
    accounting = document.get("accounting") or {}
    units = {u.get("id") for u in accounting.get("units") or [] if isinstance(u, dict)}
    return unit_id in units and (plant_id is None or plant == plant_id)


async def _configurations(ledger: BlockReader) -> AsyncIterator[tuple[str, bytes, Mapping[str, Any]]]:
    """(collector id, configuration digest, document) of every CONFIG block of the ledger whose
    document is a JSON object, by collector and sequence."""
    async for row in ledger.iter_blocks():
        block = decode_block(row.payload)
        if block.kind != pb.BLOCK_KIND_CONFIG:
            continue
        document = _documents(block.config_document)
        if document is not None:
            yield row.collector_id, bytes(block.config_digest), document


def _plant_of(document: Mapping[str, Any]) -> str:
    return str((document.get("plant") or {}).get("id"))


async def unit_collectors(ledger: BlockReader, *, unit_id: str,
                          plant_id: str | None = None) -> dict[str, str]:
    """Collector id -> plant id of every collector one of whose configurations accounts for
    `unit_id` (of `plant_id`, when given): the collectors `load_unit_data` reads."""
    return {collector_id: _plant_of(document)
            async for collector_id, _, document in _configurations(ledger)
            if _has_unit(document, unit_id, plant_id)}


async def load_unit_data(ledger: BlockReader, *, unit_id: str, start: date, end: date,
                         plant_id: str | None = None, max_blocks: int | None = None) -> UnitData:
    """The blocks of every collector whose configuration accounts for `unit_id`, in the period
    (local days [start, end) of the plant's zone); AccountingError when no configuration in the
    ledger has that unit, or two plants do and `plant_id` does not say which.

    Every readings block of the period is held in memory (a few KB each): with `max_blocks`,
    PeriodTooLarge as soon as more than that many are collected, before reading further."""
    configs: dict[tuple[str, bytes], Mapping[str, Any]] = {}
    collectors: dict[str, str] = {}
    async for collector_id, digest, config in _configurations(ledger):
        configs[(collector_id, digest)] = config
        if _has_unit(config, unit_id, plant_id):
            collectors[collector_id] = _plant_of(config)
    plants = set(collectors.values())
    if not plants:
        where = f" of plant {plant_id}" if plant_id else ""
        raise AccountingError(f"no configuration in this ledger has an accounting unit {unit_id!r}{where}")
    if len(plants) > 1:
        raise AccountingError(f"plants {', '.join(sorted(plants))} all have a unit {unit_id!r}: "
                              "say which with --plant")
    # the newest configuration that accounts for the unit: its zone, and the fallback below
    newest = [c for (cid, _), c in configs.items()
              if cid in collectors and _has_unit(c, unit_id, plant_id)][-1]
    zone = newest
    tz = ZoneInfo(str((zone.get("plant") or {}).get("timezone") or "UTC"))
    start_ms = int(datetime(start.year, start.month, start.day, tzinfo=tz).timestamp() * 1000) - MARGIN_MS
    last = end + timedelta(days=0)
    end_ms = int(datetime(last.year, last.month, last.day, tzinfo=tz).timestamp() * 1000) + MARGIN_MS
    blocks: list[BlockInput] = []
    in_force: tuple[str, bytes] | None = None
    for collector_id in sorted(collectors):
        async for row in ledger.iter_blocks(collector_id):
            block = decode_block(row.payload)
            if block.kind != pb.BLOCK_KIND_READINGS:
                continue
            if block.window_end_unix_ms < start_ms or block.window_start_unix_ms > end_ms:
                continue
            blocks.append(BlockInput(collector_id, row.sequence, row.hash, block))
            if max_blocks is not None and len(blocks) > max_blocks:
                raise PeriodTooLarge(blocks=len(blocks), max_blocks=max_blocks)
            in_force = (collector_id, bytes(block.config_digest))
    document = configs.get(in_force) if in_force else None
    if document is None or not _has_unit(document, unit_id, plant_id):
        document = newest
    return UnitData(unit=unit_config_from_document(document, unit_id), blocks=blocks,
                    config_document=document)
