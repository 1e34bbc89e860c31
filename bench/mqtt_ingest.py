"""Blocks and readings per second through Mosquitto into one gateway process, or several.

A load process (this one) pre-signs a backlog for each simulated collector, then sends it as a
collector does over MQTT: batches of `--batch` blocks, one message in flight per collector, the
next only after the gateway's end-to-end ack. The gateways are real `stackline gateway run`
processes sharing the subscription and one PostgreSQL ledger (a throwaway database). Prints one
JSON object; fails instead of printing a figure if any block is missing or a chain does not verify.

    python bench/mqtt_ingest.py --gateways 1
    python bench/mqtt_ingest.py --gateways 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import nacl.signing
import yaml
from common import cpu_seconds, free_port

from gateway.ledger import PostgresLedger
from gateway.runtime import enroll_collector
from gateway.verifier import verify_ledger
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, ReadingValue, Signer, block_hash, encode_block

ADMIN_URL = os.environ.get("STACKLINE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")




def chain(collector_id: str, signer: Signer, blocks: int, readings: int) -> list[pb.SignedBlock]:
    """A pre-signed backlog: one block per second of `readings` readings each."""
    out, previous = [], GENESIS_HASH
    base = 1_795_000_000_000
    for sequence in range(1, blocks + 1):
        start = base + sequence * 1000
        values = [ReadingValue(f"{collector_id}/dev/p{n}", start, 40.0 + n + sequence % 7,
                               pb.QUALITY_NORMAL, (16928, 0)) for n in range(readings)]
        payload = encode_block(BlockDraft(collector_id, start, start + 1000, values, bytes(32)),
                               sequence=sequence, previous_hash=previous)
        out.append(signer.envelope(payload))
        previous = block_hash(payload)
    return out


async def send_backlog(port: int, collector_id: str, blocks: list[pb.SignedBlock], batch: int,
                       ack_timeout_s: float = 10.0) -> None:
    """Send like a collector: one batch in flight, the next after the ack; resend on timeout."""
    topic = f"stackline/v1/{collector_id}/blocks"
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"load-{collector_id}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe(f"stackline/v1/{collector_id}/acks", qos=1)
        acked = 0
        messages = client.messages
        while acked < len(blocks):
            request = pb.IngestRequest(batch=pb.Batch(blocks=blocks[acked:acked + batch]))
            await client.publish(topic, request.SerializeToString(), qos=1)
            try:
                async with asyncio.timeout(ack_timeout_s):
                    while True:
                        message = await anext(messages)
                        response = pb.IngestResponse.FromString(bytes(message.payload))
                        if response.HasField("error") or response.ack.rejections:
                            raise RuntimeError(f"{collector_id}: refused: {response}")
                        if response.ack.stored_through_sequence > acked:
                            acked = response.ack.stored_through_sequence
                            break
            except TimeoutError:
                continue  # a gateway died holding the message: send again from the ack


def _spawn(args: list[str], log: Path | None) -> subprocess.Popen[bytes]:
    out = log.open("ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    database = f"stackline_bench_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{database}"')
    await admin.close()
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{database}"
    tmp = Path(tempfile.mkdtemp(prefix="stackline-bench-"))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    (tmp / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 16777216\n"
        + ("user root\n" if os.geteuid() == 0 else ""))
    broker = _spawn([mosquitto, "-c", str(tmp / "mosquitto.conf")], None)
    gateways: list[subprocess.Popen[bytes]] = []
    try:
        ledger = PostgresLedger(url=url)
        await ledger.open()
        print(f"signing {args.collectors} x {args.blocks} blocks of {args.readings} readings...",
              file=sys.stderr)
        backlogs = {}
        for index in range(args.collectors):
            collector_id = f"bench-c{index:03d}"
            signer = Signer(signing_key=nacl.signing.SigningKey.generate())
            await enroll_collector(ledger, collector_id=collector_id, public_key=signer.public_key)
            backlogs[collector_id] = chain(collector_id, signer, args.blocks, args.readings)
        await ledger.close()
        for index in range(args.gateways):
            config = tmp / f"gateway-{index}.yaml"
            config.write_text(yaml.safe_dump({
                "gateway": {"id": f"bench-gw{index}"}, "listen": {"grpc": None},
                "ledger": {"url": url},
                "mqtt": {"host": "127.0.0.1", "port": port, "insecure": True},
            }))
            gateways.append(_spawn(
                [sys.executable, "-m", "proto.cli", "gateway", "run", "--config", str(config)],
                tmp / f"gateway-{index}.log"))
        await asyncio.sleep(args.warmup_s)  # imports, pool, subscription
        before = [cpu_seconds(g.pid) for g in gateways]
        load_before = resource.getrusage(resource.RUSAGE_SELF)
        print(f"sending through {args.gateways} gateway(s)...", file=sys.stderr)
        started = time.monotonic()
        await asyncio.gather(*(send_backlog(port, cid, blocks, args.batch)
                               for cid, blocks in backlogs.items()))
        wall = time.monotonic() - started
        after = [cpu_seconds(g.pid) for g in gateways]
        load_after = resource.getrusage(resource.RUSAGE_SELF)
        checker = PostgresLedger(url=url, read_only=True)
        report = await verify_ledger(checker)
        await checker.close()
    finally:
        for process in gateways:
            process.send_signal(signal.SIGTERM)
        for process in gateways:
            process.wait(10)
        broker.terminate()
        broker.wait(5)
        admin = await asyncpg.connect(ADMIN_URL)
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        shutil.rmtree(tmp, ignore_errors=True)
    total_blocks = args.collectors * args.blocks
    failure = None
    if not report.ok or report.total("blocks") != total_blocks:
        failure = (f"ledger holds {report.total('blocks')} of {total_blocks} blocks; "
                   f"findings: {report.findings[:3]}")
    gateway_cpu = sum(a - b for a, b in zip(after, before, strict=True))
    load_cpu = (load_after.ru_utime - load_before.ru_utime) + (load_after.ru_stime - load_before.ru_stime)
    return {
        "scenario": "ingest-mqtt",
        "parameters": {"gateways": args.gateways, "collectors": args.collectors,
                       "blocks_per_collector": args.blocks, "readings_per_block": args.readings,
                       "blocks_per_message": args.batch, "ledger": "postgresql"},
        "figures": None if failure else {
            "wall_s": round(wall, 2),
            "blocks_per_s": round(total_blocks / wall, 1),
            "readings_per_s": round(total_blocks * args.readings / wall, 1),
            "gateway_cpu_s": round(gateway_cpu, 2),
            "gateway_blocks_per_cpu_s": round(total_blocks / gateway_cpu, 1) if gateway_cpu else None,
            "load_generator_cpu_s": round(load_cpu, 2),
            "chains_verified": report.ok,
        },
        "failure": failure,
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1)
    parser.add_argument("--collectors", type=int, default=20)
    parser.add_argument("--blocks", type=int, default=1000, help="backlog per collector")
    parser.add_argument("--readings", type=int, default=40, help="readings per block")
    parser.add_argument("--batch", type=int, default=100, help="blocks per MQTT message")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result))
    return 0 if result["failure"] is None else 1


if __name__ == "__main__":
    sys.exit(main())
