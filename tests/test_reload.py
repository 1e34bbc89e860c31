"""SIGHUP: a broken configuration is refused and the collector goes on with the old one; a good
one is recorded as a signed configuration block in the gateway's ledger. Collector, simulator and
gateway run as separate processes."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.ledger import SqliteLedger
from gateway.verifier import verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block
from tests.conftest import free_port, wait_for_sync
from tests.support import run_stackline, stackline, stop, write_gateway, write_plant

pytestmark = pytest.mark.slow


def _blocks(ledger: Path) -> list[pb.Block]:
    if not ledger.exists():
        return []
    with sqlite3.connect(f"file:{ledger}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT payload FROM blocks ORDER BY sequence").fetchall()
        except sqlite3.OperationalError:
            return []
    return [decode_block(bytes(payload)) for (payload,) in rows]


def _configs(ledger: Path) -> list[pb.Block]:
    return [b for b in _blocks(ledger) if b.kind == pb.BLOCK_KIND_CONFIG]


@pytest.fixture
def running(tmp_path: Path) -> Iterator[dict[str, Any]]:
    port = free_port()
    gateway_config = write_gateway(tmp_path / "gateway", grpc_port=port)
    plant = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=250)
    enrolled = run_stackline("gateway", "enroll", "--config", str(gateway_config),
                             "--collector-id", "demo-plant-c1",
                             "--public-key", str(tmp_path / "plant" / "collector.key.pub"))
    assert enrolled.returncode == 0, enrolled.stderr
    processes = {
        "gateway": stackline("gateway", "run", "--config", str(gateway_config),
                             log=tmp_path / "gateway.log"),
        "simulator": stackline("simulate", "--config", str(plant), log=tmp_path / "simulator.log"),
        "collector": stackline("collector", "run", "--config", str(plant),
                               log=tmp_path / "collector.log"),
    }
    try:
        yield {"plant": plant, "ledger": tmp_path / "gateway" / "ledger.sqlite",
               "log": tmp_path / "collector.log", "processes": processes}
    finally:
        for process in processes.values():
            stop(process)


def test_sighup_refuses_a_broken_config_and_records_a_good_one(running: dict[str, Any]) -> None:
    plant, ledger, log = running["plant"], running["ledger"], running["log"]
    collector = running["processes"]["collector"]
    wait_for_sync(lambda: len(_blocks(ledger)) >= 4, timeout_s=30, what="the first blocks")
    assert len(_configs(ledger)) == 1
    original = plant.read_text()

    # a broken configuration: refused, named, and the collector goes on with the old one
    broken: dict[str, Any] = yaml.safe_load(original)
    broken["devices"][0]["overrides"] = {"points": {"so2": {"scale": "ten"}}}
    plant.write_text(yaml.safe_dump(broken, sort_keys=False))
    collector.send_signal(signal.SIGHUP)
    wait_for_sync(lambda: "configuration reload refused" in log.read_text(), timeout_s=15,
                  what="the refusal in the collector's log")
    refusal = next(line for line in log.read_text().splitlines() if "reload refused" in line)
    assert "devices[0].overrides.points.so2.scale" in refusal
    assert "still running on configuration" in refusal
    before = len(_blocks(ledger))
    wait_for_sync(lambda: len(_blocks(ledger)) >= before + 4, timeout_s=15,
                  what="readings going on under the old configuration")
    assert collector.poll() is None
    assert len(_configs(ledger)) == 1

    # a change that needs a restart is refused too, naming the field
    restart: dict[str, Any] = yaml.safe_load(original)
    restart["collector"]["buffer"]["path"] = "elsewhere.sqlite"
    plant.write_text(yaml.safe_dump(restart, sort_keys=False))
    collector.send_signal(signal.SIGHUP)
    wait_for_sync(lambda: "collector.buffer" in log.read_text(), timeout_s=15,
                  what="the refusal of a change that needs a restart")

    # a good configuration: a scale override on so2, recorded as a signed configuration block
    good: dict[str, Any] = yaml.safe_load(original)
    good["devices"][0]["overrides"] = {"points": {"so2": {"scale": 10.0}}}
    plant.write_text(yaml.safe_dump(good, sort_keys=False))
    collector.send_signal(signal.SIGHUP)
    wait_for_sync(lambda: len(_configs(ledger)) == 2, timeout_s=20,
                  what="the new configuration block in the ledger")
    first, second = _configs(ledger)
    document = json.loads(second.config_document)
    so2 = next(p for p in document["devices"][0]["profile"]["points"] if p["name"] == "so2")
    assert so2["scale"] == 10.0
    assert second.config_digest != first.config_digest
    wait_for_sync(lambda: any(b.kind == pb.BLOCK_KIND_READINGS and b.config_digest == second.config_digest
                              for b in _blocks(ledger)),
                  timeout_s=15, what="readings under the new configuration")
    blocks = _blocks(ledger)
    at = next(i for i, b in enumerate(blocks) if b.kind == pb.BLOCK_KIND_CONFIG and b.sequence > 1)
    assert all(b.config_digest == first.config_digest for b in blocks[1:at])
    assert all(b.config_digest == second.config_digest for b in blocks[at:])
    # the so2 values now come out ten times larger: the scale is in force
    new_so2 = [r.value for b in blocks[at:] for r in b.readings if r.point_id.endswith("cems-1/so2")
               and r.quality in (pb.QUALITY_NORMAL, pb.QUALITY_CALIBRATION)]
    assert new_so2 and min(new_so2) > 150

    assert stop(collector) == 0

    async def verify() -> dict[str, Any]:
        opened = SqliteLedger(path=ledger, read_only=True)
        try:
            return (await verify_ledger(opened)).to_json()
        finally:
            await opened.close()

    report = asyncio.run(verify())
    assert report["ok"] is True, report["findings"]
