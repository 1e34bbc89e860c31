"""A shared RS-485 line with flaky instruments: how late the healthy device's readings come, how
often the silent device is still asked, and how fast each faulty device is back.

Four devices (units 1-4, the coal feeder profile) on one Modbus RTU line over a socat
pseudo-terminal pair, read by the collector's runtime in this process and served by the plant
simulator in this process. After a warm-up, unit 1 goes silent, unit 2 answers every request with
exception 6 (device busy) and unit 3 answers 100 ms late, for `--fault-s` seconds; then all
answer normally again. Prints one JSON object.

    python bench/flaky_line.py [--fault-s 30] [--interval-ms 500] [--timeout-ms 150]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing
import yaml

from collector.buffer import MemoryBuffer
from collector.config import load_plant
from collector.modbus_source import ModbusSource
from collector.plan import compile_plan
from collector.runtime import CollectorRuntime
from collector.simulator import FaultMode, PlantSimulator
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import Signer, decode_block

REPO = Path(__file__).resolve().parent.parent
PROFILE = REPO / "firmware-config" / "profiles" / "coal-feeder-belt-scale.yaml"
UNITS = {"silent": 1, "refusing": 2, "slow": 3, "healthy": 4}


def _pty_pair(directory: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    socat = shutil.which("socat")
    if socat is None:
        sys.exit("socat is missing: apt-get install -y socat")
    ends = str(directory / "collector"), str(directory / "plant")
    process = subprocess.Popen([socat, f"pty,raw,echo=0,link={ends[0]}",
                                f"pty,raw,echo=0,link={ends[1]}"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not all(Path(end).exists() for end in ends):
        if time.monotonic() > deadline:
            process.kill()
            sys.exit("socat did not make the pseudo-terminal pair")
        time.sleep(0.02)
    return process, *ends


def _plant(directory: Path, port: str, interval_ms: int, timeout_ms: int) -> Path:
    document = {
        "plant": {"id": "flaky"},
        "collector": {"id": "flaky-c1", "key_file": "unused.key", "tick_ms": interval_ms,
                      "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "serial_lines": [{"id": "line-1", "port": port, "baudrate": 115200, "request_gap_ms": 5}],
        "devices": [{"id": name, "profile": str(PROFILE), "emission_unit": "boiler-1",
                     "serial_line": "line-1", "unit_id": unit, "timeout_ms": timeout_ms,
                     "poll_interval_ms": interval_ms, "failures_before_backoff": 3,
                     "backoff_max_ms": 2000} for name, unit in UNITS.items()],
    }
    path = directory / "plant.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def run(fault_s: float, interval_ms: int, timeout_ms: int) -> dict[str, Any]:
    """The scenario; the figures."""
    with tempfile.TemporaryDirectory(prefix="stackline-flaky-") as tmp:
        socat, collector_end, plant_end = _pty_pair(Path(tmp))
        try:
            plant = load_plant(_plant(Path(tmp), collector_end, interval_ms, timeout_ms))
            buffer = MemoryBuffer()
            runtime = CollectorRuntime(plan=compile_plan(plant), buffer=buffer, source=ModbusSource(),
                                       signer=Signer(signing_key=nacl.signing.SigningKey.generate()),
                                       tick_ms=interval_ms)
            simulator = PlantSimulator(plant=plant, serial_ports={"line-1": plant_end})
            serving = asyncio.create_task(simulator.serve())
            await asyncio.wait_for(simulator.ready.wait(), 10)
            ticker = asyncio.create_task(runtime._ticker())
            await asyncio.sleep(3)
            start_ms = time.time() * 1000
            reads_before = simulator.device("silent").reads
            simulator.set_fault("silent", FaultMode.SILENT)
            simulator.set_fault("refusing", FaultMode.EXCEPTION, exception_code=6)
            simulator.set_fault("slow", FaultMode.SLOW, delay_s=0.1)
            await asyncio.sleep(fault_s)
            end_ms = time.time() * 1000
            silent_reads = simulator.device("silent").reads - reads_before
            for name in ("silent", "refusing", "slow"):
                simulator.set_fault(name, None)
            await asyncio.sleep(5)
            ticker.cancel()
            serving.cancel()
            await asyncio.gather(ticker, serving, return_exceptions=True)
            await runtime.source.close()
        finally:
            socat.kill()
    by_device: dict[str, list[pb.Reading]] = {name: [] for name in UNITS}
    for _, envelope in buffer.read_from(1, 1_000_000):
        for reading in decode_block(pb.SignedBlock.FromString(envelope).payload).readings:
            _, device, point = reading.point_id.split("/")
            if point == "feed_rate":
                by_device[device].append(reading)
    healthy = sorted(r.time_unix_ms for r in by_device["healthy"])
    during = [t for t in healthy if start_ms <= t < end_ms]
    delays = sorted(t % interval_ms for t in during)
    gaps = [b - a for a, b in itertools.pairwise(during)]

    def recovery_s(name: str) -> float | None:
        normal = [r.time_unix_ms for r in by_device[name]
                  if r.time_unix_ms >= end_ms and r.quality == pb.QUALITY_NORMAL]
        return round((min(normal) - end_ms) / 1000, 2) if normal else None

    def flags(name: str) -> dict[str, int]:
        counted: dict[str, int] = {}
        for r in by_device[name]:
            if start_ms + 2 * interval_ms <= r.time_unix_ms < end_ms:
                letter = {pb.QUALITY_NORMAL: "N", pb.QUALITY_FAULT: "D", pb.QUALITY_COMM_LOSS: "B"}.get(
                    r.quality, str(r.quality))
                counted[letter] = counted.get(letter, 0) + 1
        return counted

    slots = int(fault_s * 1000 / interval_ms)
    return {
        "scenario": "flaky-line",
        "parameters": {"fault_s": fault_s, "interval_ms": interval_ms, "timeout_ms": timeout_ms,
                       "devices": len(UNITS), "transport": "modbus-rtu over a pty pair"},
        "figures": {
            "healthy_readings_during_fault": len(during),
            "slots_during_fault": slots,
            "healthy_delay_after_slot_ms": {"p50": delays[len(delays) // 2], "max": delays[-1]},
            "healthy_max_gap_ms": max(gaps),
            "healthy_all_normal": all(r.quality == pb.QUALITY_NORMAL for r in by_device["healthy"]),
            "silent_requests_during_fault": silent_reads,
            "flags_during_fault": {name: flags(name) for name in ("silent", "refusing", "slow")},
            "recovery_s_after_fault": {name: recovery_s(name) for name in ("silent", "refusing", "slow")},
        },
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
    }


def main() -> None:
    """Parse the arguments, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault-s", type=float, default=30.0)
    parser.add_argument("--interval-ms", type=int, default=500)
    parser.add_argument("--timeout-ms", type=int, default=150)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.fault_s, args.interval_ms, args.timeout_ms))))


if __name__ == "__main__":
    main()
