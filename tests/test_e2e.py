"""Collector, simulator and gateway as separate processes, with the gateway and the collector
killed mid-stream. Afterwards the ledger must hold every block once, with no gap, all verified."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.ledger import SqliteLedger
from gateway.verifier import verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import decode_block
from tests.conftest import free_port, wait_for_sync
from tests.support import run_stackline, stackline, stop, write_gateway, write_plant

pytestmark = pytest.mark.slow

TICK_MS = 250


@dataclass
class Pipeline:
    """Paths and processes of one end-to-end run."""

    root: Path
    gateway_config: Path
    plant_config: Path
    ledger: Path
    buffer: Path
    processes: dict[str, subprocess.Popen[bytes]]

    def start(self, name: str) -> None:
        args = {
            "gateway": ("gateway", "run", "--config", str(self.gateway_config)),
            "simulator": ("simulate", "--config", str(self.plant_config)),
            "collector": ("collector", "run", "--config", str(self.plant_config)),
        }[name]
        self.processes[name] = stackline(*args, log=self.root / f"{name}.log")

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return self.processes[name]


def ledger_blocks(path: Path) -> list[tuple[int, int, int]]:
    """(sequence, kind, window start) of every stored block, read straight from the file."""
    if not path.exists():
        return []
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        try:
            rows = db.execute("SELECT sequence, payload FROM blocks ORDER BY sequence").fetchall()
        except sqlite3.OperationalError:
            return []
    out = []
    for sequence, payload in rows:
        block = decode_block(bytes(payload))
        out.append((int(sequence), int(block.kind), int(block.window_start_unix_ms)))
    return out


def buffer_head(path: Path) -> int:
    """The collector's chain head as committed in its buffer."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT sequence FROM chain").fetchone()[0])


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    port = free_port()
    gateway_config = write_gateway(tmp_path / "gateway", grpc_port=port)
    plant_config = write_plant(tmp_path / "plant", grpc_port=port, tick_ms=TICK_MS)
    enrolled = run_stackline("gateway", "enroll", "--config", str(gateway_config),
                             "--collector-id", "demo-plant-c1",
                             "--public-key", str(tmp_path / "plant" / "collector.key.pub"))
    assert enrolled.returncode == 0, enrolled.stderr
    line = Pipeline(tmp_path, gateway_config, plant_config, tmp_path / "gateway" / "ledger.sqlite",
                    tmp_path / "plant" / "buffer.sqlite", {})
    yield line
    for process in line.processes.values():
        stop(process)


def assert_complete(pipeline: Pipeline) -> list[tuple[int, int, int]]:
    """Stop the collector (it drains), then check the ledger is gap-free, duplicate-free, verified."""
    collector = pipeline.process("collector")
    assert stop(collector) == 0, (pipeline.root / "collector.log").read_text()[-3000:]
    head = buffer_head(pipeline.buffer)
    blocks = ledger_blocks(pipeline.ledger)
    sequences = [sequence for sequence, _, _ in blocks]
    assert sequences == list(range(1, head + 1)), "every block the collector made, once, in order"

    async def verify() -> dict[str, object]:
        ledger = SqliteLedger(path=pipeline.ledger, read_only=True)
        try:
            return (await verify_ledger(ledger)).to_json()
        finally:
            await ledger.close()

    report = asyncio.run(verify())
    assert report["ok"] is True, json.dumps(report["findings"])
    assert (report["gaps"], report["bad_signatures"], report["broken_links"]) == (0, 0, 0)
    assert report["blocks"] == head
    return blocks


def test_gateway_down_for_ten_seconds_loses_nothing(pipeline: Pipeline) -> None:
    pipeline.start("gateway")
    pipeline.start("simulator")
    pipeline.start("collector")
    wait_for_sync(lambda: len(ledger_blocks(pipeline.ledger)) >= 5, timeout_s=30,
                  what="the first blocks in the ledger")

    stop(pipeline.process("gateway"), sig=signal.SIGKILL)
    killed_at = time.monotonic()
    stored_before = len(ledger_blocks(pipeline.ledger))
    # The outage itself lasts 10 s by definition of the scenario; the collector keeps polling.
    time.sleep(10)
    head_during_outage = buffer_head(pipeline.buffer)
    assert head_during_outage >= stored_before + 10_000 // TICK_MS - 4, "collector kept ticking"
    assert len(ledger_blocks(pipeline.ledger)) == stored_before
    pipeline.start("gateway")
    wait_for_sync(lambda: len(ledger_blocks(pipeline.ledger)) >= head_during_outage,
                  timeout_s=30, what="the backlog to drain into the restarted gateway")
    assert time.monotonic() - killed_at >= 10

    blocks = assert_complete(pipeline)
    # the readings kept coming while the gateway was away: one window per tick, no hole
    starts = [start for _, kind, start in blocks if kind == pb.BLOCK_KIND_READINGS]
    steps = {b - a for a, b in itertools.pairwise(starts)}
    assert steps == {TICK_MS}


def test_collector_killed_and_restarted_resumes_its_chain(pipeline: Pipeline) -> None:
    pipeline.start("gateway")
    pipeline.start("simulator")
    pipeline.start("collector")
    wait_for_sync(lambda: len(ledger_blocks(pipeline.ledger)) >= 6, timeout_s=30,
                  what="the first blocks in the ledger")

    stop(pipeline.process("collector"), sig=signal.SIGKILL)
    head_at_kill = buffer_head(pipeline.buffer)
    pipeline.start("collector")
    wait_for_sync(lambda: len(ledger_blocks(pipeline.ledger)) >= head_at_kill + 6, timeout_s=30,
                  what="blocks from the restarted collector")

    blocks = assert_complete(pipeline)
    kinds = [kind for _, kind, _ in blocks]
    # the restarted collector continued the same chain with the same configuration
    assert kinds.count(pb.BLOCK_KIND_CONFIG) == 1
    assert len(blocks) > head_at_kill
