"""The gateway's accountant on SQLite and PostgreSQL ledgers: hours first computed while the CEMS
data of the afternoon has not arrived are recomputed when that backlog arrives, and the stored
hourly figures then equal the accounting computed from scratch over the same blocks."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import load_plant
from collector.plan import compile_plan
from gateway.accounting.accountant import Accountant
from gateway.accounting.methodology import load_methodology
from gateway.accounting.source import load_unit_data
from gateway.accounting.unit import BlockInput, account_unit, unit_config_from_document
from gateway.config import load_gateway_config
from gateway.errors import RetryableLedgerError, TimeSeriesUnavailable
from gateway.ledger import SqliteLedger
from gateway.ledger.base import Ledger, VerifiedBlock
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.tsdb import InfluxWriter
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import BlockDraft, decode_block
from tests.conftest import DEMO_PLANT, free_port, wait_for
from tests.demo_blocks import DemoCollector
from tests.support import write_gateway
from tests.test_accounting_unit import DAY, day_of_blocks
from tests.victoria import SIGNIFICANT_RELATIVE_ERROR, started

HOUR_MS = 3_600_000


def _signed_day() -> tuple[DemoCollector, list[VerifiedBlock]]:
    """The demo collector's configuration block, then the generated day, signed and chained."""
    plant = DemoCollector()
    blocks = [plant.config_block()[1]]
    blocks += [plant.reseal(entry.block)[1] for entry in day_of_blocks()[0]]
    return plant, blocks


async def _append(ledger: Ledger, plant: DemoCollector, blocks: list[VerifiedBlock]) -> None:
    for start in range(0, len(blocks), 200):
        await ledger.append(plant.collector_id, blocks[start:start + 200], transport="test",
                            peer="test", received_unix_ms=0)


async def _stored(ledger: Ledger) -> dict[int, dict[str, Any]]:
    rows = await ledger.accounting_hours("demo-plant", "unit-1", start_unix_ms=0, end_unix_ms=2**62)
    return {start: json.loads(document) for start, document in rows}


async def test_a_backlog_recomputes_its_hours_and_the_store_equals_a_recomputation(
        any_ledger: Ledger) -> None:
    plant, blocks = _signed_day()
    await any_ledger.enroll(plant.key)
    accountant = Accountant(ledger=any_ledger, gateway_id="gw-1")
    # the morning arrives (configuration + 14 hours of minute blocks); the afternoon is held back
    morning = 1 + 14 * 60
    await _append(any_ledger, plant, blocks[:morning])
    assert await accountant.run_once() == 1  # one unit-day touched
    first = await _stored(any_ledger)
    assert len(first) == 24
    afternoon_hour = sorted(first)[18]
    assert first[afternoon_hour]["pollutants"]["so2"]["flag"] == "B"
    assert first[afternoon_hour]["pollutants"]["so2"]["valid_minutes"] == 0
    assert first[afternoon_hour]["provenance"] is None

    # the backlog arrives (after an outage): the afternoon's hours are recomputed
    await _append(any_ledger, plant, blocks[morning:])
    assert await accountant.run_once() == 1
    assert await accountant.run_once() == 0  # nothing new: nothing recomputed
    stored = await _stored(any_ledger)
    assert stored[afternoon_hour]["pollutants"]["so2"]["flag"] == "N"
    assert stored[afternoon_hour]["provenance"]["blocks"] == 60

    # ... and equals the accounting of the day from scratch over the stored blocks, figure for figure
    rows = [row async for row in any_ledger.iter_blocks(plant.collector_id)]
    config = decode_block(rows[0].payload)
    scratch = account_unit(
        unit=unit_config_from_document(json.loads(config.config_document), "unit-1"),
        blocks=[BlockInput(r.collector_id, r.sequence, r.hash, decode_block(r.payload)) for r in rows[1:]],
        start=DAY, end=DAY + timedelta(days=1), methodology=load_methodology("cn-mee-2022"),
        gateway_id="gw-1")
    assert [stored[h["start_unix_ms"]] for h in scratch["hours"]] == scratch["hours"]


async def test_a_restarted_accountant_rebuilds_its_index_before_recomputing(any_ledger: Ledger) -> None:
    plant, blocks = _signed_day()
    await any_ledger.enroll(plant.key)
    morning = 1 + 14 * 60
    await _append(any_ledger, plant, blocks[:morning])
    await Accountant(ledger=any_ledger, gateway_id="gw-1").run_once()
    await _append(any_ledger, plant, blocks[morning:])
    # a new process: its index of the day's earlier blocks comes from reading the chain again
    restarted = Accountant(ledger=any_ledger, gateway_id="gw-1")
    assert await restarted.run_once() == 1
    stored = await _stored(any_ledger)
    morning_hour = sorted(stored)[2]
    assert stored[morning_hour]["provenance"]["blocks"] == 60, "the morning's blocks are still counted"
    assert sum(h["pollutants"]["so2"]["flag"] == "N" for h in stored.values()) == 21


async def test_the_gateway_runs_the_accountant_when_its_config_asks(tmp_path: Path) -> None:
    path = write_gateway(tmp_path, grpc_port=free_port())
    document = yaml.safe_load(path.read_text())
    document["accounting"] = {"interval_s": 1}
    path.write_text(yaml.safe_dump(document))
    runtime = GatewayRuntime(config=load_gateway_config(path))
    assert runtime.accountant is not None
    plant = DemoCollector()
    envelopes = [plant.config_block()[0]]
    envelopes += [plant.reseal(entry.block)[0] for entry in day_of_blocks()[0][:120]]
    await runtime.start()
    try:
        await enroll_collector(runtime.ledger, collector_id=plant.collector_id,
                               public_key=plant.signer.public_key)
        outcome = await runtime.core.ingest(collector_id=plant.collector_id, envelopes=envelopes,
                                            transport="test", peer="test")
        assert not outcome.refusals

        async def accounted() -> bool:
            return len(await _stored(runtime.ledger)) == 24
        await wait_for(accounted, timeout_s=20, what="the accountant's hours in the ledger")
    finally:
        await runtime.stop()


async def test_recomputed_hours_reach_the_time_series_store(tmp_path: Path) -> None:
    """Into a real VictoriaMetrics: after the backlog, the afternoon's masses are there too."""
    plant, blocks = _signed_day()
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    for victoria in started(tmp_path / "victoria"):
        writer = InfluxWriter(url=victoria.url, org="ignored-by-vm", bucket="stackline")
        accountant = Accountant(ledger=ledger, gateway_id="gw-1", writer=writer)
        try:
            await ledger.enroll(plant.key)
            morning = 1 + 14 * 60
            await _append(ledger, plant, blocks[:morning])
            await accountant.run_once()
            before = await asyncio.to_thread(victoria.samples, '{__name__="accounting_substituted"}')
            await _append(ledger, plant, blocks[morning:])
            await accountant.run_once()
            after = await asyncio.to_thread(victoria.samples, '{__name__=~"accounting_.*"}')
        finally:
            await writer.close()
            await ledger.close()
    labels = (("plant", "demo-plant"), ("pollutant", "so2"), ("unit", "unit-1"))
    # while the afternoon was missing, its ten hours were substituted besides the calibration
    # hour and the two-hour gap (a revised hour is written again at the same instant: InfluxDB
    # keeps the last write; VictoriaMetrics' deduplication keeps the largest, see docs/accounting.md)
    assert sum(value for _, value in before[("accounting_substituted", labels)]) == 13
    so2 = ("accounting_mass_kg", labels)
    stored = {start: json.loads(text)["pollutants"]["so2"]["mass_kg"] for start, text in
              await _reopened_hours(tmp_path / "ledger.sqlite")}
    # (VictoriaMetrics keeps about 12 significant digits)
    assert [t for t, _ in sorted(after[so2])] == sorted(stored)
    assert [v for _, v in sorted(after[so2])] == pytest.approx([stored[t] for t in sorted(stored)],
                                                               rel=SIGNIFICANT_RELATIVE_ERROR)
    assert accountant.stats.lines_written == 2 * 24 * 5


async def _reopened_hours(path: Path) -> list[tuple[int, str]]:
    reopened = SqliteLedger(path=path, read_only=True)
    try:
        return await reopened.accounting_hours("demo-plant", "unit-1", start_unix_ms=0, end_unix_ms=2**62)
    finally:
        await reopened.close()


class _FailingOnce:
    """A ledger whose first store of accounting hours fails (a database outage)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.failures = 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def put_accounting_hours(self, *args: Any, **kwargs: Any) -> None:
        if self.failures:
            self.failures -= 1
            raise RetryableLedgerError("the database went away", retry_after_s=1.0)
        await self._ledger.put_accounting_hours(*args, **kwargs)


class _RefusingStore:
    """A time-series store that is down."""

    async def write(self, lines: Any) -> None:
        raise TimeSeriesUnavailable("store down", retry_after_s=1.0)

    async def probe(self) -> None:
        raise TimeSeriesUnavailable("store down", retry_after_s=1.0)

    async def close(self) -> None:
        return None


async def test_a_failed_recompute_is_redone_on_the_next_run(tmp_path: Path) -> None:
    plant, blocks = _signed_day()
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        await ledger.enroll(plant.key)
        await _append(ledger, plant, blocks)
        flaky = _FailingOnce(ledger)
        accountant = Accountant(ledger=flaky, gateway_id="gw-1")
        assert await accountant.run_once() == 0  # failed: the cursor stays, nothing stored
        assert await _stored(ledger) == {}
        assert await ledger.sink_positions("accounting") == {}
        assert await accountant.run_once() == 1
        assert len(await _stored(ledger)) == 24
    finally:
        await ledger.close()


async def test_a_day_the_store_refused_reaches_it_after_a_restart(tmp_path: Path) -> None:
    plant, blocks = _signed_day()
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        await ledger.enroll(plant.key)
        await _append(ledger, plant, blocks)
        down = Accountant(ledger=ledger, gateway_id="gw-1", writer=_RefusingStore())
        assert await down.run_once() == 0
        assert await ledger.sink_positions("accounting") == {}  # not copied: not done
        recorded: list[str] = []

        class Store(_RefusingStore):
            async def write(self, lines: Any) -> None:
                recorded.extend(lines)
        restarted = Accountant(ledger=ledger, gateway_id="gw-1", writer=Store())
        assert await restarted.run_once() == 1
        assert len(recorded) == 24 * 5
    finally:
        await ledger.close()


async def test_a_unit_fed_by_two_collectors_is_accounted_from_both(tmp_path: Path) -> None:
    """CEMS on one collector, the feeders on another: the stored hours use both, as a report does."""
    cems, feeders = DemoCollector("demo-plant-c1"), DemoCollector("demo-plant-c2")
    chains: dict[str, list[VerifiedBlock]] = {}
    for plant, keep in ((cems, "/cems-1/"), (feeders, "/feeder-")):
        chain = [plant.config_block()[1]]
        chain += [plant.reseal(entry.block, keep=keep)[1] for entry in day_of_blocks()[0][:120]]
        chains[plant.collector_id] = chain
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        for plant in (cems, feeders):
            await ledger.enroll(plant.key)
            await _append(ledger, plant, chains[plant.collector_id])
        await Accountant(ledger=ledger, gateway_id="gw-1").run_once()
        stored = await _stored(ledger)
        data = await load_unit_data(ledger, unit_id="unit-1", start=DAY, end=DAY + timedelta(days=1))
        report = account_unit(unit=data.unit, blocks=data.blocks, start=DAY, end=DAY + timedelta(days=1),
                              methodology=load_methodology("cn-mee-2022"), gateway_id="gw-1")
    finally:
        await ledger.close()
    assert [stored[h["start_unix_ms"]] for h in report["hours"]] == report["hours"]
    first = report["hours"][0]
    assert first["pollutants"]["so2"]["flag"] == "N" and first["fuel_t"] is not None
    provenance = first["provenance"]
    assert provenance["collector"] == "demo-plant-c1,demo-plant-c2" and provenance["blocks"] == 120
    assert [part["collector"] for part in provenance["parts"]] == ["demo-plant-c1", "demo-plant-c2"]


async def test_a_report_uses_the_newest_configuration_that_accounts_for_the_unit(tmp_path: Path) -> None:
    """The collector ran without an accounting section first, then got one by SIGHUP; a report
    of a day without readings is all B, not an error about the old configuration."""
    without = yaml.safe_load(DEMO_PLANT.read_text())
    del without["accounting"]
    path = tmp_path / "plant.yaml"
    without["collector"]["key_file"] = str(tmp_path / "unused.key")
    for device in without["devices"]:
        device["profile"] = str((DEMO_PLANT.parent / device["profile"]).resolve())
    path.write_text(yaml.safe_dump(without))
    plant = DemoCollector()
    with_accounting = plant.plan
    plant.plan = compile_plan(load_plant(path))
    blocks = [plant.config_block()[1], *[plant.readings_block()[1] for _ in range(3)]]
    plant.plan = with_accounting
    blocks.append(plant._seal(BlockDraft(
        collector_id=plant.collector_id, window_start_unix_ms=0, window_end_unix_ms=0, readings=(),
        config_digest=with_accounting.config_digest, kind=pb.BLOCK_KIND_CONFIG,
        config_document=with_accounting.config_document))[1])
    ledger = SqliteLedger(path=tmp_path / "ledger.sqlite")
    try:
        await ledger.enroll(plant.key)
        await _append(ledger, plant, blocks)
        data = await load_unit_data(ledger, unit_id="unit-1", start=DAY, end=DAY + timedelta(days=1))
    finally:
        await ledger.close()
    report = account_unit(unit=data.unit, blocks=data.blocks, start=DAY, end=DAY + timedelta(days=1),
                          methodology=load_methodology("cn-mee-2022"), gateway_id="gw-1")
    assert report["plant"]["timezone"] == "Asia/Shanghai"
    assert {hour["pollutants"]["so2"]["flag"] for hour in report["hours"]} == {"B"}
