"""`stackline report` over a real ledger of signed blocks: the generated day of
tests/test_accounting_unit.py stored through the ledger's append, reported as JSON, CSV and HTML;
the JSON equals the accounting recomputed from the same blocks, byte for byte, twice; the HTML
opens in headless Chromium with its four charts."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest

from gateway.accounting.methodology import load_methodology
from gateway.accounting.render import render_json
from gateway.accounting.unit import BlockInput, account_unit, unit_config_from_document
from gateway.ledger import SqliteLedger
from proto.wire import decode_block
from tests.demo_blocks import DemoCollector
from tests.support import run_stackline
from tests.test_accounting_unit import DAY, day_of_blocks
from tests.test_report_render import charts_of, chromium


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite ledger holding the demo collector's configuration block and the generated day."""
    path = tmp_path_factory.mktemp("report") / "ledger.sqlite"
    plant = DemoCollector()
    day, _ = day_of_blocks()
    blocks = [plant.config_block()[1]]
    blocks += [plant.reseal(entry.block)[1] for entry in day]

    async def store() -> None:
        ledger = SqliteLedger(path=path)
        try:
            await ledger.enroll(plant.key)
            for start in range(0, len(blocks), 200):
                await ledger.append(plant.collector_id, blocks[start:start + 200], transport="test",
                                    peer="test", received_unix_ms=0)
        finally:
            await ledger.close()
    asyncio.run(store())
    return path


def _report(ledger: Path, form: str, out: Path) -> str:
    result = run_stackline("report", "--ledger", str(ledger), "--unit", "unit-1", "--from", "2026-11-10",
                           "--to", "2026-11-11", "--format", form, "-o", str(out), "--gateway-id", "gw-1",
                           timeout_s=180)
    assert result.returncode == 0, result.stderr
    return out.read_text(encoding="utf-8")


def test_the_json_report_equals_a_recomputation_over_the_blocks(ledger_path: Path, tmp_path: Path) -> None:
    first = _report(ledger_path, "json", tmp_path / "a.json")
    assert _report(ledger_path, "json", tmp_path / "b.json") == first  # byte-identical twice

    async def recompute() -> str:
        ledger = SqliteLedger(path=ledger_path, read_only=True)
        try:
            rows = [row async for row in ledger.iter_blocks()]
        finally:
            await ledger.close()
        config = decode_block(rows[0].payload)
        blocks = [BlockInput(r.collector_id, r.sequence, r.hash, decode_block(r.payload)) for r in rows[1:]]
        unit = unit_config_from_document(json.loads(config.config_document), "unit-1")
        return render_json(account_unit(unit=unit, blocks=blocks, start=DAY, end=DAY.replace(day=11),
                                        methodology=load_methodology("cn-mee-2022"), gateway_id="gw-1"))
    assert asyncio.run(recompute()) == first
    report = json.loads(first)
    assert report["totals"]["provenance"]["sequences"] == [2, 1441]
    assert report["totals"]["substituted_hours"]["so2"] == 3


def test_csv_and_html_reports_with_charts_in_a_browser(ledger_path: Path, tmp_path: Path) -> None:
    text = _report(ledger_path, "csv", tmp_path / "r.csv")
    rows = list(csv.reader(io.StringIO(text)))
    assert sum(1 for row in rows if row and row[0].startswith("2026-11-10T")) == 24
    page = tmp_path / "r.html"
    _report(ledger_path, "html", page)
    dom = chromium(tmp_path / "profile", "--dump-dom", page.as_uri()).stdout
    charts = charts_of(dom)
    assert set(charts) == {"concentrations", "co2", "flags", "emissions"}
    assert charts["flags"].series("rect")["so2"] == 24
