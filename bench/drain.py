"""Wall time for a collector holding a 24-hour backlog (86,400 one-second blocks of 40 readings)
to empty it into a gateway over gRPC, and over MQTT (scenario `drain`).

The backlog is a real collector buffer (collector/buffer.py's SqliteBuffer) filled as the
collector's runtime fills it: a configuration block, then one block a second, each sealed by
`collector.runtime.seal` (encoded, signed, chained, its log leaf hash kept). Building it takes a
while, so it is kept under bench/results/drain-cache/ (keyed by blocks and readings per block,
with its collector key) and copied for every run. The collector is enrolled at a real
`stackline gateway run` process (SQLite ledger; over MQTT, through a Mosquitto of its own), and
then the collector's real uplink (collector/uplink_grpc.py or uplink_mqtt.py, with its default
batching, and a receipt store as `stackline collector run` has) runs in this process on the
copied buffer. The clock runs from the uplink's start until the gateway's ack has emptied the
buffer; this process does nothing else meanwhile, so its CPU is the collector's.

Nothing is reported unless the buffer is empty, the ledger's head is the last block and the
ledger verifies (signatures, links, heads, the transparency log).

    python bench/drain.py                       # 86,400 blocks, gRPC then MQTT
    python bench/drain.py --transport mqtt --blocks 3600
    python bench/drain.py --quick               # 3,600 blocks (an hour), both transports
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
from common import (
    BLOCK_BASE_UNIX_MS,
    check_ledger,
    config_draft,
    cpu_seconds,
    emit,
    free_port,
    log_tail,
    machine_busy_seconds,
    peak_rss_mib,
    readings_draft,
    result,
    self_cpu_seconds,
    spawn_gateway,
    start_mosquitto,
    stop,
    wait_for_log,
    wait_for_port,
)

from collector.buffer import SqliteBuffer
from collector.config import BufferConfig, GrpcUplinkConfig, MqttUplinkConfig
from collector.receipts import LogKey, ReceiptStore
from collector.runtime import seal
from collector.uplink import Uplink, UplinkBase
from collector.uplink_grpc import GrpcUplink
from collector.uplink_mqtt import MqttUplink
from gateway.ledger import open_ledger
from gateway.runtime import enroll_collector
from proto.credentials import BrokerCredentials
from proto.keys import generate_key_files, load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import Signer

SCENARIO = "drain"
BENCH = Path(__file__).resolve().parent
CACHE = BENCH / "results" / "drain-cache"
CACHE_FORMAT = 2  # bump when what a cached buffer holds changes
COLLECTOR_ID = "bench-drain-c1"
LOG_ORIGIN = "bench.stackline/drain"
PREFIX = "stackline/v1"
BUFFER_MAX_BYTES = BufferConfig().max_bytes
READY_TIMEOUT_S = 30.0


def _cached_paths(blocks: int, readings: int) -> tuple[Path, Path]:
    stem = f"backlog-{blocks}x{readings}-v{CACHE_FORMAT}"
    return CACHE / f"{stem}.sqlite", CACHE / f"{stem}.key"


def cached_backlog(blocks: int, readings: int) -> tuple[Path, Path]:
    """The filled buffer and its collector's key file, built on first use."""
    buffer_path, key_path = _cached_paths(blocks, readings)
    if buffer_path.exists() and key_path.exists():
        print(f"  the backlog is cached: {buffer_path.relative_to(BENCH.parent)}", file=sys.stderr)
        return buffer_path, key_path
    CACHE.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
    try:
        generate_key_files(building / "collector.key")
        signer = Signer(signing_key=load_signing_key(building / "collector.key"))
        buffer = SqliteBuffer(path=building / "buffer.sqlite", max_bytes=BUFFER_MAX_BYTES)
        started = time.monotonic()
        for sequence in range(1, blocks + 1):
            draft = (config_draft(COLLECTOR_ID) if sequence == 1
                     else readings_draft(COLLECTOR_ID, sequence, readings))
            buffer.append(seal(buffer, signer, draft, BLOCK_BASE_UNIX_MS + sequence * 1000))
            if sequence % 20_000 == 0:
                print(f"  building the backlog: {sequence:,} of {blocks:,} blocks "
                      f"({time.monotonic() - started:.0f} s)", file=sys.stderr)
        buffer.close()  # the last connection: SQLite folds the WAL into the file
        print(f"  built {blocks:,} blocks in {time.monotonic() - started:.0f} s (kept for the "
              "next run)", file=sys.stderr)
        os.replace(building / "collector.key", key_path)
        os.replace(building / "buffer.sqlite", buffer_path)  # last: its presence means complete
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return buffer_path, key_path


async def wait_for_mqtt_gateway(port: int, hello: bytes) -> None:
    """Until a gateway answers a hello through the broker (it has subscribed), so that the
    drain does not start by losing its first messages to nobody."""
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-drain-probe",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"{PREFIX}/{COLLECTOR_ID}/acks", qos=1)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            await client.publish(f"{PREFIX}/{COLLECTOR_ID}/blocks", hello, qos=1)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await anext(client.messages)
                    return
        raise RuntimeError(f"no gateway answered through the broker in {READY_TIMEOUT_S:.0f} s")


async def drain(uplink: Uplink, buffer: SqliteBuffer, acked: asyncio.Event, last: int,
                timeout_s: float) -> None:
    """Run the uplink until the buffer is acknowledged through `last`."""
    task = asyncio.create_task(uplink.run(), name="uplink")
    try:
        async with asyncio.timeout(timeout_s):
            while buffer.acknowledged_through() < last:
                if task.done():
                    task.result()
                    raise RuntimeError("the uplink stopped")
                acked.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await acked.wait()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def run_one(args: argparse.Namespace, transport: str, cached: Path, key_file: Path
                  ) -> dict[str, Any]:
    """One transport: a fresh copy of the backlog, a gateway (and a broker), the drain, checks."""
    tmp = Path(tempfile.mkdtemp(prefix="stackline-drain-"))
    parameters = {"transport": transport, "blocks": args.blocks,
                  "readings_per_block": args.readings, "ledger": "sqlite"}
    processes = []
    try:
        buffer_path = tmp / "buffer.sqlite"
        shutil.copyfile(cached, buffer_path)
        signer = Signer(signing_key=load_signing_key(key_file))
        location = str(tmp / "ledger.sqlite")
        ledger = open_ledger(location)
        await enroll_collector(ledger, collector_id=COLLECTOR_ID, public_key=signer.public_key)
        await ledger.close()
        generate_key_files(tmp / "log-signing.key")
        log_key = LogKey(LOG_ORIGIN, bytes(load_signing_key(tmp / "log-signing.key").verify_key))
        gateway_config: dict[str, Any] = {
            "gateway": {"id": "bench-drain"}, "ledger": {"path": location},
            "log": {"key_file": str(tmp / "log-signing.key"), "origin": LOG_ORIGIN}}
        broker_pid = None
        if transport == "grpc":
            port = free_port()
            gateway_config["listen"] = {"grpc": f"127.0.0.1:{port}"}
            gateway = spawn_gateway(gateway_config, tmp)
            processes.append(gateway)
            wait_for_port(port, process=gateway)
        else:
            broker, port = start_mosquitto(tmp)
            processes.append(broker)
            broker_pid = broker.pid
            gateway_config["listen"] = {"grpc": None}
            gateway_config["mqtt"] = {"host": "127.0.0.1", "port": port, "insecure": True}
            gateway = spawn_gateway(gateway_config, tmp)
            processes.insert(0, gateway)
            await wait_for_mqtt_gateway(port, pb.IngestRequest(hello=pb.Hello(
                collector_id=COLLECTOR_ID, key_id=signer.key_id)).SerializeToString())

        buffer = SqliteBuffer(path=buffer_path, max_bytes=BUFFER_MAX_BYTES)
        receipts = ReceiptStore(path=buffer_path, leaves=buffer, key=log_key)
        acked = asyncio.Event()
        uplink: UplinkBase
        if transport == "grpc":
            uplink = GrpcUplink(config=GrpcUplinkConfig(target=f"127.0.0.1:{port}"),
                                collector_id=COLLECTOR_ID, key_id=signer.key_id, buffer=buffer,
                                wakeup=asyncio.Event(), acked=acked, receipts=receipts)
        else:
            uplink = MqttUplink(config=MqttUplinkConfig(host="127.0.0.1", port=port,
                                                        insecure=True),
                                credentials=BrokerCredentials(), collector_id=COLLECTOR_ID,
                                key_id=signer.key_id, buffer=buffer, wakeup=asyncio.Event(),
                                acked=acked, receipts=receipts)
        last = buffer.chain_state().sequence
        print(f"  draining {buffer.depth().blocks:,} blocks over {transport} "
              f"({uplink!r})...", file=sys.stderr)
        collector_before = self_cpu_seconds()
        gateway_before = cpu_seconds(gateway.pid)
        broker_before = cpu_seconds(broker_pid) if broker_pid else 0.0
        machine_before = machine_busy_seconds()
        started = time.monotonic()
        await drain(uplink, buffer, acked, last, args.timeout_s)
        wall_s = time.monotonic() - started
        collector_cpu_s = self_cpu_seconds() - collector_before
        gateway_cpu_s = cpu_seconds(gateway.pid) - gateway_before
        broker_cpu_s = cpu_seconds(broker_pid) - broker_before if broker_pid else None
        # on a shared machine, what else ran meanwhile: a wall time is only as good as this
        others_cpu_s = (machine_busy_seconds() - machine_before - collector_cpu_s - gateway_cpu_s
                        - (broker_cpu_s or 0.0))
        left = buffer.depth().blocks
        stats = uplink.stats
        receipt_counts = {k: v for k, v in receipts.stats.by_status.items() if v}
        receipts.close()
        buffer.close()
        print(f"  drained in {wall_s:.1f} s; waiting for the transparency log...",
              file=sys.stderr)
        await wait_for_log(location, last)
        gateway_rss = peak_rss_mib(gateway.pid)
    except Exception as exc:
        while isinstance(exc, ExceptionGroup):
            exc = exc.exceptions[0]
        return result(SCENARIO, parameters, None, f"{type(exc).__name__}: {exc}; gateway log: "
                      f"{log_tail(tmp / 'gateway.log')}")
    finally:
        for process in processes:
            stop(process)
    try:
        print("  verifying the ledger...", file=sys.stderr)
        report, failure = await check_ledger(location, {COLLECTOR_ID: last}, args.readings)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failure is None and left:
        failure = f"{left} blocks are still in the collector's buffer"
    readings = report.total("readings")
    return result(SCENARIO, parameters, {
        "wall_s": round(wall_s, 2),
        "blocks_per_s": round(last / wall_s),
        "readings_per_s": round(readings / wall_s),
        "times_real_time": round(last / wall_s),  # a block is a second of data
        "readings": readings,
        "collector_cpu_s": round(collector_cpu_s, 2),
        "gateway_cpu_s": round(gateway_cpu_s, 2),
        "broker_cpu_s": None if broker_cpu_s is None else round(broker_cpu_s, 2),
        "other_processes_cpu_s": round(max(0.0, others_cpu_s), 2),
        "gateway_peak_rss_mib": round(gateway_rss, 1),
        "sessions": stats.sessions,
        "batches_sent": stats.batches_sent,
        "blocks_sent": stats.blocks_sent,
        "receipts": receipt_counts,
        "chains_verified": report.ok,
    }, failure)


async def run(args: argparse.Namespace) -> int:
    print(f"drain: a backlog of {args.blocks:,} blocks of {args.readings} readings",
          file=sys.stderr)
    cached, key_file = cached_backlog(args.blocks, args.readings)
    status = 0
    for transport in (["grpc", "mqtt"] if args.transport == "both" else [args.transport]):
        status |= emit(await run_one(args, transport, cached, key_file))
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--transport", choices=("grpc", "mqtt", "both"), default="both")
    parser.add_argument("--blocks", type=int, default=86_400,
                        help="the backlog: one block a second, the first its configuration")
    parser.add_argument("--readings", type=int, default=40, help="readings per block")
    parser.add_argument("--timeout-s", type=float, default=1200.0,
                        help="give up on a drain after this long")
    parser.add_argument("--quick", action="store_true", help="3,600 blocks (an hour)")
    args = parser.parse_args()
    if args.quick:
        args.blocks, args.timeout_s = 3600, 120.0
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="  %(levelname)s %(name)s: %(message)s")
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
