"""Points per second from a pre-filled SQLite ledger through the time-series sink into a real
VictoriaMetrics, with the sink's own CPU time; and the line-formatting rate alone against
influxdb_client's Point helper.

The ledger holds one collector's CONFIG block and then `--blocks` signed blocks of `--readings`
readings each (four CEMS racks of ten points, one block per second). The sink (this process: the
ledger's thread, the formatter, the writer's thread) drains it with requests of `--batch-lines`
lines; its CPU is this process's user + system time (every thread). Afterwards every series is
exported back; a count that differs from what the ledger holds, or formatted lines that differ
from the Point helper's, is reported as a failure instead of a figure. Prints one JSON object
(bench/common.py's shape, scenario "sink").

    python bench/sink.py                  # 10,000 blocks: 400,000 points
    python bench/sink.py --quick          # 2,000 blocks: 80,000 points
    python bench/sink.py --blocks 5000 --readings 40 --batch-lines 5000
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import nacl.signing
from common import cpu_seconds, emit, free_port, result

from gateway.ledger import SqliteLedger
from gateway.lineproto import LineFormatter, points_of_config
from gateway.sink import TimeSeriesSink
from gateway.tsdb import InfluxWriter, point_helper_line
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block

BASE_MS = 1_700_000_000_000
COLLECTOR = "bench-plant-c1"
CEMS_POINTS = [("so2", "a21026", "mg/m3"), ("nox", "a21002", "mg/m3"), ("o2", "a19001", "%"),
               ("co2", "a05001", "mg/m3"), ("particulate", "a34013", "mg/m3"),
               ("flow", "a00000", "m3/s"), ("temperature", "a01012", "degC"),
               ("static_pressure", "a01013", "kPa"), ("moisture", "a01014", "%")]




def config_document(readings: int) -> tuple[bytes, list[str]]:
    """A configuration document in the collector's format, and the point ids of one block."""
    devices, point_ids = [], []
    for rack in range(math.ceil(readings / (len(CEMS_POINTS) + 1))):
        device = f"cems-{rack + 1}"
        points = [{"name": name, "quantity": quantity, "unit": unit, "address": 100 + 2 * i,
                   "data_type": "float32"} for i, (name, quantity, unit) in enumerate(CEMS_POINTS)]
        devices.append({"id": device, "emission_unit": f"stack-{rack + 1}", "unit_id": 1,
                        "endpoint": "127.0.0.1:502",
                        "profile": {"name": "cems-analyzer-rack", "points": points,
                                    "status": {"address": 118, "bits": {"calibration": 0}}}})
        point_ids += [f"bench-plant/{device}/status"] + [
            f"bench-plant/{device}/{name}" for name, _, _ in CEMS_POINTS]
    document = {"format": "stackline.config/v1", "plant": {"id": "bench-plant"},
                "collector_id": COLLECTOR, "tick_ms": 1000, "devices": devices}
    encoded = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return encoded, point_ids[:readings]


def signed_chain(blocks: int, readings: int) -> tuple[list[tuple[Any, ...]], bytes]:
    """Rows for the ledger's blocks table: the CONFIG block, then the readings blocks."""
    signer = Signer(signing_key=nacl.signing.SigningKey.generate())
    document, point_ids = config_document(readings)
    digest = hashlib.sha256(document).digest()
    drafts = [BlockDraft(COLLECTOR, BASE_MS, BASE_MS, (), digest, pb.BLOCK_KIND_CONFIG, document)]
    for n in range(blocks):
        start = BASE_MS + n * 1000
        drafts.append(BlockDraft(COLLECTOR, start, start + 1000, [
            ReadingValue(point_id, start, round(30.0 + 10 * math.sin(n / 50 + i), 6)
                         if i % 10 else float(n % 4 == 0),
                         pb.QUALITY_CALIBRATION if n % 300 < 30 else pb.QUALITY_NORMAL)
            for i, point_id in enumerate(point_ids)], digest))
    rows, previous = [], GENESIS_HASH
    for sequence, draft in enumerate(drafts, start=1):
        payload = encode_block(draft, sequence=sequence, previous_hash=previous)
        envelope = signer.envelope(payload)
        rows.append((COLLECTOR, sequence, block_hash(payload), previous, payload,
                     envelope.signature, signer.key_id, draft.window_start_unix_ms,
                     draft.window_end_unix_ms, len(draft.readings), draft.kind, "bench", 0))
        previous = block_hash(payload)
    return rows, document


async def fill_ledger(path: Path, blocks: int, readings: int) -> bytes:
    """Write the chain straight into a new SQLite ledger (the schema made by SqliteLedger)."""
    ledger = SqliteLedger(path=path)
    await ledger.open()
    await ledger.close()
    rows, document = signed_chain(blocks, readings)
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO blocks (collector_id, sequence, hash, previous_hash, payload, "
                       "signature, key_id, window_start_unix_ms, window_end_unix_ms, "
                       "reading_count, kind, transport, received_unix_ms) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        db.execute("INSERT INTO chain_heads VALUES (?, ?, ?, ?, ?)",
                   (COLLECTOR, len(rows), rows[-1][2], blocks * readings, rows[-1][7]))
    return document


def start_victoria(data: Path, port: int) -> subprocess.Popen[bytes]:
    """A VictoriaMetrics of its own on `port`, once it answers /health; RuntimeError if not."""
    binary = shutil.which("victoria-metrics") or "/usr/bin/victoria-metrics"
    if not Path(binary).exists():
        raise RuntimeError("victoria-metrics is not installed (apt-get install victoria-metrics)")
    process = subprocess.Popen(
        [binary, f"-httpListenAddr=127.0.0.1:{port}", f"-storageDataPath={data}",
         "-retentionPeriod=100y", "-dedup.minScrapeInterval=1ms", "-search.latencyOffset=0s",
         "-loggerLevel=ERROR"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                if answer.read() == b"OK":
                    return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError("victoria-metrics did not start")


def count_samples(port: int) -> int:
    """Quality samples (one per reading) in the store."""
    base = f"http://127.0.0.1:{port}"
    with urllib.request.urlopen(f"{base}/internal/force_flush", timeout=60):
        pass
    query = urllib.parse.urlencode({"match[]": '{__name__=~".+_quality"}', "start": "0"})
    with urllib.request.urlopen(f"{base}/api/v1/export?{query}", timeout=300) as answer:
        return sum(len(json.loads(line)["timestamps"])
                   for line in answer.read().decode().splitlines() if line.strip())


def formatting_rates(blocks: int, readings: int, document: bytes) -> dict[str, Any]:
    """Lines per second: the string-building formatter (with and without protobuf decoding)
    against influxdb_client's Point helper making the same lines."""
    rows, _ = signed_chain(min(blocks, 1000), readings)
    payloads = [row[4] for row in rows[1:]]
    digest = hashlib.sha256(document).digest()
    formatter = LineFormatter()
    formatter.add_config(COLLECTOR, digest, document)
    started = time.perf_counter()
    lines: list[str] = []
    for payload in payloads:
        formatter.block_lines(pb.Block.FromString(payload), lines)
    decode_and_format = len(lines) / (time.perf_counter() - started)
    decoded = [pb.Block.FromString(payload) for payload in payloads]
    formatter = LineFormatter()
    formatter.add_config(COLLECTOR, digest, document)
    started = time.perf_counter()
    lines = []
    for block in decoded:
        formatter.block_lines(block, lines)
    format_only = len(lines) / (time.perf_counter() - started)
    meta = points_of_config(document)
    flags = {1: "N", 2: "C"}
    reference: list[str] = []
    started = time.perf_counter()
    for block in decoded[:max(1, 20_000 // readings)]:
        for reading in block.readings:
            point = meta[reading.point_id]
            tags = point.tags(block.collector_id)
            tags["flag"] = flags[reading.quality]
            reference.append(point_helper_line(
                point.measurement, tags, {"value": reading.value, "quality": reading.quality},
                reading.time_unix_ms))
    point_helper = len(reference) / (time.perf_counter() - started)
    return {"lines_per_s_decode_and_format": round(decode_and_format),
            "lines_per_s_format_only": round(format_only),
            "point_helper_lines_per_s": round(point_helper),
            "speedup_vs_point_helper": round(format_only / point_helper, 1),
            "identical_to_point_helper": reference == lines[:len(reference)]}


async def drain(ledger_path: Path, port: int, batch_lines: int) -> tuple[TimeSeriesSink, float,
                                                                          float]:
    ledger = SqliteLedger(path=ledger_path)
    writer = InfluxWriter(url=f"http://127.0.0.1:{port}", bucket="bench")
    sink = TimeSeriesSink(ledger=ledger, writer=writer, batch_lines=batch_lines)
    try:
        await ledger.open()
        cpu, wall = time.process_time(), time.perf_counter()
        while await sink.run_once():
            pass
        return sink, time.perf_counter() - wall, time.process_time() - cpu
    finally:
        await writer.close()
        await ledger.close()


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Fill a ledger, drain it into a fresh VictoriaMetrics, read every sample back."""
    points = args.blocks * args.readings
    parameters = {"blocks": args.blocks, "readings_per_block": args.readings,
                  "batch_lines": args.batch_lines, "store": "victoria-metrics"}
    with tempfile.TemporaryDirectory(prefix="stackline-bench-sink-") as folder:
        root = Path(folder)
        _progress(f"filling a ledger with {args.blocks:,} blocks of {args.readings} readings")
        document = asyncio.run(fill_ledger(root / "ledger.sqlite", args.blocks, args.readings))
        port = free_port()
        try:
            victoria = start_victoria(root / "victoria", port)
        except RuntimeError as exc:
            return result("sink", parameters, None, str(exc))
        try:
            _progress(f"draining {points:,} points into VictoriaMetrics")
            vm_cpu = cpu_seconds(victoria.pid)
            sink, seconds, cpu = asyncio.run(drain(root / "ledger.sqlite", port, args.batch_lines))
            vm_cpu = cpu_seconds(victoria.pid) - vm_cpu
            stored = count_samples(port)
        finally:
            victoria.send_signal(signal.SIGKILL)
            victoria.wait()
    _progress("formatting rates against influxdb_client's Point helper")
    formatting = formatting_rates(args.blocks, args.readings, document)
    failure = None
    if stored != points or sink.stats.points_written != points:
        failure = (f"the store holds {stored} readings and the sink wrote "
                   f"{sink.stats.points_written}; the ledger holds {points}")
    elif not formatting["identical_to_point_helper"]:
        failure = "the sink's lines differ from the Point helper's for the same readings"
    _progress(f"{points:,} points in {seconds:.2f} s ({cpu:.2f} sink CPU-s), {stored:,} read back")
    return result("sink", parameters, {
        "points_per_s": round(points / seconds),
        "points_per_cpu_s": round(points / cpu),
        "points": points,
        "seconds": round(seconds, 3),
        "sink_cpu_s": round(cpu, 3),
        "sink_cpu_us_per_point": round(cpu / points * 1e6, 2),
        "requests": sink.stats.requests,
        "victoria_metrics_cpu_s": round(vm_cpu, 3),
        "read_back": stored,
        "formatting": formatting,
    }, failure)


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--readings", type=int, default=40)
    parser.add_argument("--batch-lines", type=int, default=5000)
    parser.add_argument("--quick", action="store_true", help="2,000 blocks")
    args = parser.parse_args()
    if args.quick:
        args.blocks = 2000
    return emit(measure(args))


if __name__ == "__main__":
    sys.exit(main())
