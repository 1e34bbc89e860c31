"""Flaky instruments on a shared RS-485 line (Modbus RTU over a pseudo-terminal pair): a device
that goes silent, one that answers with exceptions, and one that answers slowly, each for 30 s,
beside a healthy device that must not be held up by more than one poll interval. Then every
one of them recovers without a restart. Also: totalizer rollover and reset through the wire."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import yaml

from collector.buffer import MemoryBuffer
from collector.config import load_plant
from collector.metrics import render as render_metrics
from collector.modbus_source import ModbusSource
from collector.plan import compile_plan
from collector.runtime import CollectorRuntime
from collector.simulator import FaultMode
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import Signer, decode_block
from tests.conftest import DEMO_PLANT, free_port
from tests.plant_sim import serving
from tests.serial_pty import PtyPair

FEEDER_PROFILE = (DEMO_PLANT.parent / "../profiles/coal-feeder-belt-scale.yaml").resolve()
INTERVAL_MS = 500
TIMEOUT_MS = 150
FAULT_S = 30.0
BACKOFF_MAX_MS = 2000
UNITS = {"silent": 1, "refusing": 2, "slow": 3, "healthy": 4}


def _plant(directory: Path, serial_port: str) -> Path:
    devices = [{
        "id": name, "profile": str(FEEDER_PROFILE), "emission_unit": "boiler-1",
        "serial_line": "line-1", "unit_id": unit, "timeout_ms": TIMEOUT_MS,
        "poll_interval_ms": INTERVAL_MS, "failures_before_backoff": 3,
        "backoff_max_ms": BACKOFF_MAX_MS,
    } for name, unit in UNITS.items()]
    plant = {
        "plant": {"id": "flaky"},
        "collector": {"id": "flaky-c1", "key_file": "collector.key", "tick_ms": INTERVAL_MS,
                      "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "serial_lines": [{"id": "line-1", "port": serial_port, "baudrate": 115200,
                          "request_gap_ms": 5}],
        "devices": devices,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "plant.yaml"
    path.write_text(yaml.safe_dump(plant, sort_keys=False))
    return path


def _readings(buffer: MemoryBuffer) -> dict[str, list[pb.Reading]]:
    """Every reading of the feed-rate point per device, in time order."""
    by_device: dict[str, list[pb.Reading]] = defaultdict(list)
    for _, envelope in buffer.read_from(1, 1_000_000):
        block = decode_block(pb.SignedBlock.FromString(envelope).payload)
        for reading in block.readings:
            _, device, point = reading.point_id.split("/")
            if point == "feed_rate":
                by_device[device].append(reading)
    return {device: sorted(r, key=lambda r: r.time_unix_ms) for device, r in by_device.items()}


@pytest.mark.slow
async def test_faulty_devices_do_not_hold_up_their_line_and_recover(
        tmp_path: Path, pty_pair: PtyPair, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    plant = load_plant(_plant(tmp_path, pty_pair.collector_end))
    buffer = MemoryBuffer()
    runtime = CollectorRuntime(plan=compile_plan(plant),
                               signer=Signer(signing_key=nacl.signing.SigningKey.generate()),
                               buffer=buffer, source=ModbusSource(), tick_ms=INTERVAL_MS)
    async with serving(plant, serial_ports={"line-1": pty_pair.plant_end}) as simulator:
        ticker = asyncio.create_task(runtime._ticker())
        await asyncio.sleep(3)  # the time the scenario lasts, not synchronisation
        fault_start_ms = _wall_ms()
        simulator.set_fault("silent", FaultMode.SILENT)
        simulator.set_fault("refusing", FaultMode.EXCEPTION, exception_code=6)
        simulator.set_fault("slow", FaultMode.SLOW, delay_s=0.1)  # answers, late, within its timeout
        silent_polls_before = simulator.device("silent").reads
        await asyncio.sleep(FAULT_S)
        fault_end_ms = _wall_ms()
        silent_polls_during = simulator.device("silent").reads - silent_polls_before
        for name in ("silent", "refusing", "slow"):
            simulator.set_fault(name, None)
        await asyncio.sleep((BACKOFF_MAX_MS + 3 * INTERVAL_MS) / 1000)
        ticker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ticker
        await runtime.source.close()
    readings = _readings(buffer)
    slots_in_fault = FAULT_S * 1000 / INTERVAL_MS

    # the healthy device: every reading normal, never later than one interval after its slot,
    # and never two slots apart by more than two intervals
    healthy = readings["healthy"]
    assert all(r.quality == pb.QUALITY_NORMAL for r in healthy)
    delays = [r.time_unix_ms % INTERVAL_MS for r in healthy]
    assert max(delays) < INTERVAL_MS, "a reading taken more than one interval after its slot"
    gaps = [b.time_unix_ms - a.time_unix_ms for a, b in itertools.pairwise(healthy)]
    assert max(gaps) < 2 * INTERVAL_MS, f"the healthy device waited {max(gaps)} ms between polls"

    def during(name: str) -> list[pb.Reading]:
        return [r for r in readings[name]
                if fault_start_ms + 2 * INTERVAL_MS <= r.time_unix_ms < fault_end_ms]

    # the silent device: B at its usual rate (polled or not), NaN, and polled less often
    silent = during("silent")
    assert silent and all(r.quality == pb.QUALITY_COMM_LOSS and math.isnan(r.value) for r in silent)
    assert len(silent) >= slots_in_fault - 6, "a reading per slot, even while backing off"
    assert silent_polls_during < slots_in_fault / 2, "backed off: polled far less than every slot"
    assert runtime.devices["silent"].skipped_polls > 0
    # the refusing device: D (fault), every poll, no backoff (it answers)
    refusing = during("refusing")
    assert refusing and all(r.quality == pb.QUALITY_FAULT for r in refusing)
    assert runtime.devices["refusing"].exceptions_by_code.get(6, 0) >= slots_in_fault - 6
    # the slow device: late but normal
    assert all(r.quality == pb.QUALITY_NORMAL for r in during("slow"))
    # all back without a restart
    for name in ("silent", "refusing", "slow"):
        last = readings[name][-3:]
        assert all(r.quality == pb.QUALITY_NORMAL for r in last), (name, last)
    # the first failure was logged loudly once per device, with the request and the raw frames
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    silent_errors = [m for m in errors if m.startswith("device silent:")]
    assert len(silent_errors) == 1 and "no answer within 150 ms" in silent_errors[0]
    assert "last frames: " in silent_errors[0] and "> 01 03 00 00 00 04" in silent_errors[0]
    refused = [m for m in errors if m.startswith("device refusing:")]
    assert len(refused) == 1 and "exception 6 (device busy)" in refused[0]
    assert any("device silent" in r.getMessage() and "answers again" in r.getMessage()
               for r in caplog.records)
    # and in the metrics: exceptions by code, failures by kind, skipped polls
    exposition = render_metrics(runtime).decode()
    assert re.search(r'stackline_collector_device_exceptions_total\{code="6",collector="flaky-c1",'
                     r'device="refusing"\} (\d+)', exposition)
    timeouts = re.search(r'stackline_collector_poll_failures_total\{collector="flaky-c1",'
                         r'device="silent",kind="timeout"\} (\d+)', exposition)
    assert timeouts and float(timeouts.group(1)) >= 3
    skipped = re.search(r'stackline_collector_skipped_polls_total\{collector="flaky-c1",'
                        r'device="silent"\} (\d+)', exposition)
    assert skipped and float(skipped.group(1)) > 0


def _wall_ms() -> int:
    return int(time.time() * 1000)


async def test_totalizer_rollover_and_reset_are_recorded(tmp_path: Path) -> None:
    """A feeder's uint32 totalizer (10 kg per count) set just below 2**32 rolls over; set to 0
    it is a reset. Both are recorded as such, with the right increments, over Modbus TCP."""
    port = free_port()
    plant_doc: dict[str, Any] = {
        "plant": {"id": "meters"},
        "collector": {"id": "meters-c1", "key_file": "collector.key", "tick_ms": 1000,
                      "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "devices": [{"id": "feeder", "profile": str(FEEDER_PROFILE), "emission_unit": "boiler-1",
                     "tcp": {"host": "127.0.0.1", "port": port}, "unit_id": 1, "timeout_ms": 300}],
    }
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(plant_doc))
    plant = load_plant(path)
    now = [1_795_000_000.0]
    buffer = MemoryBuffer()
    runtime = CollectorRuntime(plan=compile_plan(plant),
                               signer=Signer(signing_key=nacl.signing.SigningKey.generate()),
                               buffer=buffer, source=ModbusSource(), tick_ms=1000,
                               clock=lambda: now[0])
    async with serving(plant, clock=lambda: now[0]) as simulator:
        simulator.set_counter("feeder", "total", 2**32 - 3)
        await runtime.tick(int(now[0] * 1000))
        now[0] += 10.0  # the meter counts on: past 2**32 within these 10 s
        await runtime.tick(int(now[0] * 1000))
        simulator.set_counter("feeder", "total", 5)  # someone resets the meter
        now[0] += 1.0
        await runtime.tick(int(now[0] * 1000))
        now[0] += 1.0
        await runtime.tick(int(now[0] * 1000))
        await runtime.source.close()
    totals = []
    for _, envelope in buffer.read_from(1, 100):
        block = decode_block(pb.SignedBlock.FromString(envelope).payload)
        totals += [r for r in block.readings if r.point_id == "meters/feeder/total"]
    events = [r.counter_event for r in totals]
    assert events == [pb.COUNTER_EVENT_FIRST, pb.COUNTER_EVENT_ROLLOVER, pb.COUNTER_EVENT_RESET,
                      pb.COUNTER_EVENT_CONTINUED]
    first, rolled, reset, after = totals
    assert not first.HasField("increment")
    counts = [r.raw_registers[1] << 16 | r.raw_registers[0] for r in totals]  # CDAB words
    assert counts[0] == 2**32 - 3 and counts[1] < 100, "the meter did wrap"
    assert rolled.increment == pytest.approx((counts[1] + 2**32 - counts[0]) * 0.01)
    assert rolled.increment > 0
    assert reset.increment == pytest.approx(counts[2] * 0.01), "counted from zero after a reset"
    assert after.increment == pytest.approx((counts[3] - counts[2]) * 0.01)
