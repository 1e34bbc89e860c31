"""Collector readings and gateway blocks per CPU-second on the demo plant.

Runs the simulator, the collector and the gateway as separate processes (as `stackline demo`
does), lets them warm up, then reads each process's user + system CPU time from /proc over a
measured window and divides the work done in that window by it. Prints one JSON object.

    python bench/demo_cpu.py [--tick-ms 100] [--seconds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from common import cpu_seconds

from gateway.demo import (
    DEFAULT_PLANT,
    enroll_demo_collector,
    prepare,
    spawn,
    stop_process,
    wait_port,
)
from gateway.ledger import SqliteLedger
from gateway.verifier import verify_ledger


async def measure(tick_ms: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    """Run the pipeline and return the figures."""
    with tempfile.TemporaryDirectory(prefix="stackline-bench-") as tmp:
        data_dir = Path(tmp)
        data_dir, gateway_config, plant_config, collector_id, key_path = prepare(
            data_dir, DEFAULT_PLANT, sys.stderr, tick_ms=tick_ms)
        ledger_path = data_dir / "ledger.sqlite"
        await enroll_demo_collector(ledger_path, collector_id, key_path)
        plant = yaml.safe_load(plant_config.read_text())
        grpc_port = int(yaml.safe_load(gateway_config.read_text())["listen"]["grpc"].rsplit(":")[1])
        logs = data_dir / "logs"
        gateway = spawn(["gateway", "run", "--config", str(gateway_config)], logs / "gateway.log")
        simulator = spawn(["simulate", "--config", str(plant_config)], logs / "simulator.log")
        processes = {"gateway": gateway, "simulator": simulator}
        try:
            await wait_port(grpc_port, gateway, "gateway", logs / "gateway.log")
            for port in {int(d["tcp"]["port"]) for d in plant["devices"]}:
                await wait_port(port, simulator, "simulator", logs / "simulator.log")
            collector = spawn(["collector", "run", "--config", str(plant_config)],
                              logs / "collector.log")
            processes["collector"] = collector
            reader = SqliteLedger(path=ledger_path, read_only=True)
            await asyncio.sleep(warmup_s)
            before = {name: cpu_seconds(p.pid) for name, p in processes.items()}
            start_summary, started = await reader.summary(), time.monotonic()
            await asyncio.sleep(seconds)
            after = {name: cpu_seconds(p.pid) for name, p in processes.items()}
            end_summary, elapsed = await reader.summary(), time.monotonic() - started
            await reader.close()
        finally:
            for name in ("collector", "simulator", "gateway"):
                if name in processes:
                    stop_process(processes[name], name)
        checker = SqliteLedger(path=ledger_path, read_only=True)
        report = await verify_ledger(checker)
        await checker.close()
    cpu = {name: round(after[name] - before[name], 3) for name in after}
    blocks = end_summary.blocks - start_summary.blocks
    readings = end_summary.readings - start_summary.readings
    failure = None if report.ok else f"ledger did not verify: {report.findings[:3]}"
    if blocks == 0:
        failure = "no blocks stored in the measured window"
    return {
        "scenario": "demo-cpu",
        "parameters": {"plant": DEFAULT_PLANT.name, "tick_ms": tick_ms, "seconds": seconds,
                       "warmup_s": warmup_s},
        "figures": None if failure else {
            "wall_s": round(elapsed, 2),
            "blocks_stored": blocks,
            "readings_stored": readings,
            "cpu_s": cpu,
            "collector_readings_per_cpu_s": round(readings / cpu["collector"], 1)
            if cpu["collector"] else None,
            "gateway_blocks_per_cpu_s": round(blocks / cpu["gateway"], 1)
            if cpu["gateway"] else None,
            "gateway_readings_per_cpu_s": round(readings / cpu["gateway"], 1)
            if cpu["gateway"] else None,
            "ledger_verified": report.ok,
        },
        "failure": failure,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tick-ms", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    args = parser.parse_args()
    result = asyncio.run(measure(args.tick_ms, args.seconds, args.warmup_s))
    print(json.dumps(result))
    return 0 if result["failure"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
