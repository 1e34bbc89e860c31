"""Readings polled, decoded, signed and buffered per collector CPU-second.

A temporary plant of `--devices` Modbus TCP devices (one port each, as instruments with their own
address) of `--points` float32 holding registers each, polled every `--poll-ms`, is served by
`stackline simulate` in one process and read by `stackline collector run` in another. The
collector's uplink points at a port where nothing listens, so every block stays in its durable
SQLite buffer (signed, chained, synced) as it would during an outage.

After the first blocks and a warm-up, the collector's user + system CPU time is read from /proc at
the start and the end of a measured interval (aligned to the middle of a tick, so that as many
blocks are sealed inside it as readings are counted). Then the buffer is read back: every block's
signature and chain link is checked (proto.wire, proto.chain) from the configuration block on, and
the readings whose poll started inside the interval are counted, poll by poll (each poll must
carry every point of its device). The figure is those readings (the answered ones: a reading
flagged for a timeout was not decoded) divided by the collector's CPU seconds; the simulator's CPU
is shown beside it. A chain that does not verify or a poll with
missing points is reported as a failure instead. Prints one JSON object per tick length measured:
by default 1000 ms (the collector's default: one block of 8,000 readings a second) and 100 ms (a
block per round of polls).

    python bench/collector_cpu.py [--devices 20] [--points 40] [--poll-ms 100] [--seconds 30]
    python bench/collector_cpu.py --quick      # the same checks over a 3-second interval

(Named collector_cpu.py, not collector.py: a scenario's own folder comes first on its path, so a
bench/collector.py would hide the collector package from every scenario that imports it.)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from common import cpu_seconds, emit, free_port, result, spawn, stop, wait_for_port

from proto.chain import ChainHead, Placement, place_block
from proto.errors import VerificationError
from proto.keys import generate_key_files, load_public_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import Verifier, block_hash, decode_block

START_TIMEOUT_S = 30.0
PLANT = "bench-plant"


STARTED = time.monotonic()


def _progress(text: str) -> None:
    print(f"[{time.monotonic() - STARTED:5.1f} s] {text}", file=sys.stderr, flush=True)


def write_plant(folder: Path, *, devices: int, points: int, poll_ms: int, tick_ms: int) -> Path:
    """A profile of `points` float32 holding registers and a plant of `devices` devices using
    it, each on its own port; the collector's key and buffer beside them."""
    profile = {
        "name": "bench-float-rack",
        "description": "float32 holding registers, high word first, one request per poll",
        "defaults": {"register_type": "holding", "byte_order": "ABCD"},
        "points": [{"name": f"p{i:02d}", "address": 2 * i, "data_type": "float32",
                    "quantity": f"bench.q{i:02d}", "unit": "mg/m3",
                    "simulation": {"mean": 20.0 + i, "amplitude": 5.0, "period_s": 600,
                                   "noise": 0.2}}
                   for i in range(points)],
    }
    (folder / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    plant = {
        "plant": {"id": PLANT, "name": "collector benchmark"},
        "collector": {
            "id": f"{PLANT}-c1", "key_file": "collector.key", "tick_ms": tick_ms,
            "buffer": {"path": "buffer.sqlite"},
            # nothing listens here: every block stays in the buffer, as during an outage
            "uplink": {"grpc": {"target": f"127.0.0.1:{free_port()}"}},
        },
        "devices": [{"id": f"dev-{d:02d}", "profile": "profile.yaml", "emission_unit": "unit-1",
                     "tcp": {"host": "127.0.0.1", "port": free_port()}, "unit_id": 1,
                     "timeout_ms": max(10, poll_ms * 4 // 5), "poll_interval_ms": poll_ms}
                    for d in range(devices)],
    }
    path = folder / "plant.yaml"
    path.write_text(yaml.safe_dump(plant, sort_keys=False))
    generate_key_files(folder / "collector.key")
    return path


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of a process, MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def read_buffer(path: Path) -> tuple[list[tuple[int, bytes]], bytes]:
    """The buffered (sequence, envelope) rows in order, and the head hash the buffer records."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT sequence, envelope FROM blocks ORDER BY sequence").fetchall()
        head = db.execute("SELECT hash FROM chain").fetchone()
    return [(int(sequence), bytes(envelope)) for sequence, envelope in rows], bytes(head[0])


def newest_window_end_ms(path: Path) -> int:
    """End of the window of the newest buffered readings block (0 before there is one)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT envelope FROM blocks ORDER BY sequence DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # not made yet
        return 0
    if row is None:
        return 0
    block = pb.Block.FromString(pb.SignedBlock.FromString(bytes(row[0])).payload)
    return block.window_end_unix_ms if block.kind == pb.BLOCK_KIND_READINGS else 0


def verify_chain(rows: list[tuple[int, bytes]], head_hash: bytes,
                 verifier: Verifier) -> tuple[list[pb.Block], str | None]:
    """Decode and check every buffered block: the signature with the collector's key, the
    sequence and link with the chain rule, a configuration block announcing the digest the
    readings are taken under. The blocks, and what is wrong (None when nothing)."""
    head, announced = ChainHead.empty(), set[bytes]()
    blocks: list[pb.Block] = []
    for sequence, envelope in rows:
        signed = pb.SignedBlock.FromString(envelope)
        try:
            if signed.key_id != verifier.key_id:
                return blocks, f"block {sequence} is signed with key {signed.key_id}"
            verifier.verify(signed.payload, signed.signature)
            block = decode_block(signed.payload)
        except VerificationError as exc:
            return blocks, f"block {sequence}: {exc}"
        digest = block_hash(signed.payload)
        placement = place_block(head=head, sequence=block.sequence, block_hash=digest,
                                previous_hash=block.previous_hash, stored_at_sequence=None)
        if block.sequence != sequence or placement is not Placement.NEXT:
            return blocks, f"block {sequence} does not extend the chain: {placement.value}"
        if block.kind == pb.BLOCK_KIND_CONFIG:
            announced.add(block.config_digest)
        elif block.config_digest not in announced:
            return blocks, f"block {sequence} is under a configuration no block announced"
        head = ChainHead(sequence, digest)
        blocks.append(block)
    if head.hash != head_hash:
        return blocks, "the buffer's recorded head is not the hash of its last block"
    return blocks, None


def count_interval(blocks: list[pb.Block], *, start_ms: int, end_ms: int, points: int,
                   poll_ms: int, devices: int) -> tuple[dict[str, Any], str | None]:
    """Readings of the polls of the slots in [start_ms, end_ms) (a poll starts at or after its
    slot, a multiple of poll_ms, and is counted in its slot's window even when it started late,
    after the window's end): counts, lateness and completeness."""
    polls: Counter[tuple[str, int]] = Counter()
    flagged = readings = 0
    used = set()
    for block in blocks:
        for reading in block.readings:
            if start_ms <= reading.time_unix_ms - reading.time_unix_ms % poll_ms < end_ms:
                device = reading.point_id.rsplit("/", 1)[0]
                polls[(device, reading.time_unix_ms)] += 1
                readings += 1
                flagged += reading.quality != pb.QUALITY_NORMAL
                used.add(block.sequence)
    incomplete = [key for key, count in polls.items() if count != points]
    if incomplete:
        device, at = incomplete[0]
        return {}, (f"{len(incomplete)} poll(s) do not carry every point: {device} at {at} has "
                    f"{polls[incomplete[0]]} of {points} readings")
    slots = len(range(-(-start_ms // poll_ms) * poll_ms, end_ms, poll_ms))
    lateness = sorted(at % poll_ms for _, at in polls)  # a poll starts at or after its slot
    size = [block.ByteSize() for block in blocks if block.sequence in used]
    return {
        "readings": readings,
        "expected_readings": slots * devices * points,
        "polls": len(polls),
        "expected_polls": slots * devices,
        "missed_polls": slots * devices - len(polls),  # slots passed over: a poll ran late
        "flagged_readings": flagged,
        "blocks": len(used),
        "mean_block_bytes": round(statistics.fmean(size)) if size else 0,
        "poll_lateness_ms": {
            "p50": lateness[len(lateness) // 2] if lateness else None,
            "p99": lateness[len(lateness) * 99 // 100] if lateness else None,
            "max": lateness[-1] if lateness else None,
        },
    }, None


def parameters_of(args: argparse.Namespace, tick_ms: int) -> dict[str, Any]:
    # float32 holding registers, raw registers kept, the uplink to a port where nothing listens
    return {"devices": args.devices, "points_per_device": args.points, "poll_ms": args.poll_ms,
            "tick_ms": tick_ms, "seconds": args.seconds}


def measure(args: argparse.Namespace, tick_ms: int, folder: Path) -> dict[str, Any]:
    """Run the simulator and the collector, measure, verify; the result."""
    config = write_plant(folder, devices=args.devices, points=args.points, poll_ms=args.poll_ms,
                         tick_ms=tick_ms)
    plant = yaml.safe_load(config.read_text())
    buffer = folder / "buffer.sqlite"
    stackline = [sys.executable, "-m", "proto.cli"]
    simulator = spawn([*stackline, "simulate", "--config", str(config)], folder / "simulator.log")
    collector = None
    try:
        for device in plant["devices"]:
            wait_for_port(device["tcp"]["port"], process=simulator, timeout_s=START_TIMEOUT_S)
        collector = spawn([*stackline, "collector", "run", "--config", str(config)],
                          folder / "collector.log")
        _progress(f"tick {tick_ms} ms: simulator serves {args.devices} devices x {args.points} "
                  f"points every {args.poll_ms} ms; collector started (pid {collector.pid})")
        deadline = time.monotonic() + START_TIMEOUT_S
        while newest_window_end_ms(buffer) == 0:
            if collector.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector stored no readings; see "
                                   f"{folder / 'collector.log'}")
            time.sleep(0.1)
        # warm up, then start half way through a tick: as many blocks are sealed inside the
        # interval as there are windows of counted readings
        tick_s = tick_ms / 1000
        start = time.time() + args.warmup_s
        time.sleep(max(0.0, (math.floor(start / tick_s - 0.5) + 1.5) * tick_s - time.time()))
        _progress(f"measuring for {args.seconds:.0f} s")
        load_1m = os.getloadavg()[0]
        t0, cpu0, sim0 = time.time(), cpu_seconds(collector.pid), cpu_seconds(simulator.pid)
        time.sleep(args.seconds)
        t1, cpu1, sim1 = time.time(), cpu_seconds(collector.pid), cpu_seconds(simulator.pid)
        rss, peak_rss = rss_mib(collector.pid)
        # a reading goes into the block of the window its poll ended in: wait for the window
        # in which a poll started before t1 ends at the latest
        sealed_by = ((int(t1 * 1000) + args.poll_ms) // tick_ms + 1) * tick_ms
        deadline = time.monotonic() + START_TIMEOUT_S
        while newest_window_end_ms(buffer) < sealed_by:
            if collector.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the collector stopped sealing blocks; see "
                                   f"{folder / 'collector.log'}")
            time.sleep(0.1)
        rows, head_hash = read_buffer(buffer)
    finally:
        for process in (collector, simulator):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
    try:
        # check what was buffered while the processes stop (the collector gives a gateway that
        # is not there 5 s to take its blocks)
        verifier = Verifier(public_key=load_public_key(folder / "collector.key.pub"))
        blocks, failure = verify_chain(rows, head_hash, verifier)
        counts: dict[str, Any] = {}
        if failure is None:
            counts, failure = count_interval(blocks, start_ms=int(t0 * 1000),
                                             end_ms=int(t1 * 1000), points=args.points,
                                             poll_ms=args.poll_ms, devices=args.devices)
        if failure is None and not counts["readings"]:
            failure = "no readings were polled in the measured interval"
    finally:
        for process in (collector, simulator):
            if process is not None:
                stop(process)
    wall_s, cpu_s = t1 - t0, cpu1 - cpu0
    # only readings of answered polls: a flagged one (a timeout) was not decoded
    readings = counts.get("readings", 0) - counts.get("flagged_readings", 0)
    _progress(f"{len(rows)} buffered blocks verified; {readings:,} answered readings in "
              f"{wall_s:.1f} s for {cpu_s:.2f} collector CPU-s")
    return result("collector", parameters_of(args, tick_ms), {
        "readings_per_cpu_s": round(readings / cpu_s) if cpu_s else None,
        "readings_per_s": round(readings / wall_s),
        "collector_cpu_s": round(cpu_s, 2),
        "collector_cpu_us_per_reading": round(cpu_s / readings * 1e6, 1) if readings else None,
        "collector_cpu_share": round(cpu_s / wall_s, 3),
        "simulator_cpu_s": round(sim1 - sim0, 2),
        "wall_s": round(wall_s, 2),
        **counts,
        "blocks_verified": len(rows),
        "collector_rss_mib": round(rss, 1),
        "collector_peak_rss_mib": round(peak_rss, 1),
        "machine_load_1m": round(load_1m, 2),
    }, failure)


def run(args: argparse.Namespace, tick_ms: int) -> dict[str, Any]:
    """One measurement in a fresh folder (or the kept one); a failure to run is a result too."""
    try:
        if args.keep:
            folder = args.keep / f"tick-{tick_ms}"
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            return measure(args, tick_ms, folder)
        with tempfile.TemporaryDirectory(prefix="stackline-bench-collector-") as name:
            return measure(args, tick_ms, Path(name))
    except RuntimeError as exc:
        return result("collector", parameters_of(args, tick_ms), None, str(exc))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--points", type=int, default=40, help="float32 points per device")
    parser.add_argument("--poll-ms", type=int, default=100)
    parser.add_argument("--tick-ms", type=int, action="append",
                        help="one block per tick; repeat for one result per tick "
                             "(default: 1000, the collector's default, then 100)")
    parser.add_argument("--seconds", type=float, default=30.0, help="measured interval")
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--keep", type=Path, help="keep the plant, logs and buffer in this folder")
    parser.add_argument("--quick", action="store_true",
                        help="a 3-second interval after 0.5 s of warm-up, tick 1000 ms only")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup_s = 3.0, 0.5
    ticks = args.tick_ms or ([1000] if args.quick else [1000, 100])
    status = 0
    for tick_ms in ticks:
        status |= emit(run(args, tick_ms))
    return status


if __name__ == "__main__":
    sys.exit(main())
