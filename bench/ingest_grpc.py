"""Verified readings stored per gateway CPU-second over gRPC, into the SQLite ledger and into
PostgreSQL (scenario `ingest-grpc`).

A load process (this one) signs a backlog for each of `--collectors` simulated collectors before
anything is measured (in a process pool: a configuration block, then blocks of `--readings`
readings), packs it into IngestRequest batches of `--batch` blocks, and then sends it as
collectors do: one Ingest stream per collector (hello, then batches with `--in-flight` of them
unacknowledged at a time), the streams multiplexed over `--channels` HTTP/2 connections. The
gateway is a real `stackline gateway run` process with the collectors enrolled in its ledger.
Its CPU (user + system of every thread, from /proc) is taken between the first batch and the last
ack (`readings_per_cpu_s`), and again once its transparency log has integrated every block, work
the ingest caused that goes on in the background (`readings_per_cpu_s_with_log`). The load
process reports its own CPU over the same interval; with PostgreSQL the server's CPU is reported
beside the gateway's.

Nothing is reported unless the ledger holds every block: each chain's head at its last block,
and `verify_ledger` (signatures, links, heads, the transparency log) finds nothing.

    python bench/ingest_grpc.py                        # both ledgers, 100 collectors x 1000 blocks
    python bench/ingest_grpc.py --ledger sqlite --collectors 200 --blocks 300
    python bench/ingest_grpc.py --quick                # 20 collectors x 250 blocks, both ledgers
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from common import (
    LEDGER_CHOICES,
    Backlog,
    Countdown,
    IngestMeasured,
    MeasuredInterval,
    each_ledger,
    enroll_backlogs,
    failure_text,
    free_port,
    in_ledger,
    ingest_ack,
    ingest_result,
    presign,
    result,
    spawn_gateway,
    stop,
    wait_for_port,
)

from proto.stackline.v1 import stackline_pb2 as pb

SCENARIO = "ingest-grpc"
METHOD = "/stackline.v1.Ingest/Stream"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
HELLO_TIMEOUT_S = 30.0


def _ack(raw: object, collector_id: str) -> pb.Ack:
    if raw is grpc.aio.EOF or not isinstance(raw, bytes):
        raise ConnectionError(f"{collector_id}: the gateway closed the stream")
    return ingest_ack(raw, collector_id)


async def send_backlog(channel: grpc.aio.Channel, backlog: Backlog, in_flight: int,
                       ready: Callable[[], None], start: asyncio.Event) -> None:
    """One collector's stream: hello (before the measured interval), then every batch with at
    most `in_flight` unacknowledged, until the gateway has stored the last block."""
    call = channel.stream_stream(METHOD)()  # no serializers: bytes in, bytes out
    await call.write(backlog.hello)
    async with asyncio.timeout(HELLO_TIMEOUT_S):
        first = _ack(await call.read(), backlog.collector_id)
    if first.stored_through_sequence != 0:
        raise RuntimeError(f"{backlog.collector_id}: the ledger already holds "
                           f"{first.stored_through_sequence} blocks")
    ready()
    await start.wait()
    window = asyncio.Semaphore(in_flight)

    async def write_all() -> None:
        for batch in backlog.batches:
            await window.acquire()
            await call.write(batch)
        await call.done_writing()

    writer = asyncio.create_task(write_all(), name=f"write-{backlog.collector_id}")
    try:
        stored = 0
        while stored < backlog.blocks:
            stored = _ack(await call.read(), backlog.collector_id).stored_through_sequence
            window.release()
        await writer
    finally:
        writer.cancel()
        call.cancel()


async def load(port: int, backlogs: list[Backlog], channels: int, in_flight: int,
               gateway_pid: int, postgres: bool) -> tuple[IngestMeasured, MeasuredInterval]:
    """Open every stream, then send every backlog, measuring from the first batch to the last
    ack."""
    options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per channel
    opened = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
              for _ in range(channels)]
    measured = IngestMeasured()
    start = asyncio.Event()
    all_ready = Countdown(len(backlogs))
    try:
        async with asyncio.TaskGroup() as group:
            for index, backlog in enumerate(backlogs):
                group.create_task(send_backlog(opened[index % channels], backlog, in_flight,
                                               all_ready, start), name=backlog.collector_id)
            await all_ready.wait()
            print(f"  {len(backlogs)} streams open over {channels} connection(s); sending...",
                  file=sys.stderr)
            interval = MeasuredInterval([gateway_pid], broker_pid=None, postgres=postgres)
            start.set()
        interval.end(measured)
    finally:
        for channel in opened:
            await channel.close()
    return measured, interval


async def run_one(args: argparse.Namespace, ledger_kind: str, backlogs: list[Backlog]
                  ) -> dict[str, Any]:
    """One ledger: enrol, start the gateway, send, wait for the log, check."""
    parameters = {"ledger": ledger_kind, "collectors": args.collectors,
                  "blocks_per_collector": args.blocks, "readings_per_block": args.readings,
                  "blocks_per_batch": args.batch, "batches_in_flight": args.in_flight,
                  "channels": args.channels}
    return await in_ledger(
        ledger_kind, prefix="stackline-ingest-grpc-", database="stackline_bench_ingest",
        measure=lambda location, tmp: _measure(args, location, tmp, backlogs, parameters))


async def _measure(args: argparse.Namespace, location: str, tmp: Path, backlogs: list[Backlog],
                   parameters: dict[str, Any]) -> dict[str, Any]:
    postgres = location.startswith("postgresql://")
    await enroll_backlogs(location, backlogs)
    port = free_port()
    gateway = spawn_gateway({
        "gateway": {"id": "bench-ingest-grpc"}, "listen": {"grpc": f"127.0.0.1:{port}"},
        "ledger": {"url": location} if postgres else {"path": location},
        "log": {"key_file": str(tmp / "log-signing.key"), "origin": "bench.stackline/ingest"},
    }, tmp)
    total = sum(b.blocks for b in backlogs)
    try:
        wait_for_port(port, process=gateway)
        print(f"  gateway {gateway.pid} on port {port}, ledger {parameters['ledger']}",
              file=sys.stderr)
        measured, interval = await load(port, backlogs, args.channels, args.in_flight,
                                        gateway.pid, postgres)
        print(f"  {total:,} blocks acknowledged in {measured.wall_s:.1f} s; waiting for the "
              "transparency log...", file=sys.stderr)
        await interval.log_catch_up(location, total, measured)
    except Exception as exc:
        return result(SCENARIO, parameters, None, failure_text(exc, tmp / "gateway.log"))
    finally:
        stop(gateway)
    return await ingest_result(SCENARIO, parameters, location, backlogs, args.readings, measured,
                               extra={})


async def run(args: argparse.Namespace, backlogs: list[Backlog]) -> int:
    return await each_ledger(args.ledger, SCENARIO,
                             lambda ledger_kind: run_one(args, ledger_kind, backlogs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", choices=LEDGER_CHOICES, default="both")
    parser.add_argument("--collectors", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=1000,
                        help="blocks per collector (the first one its configuration)")
    parser.add_argument("--readings", type=int, default=40, help="readings per block")
    parser.add_argument("--batch", type=int, default=100, help="blocks per batch")
    parser.add_argument("--in-flight", type=int, default=4, help="batches in flight per stream")
    parser.add_argument("--channels", type=int, default=4, help="HTTP/2 connections")
    parser.add_argument("--quick", action="store_true", help="20 collectors x 250 blocks")
    args = parser.parse_args()
    if args.quick:
        args.collectors, args.blocks = 20, 250
    return asyncio.run(run(args, presign(args.collectors, args.blocks, args.readings, args.batch)))


if __name__ == "__main__":
    sys.exit(main())
