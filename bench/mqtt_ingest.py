"""Verified readings stored per gateway CPU-second through Mosquitto, into the SQLite ledger and
into PostgreSQL, with one gateway process or several sharing the subscription (scenario
`ingest-mqtt`).

A load process (this one) signs a backlog for each of `--collectors` simulated collectors before
anything is measured (a configuration block, then blocks of `--readings` readings), then sends
it as the collector's MQTT uplink does: a hello, then batches of `--batch` blocks with one
message in flight per collector, the next only after the gateway's end-to-end ack, sent again
from the last ack when none comes in time. The collectors are multiplexed over `--connections`
MQTT connections. The gateways are real `stackline gateway run` processes sharing the
subscription (and, with several, one PostgreSQL ledger, a throwaway database). The CPU of the
gateways, of the broker and of this load process is taken from /proc between the first batch and
the last ack; the gateways' again once the transparency log has integrated every block.

Nothing is reported unless the ledger holds every block: each chain's head at its last block,
and `verify_ledger` (signatures, links, heads, the transparency log) finds nothing.

    python bench/mqtt_ingest.py                          # both ledgers, one gateway each
    python bench/mqtt_ingest.py --ledger postgresql --gateways 3
    python bench/mqtt_ingest.py --quick                  # 20 collectors x 250 blocks
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from common import (
    LEDGER_CHOICES,
    Backlog,
    Countdown,
    IngestMeasured,
    MeasuredInterval,
    each_ledger,
    enroll_backlogs,
    failure_text,
    in_ledger,
    ingest_ack,
    ingest_result,
    presign,
    result,
    spawn_gateway,
    start_mosquitto,
    stop,
)

from proto.keys import generate_key_files

SCENARIO = "ingest-mqtt"
PREFIX = "stackline/v1"
HELLO_TIMEOUT_S = 30.0
HELLO_RESEND_S = 0.5


@dataclass(slots=True)
class Counters:
    """What the load process saw."""

    resent_messages: int = 0


async def send_backlog(client: aiomqtt.Client, backlog: Backlog, acks: asyncio.Queue[bytes],
                       batch: int, ack_timeout_s: float, counters: Counters,
                       ready: Callable[[], None], start: asyncio.Event) -> None:
    """One collector: a hello until the gateway answers (before the measured interval), then
    one batch at a time, the next after the ack; on a timeout, again from the last ack."""
    topic = f"{PREFIX}/{backlog.collector_id}/blocks"
    deadline = time.monotonic() + HELLO_TIMEOUT_S
    while True:  # the gateways may not have subscribed yet: what reaches no one is lost
        await client.publish(topic, backlog.hello, qos=1)
        try:
            async with asyncio.timeout(HELLO_RESEND_S):
                ingest_ack(await acks.get(), backlog.collector_id)
            break
        except TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{backlog.collector_id}: no answer to the hello") from None
    ready()
    await start.wait()
    stored = 0
    while stored < backlog.blocks:
        await client.publish(topic, backlog.batches[stored // batch], qos=1)
        try:
            async with asyncio.timeout(ack_timeout_s):
                while True:  # an older ack (of a hello or a message sent twice) moves nothing
                    through = ingest_ack(await acks.get(), backlog.collector_id).stored_through_sequence
                    if through > stored:
                        stored = through
                        break
        except TimeoutError:
            counters.resent_messages += 1


async def connection(port: int, index: int, backlogs: list[Backlog], batch: int,
                     ack_timeout_s: float, counters: Counters, ready: Callable[[], None],
                     start: asyncio.Event) -> None:
    """One MQTT connection carrying several collectors: their acks are routed by topic."""
    queues: dict[str, asyncio.Queue[bytes]] = {b.collector_id: asyncio.Queue() for b in backlogs}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-load-{index}",
                              protocol=aiomqtt.ProtocolVersion.V5) as client:
        # one publish per collector awaits its PUBACK at a time: that many are expected
        client.pending_calls_threshold = 2 * len(backlogs) + 10
        for backlog in backlogs:
            await client.subscribe(f"{PREFIX}/{backlog.collector_id}/acks", qos=1)

        async def route() -> None:
            async for message in client.messages:
                collector_id = message.topic.value.split("/")[-2]
                if isinstance(message.payload, bytes) and collector_id in queues:
                    queues[collector_id].put_nowait(message.payload)

        router = asyncio.create_task(route(), name=f"route-{index}")
        try:
            async with asyncio.TaskGroup() as group:
                for backlog in backlogs:
                    group.create_task(send_backlog(
                        client, backlog, queues[backlog.collector_id], batch, ack_timeout_s,
                        counters, ready, start), name=backlog.collector_id)
        finally:
            router.cancel()


async def load(port: int, backlogs: list[Backlog], args: argparse.Namespace, gateway_pids: list[int],
               broker_pid: int, postgres: bool, counters: Counters
               ) -> tuple[IngestMeasured, MeasuredInterval]:
    """Say hello for every collector, then send every backlog, measuring from the first batch to
    the last ack."""
    measured = IngestMeasured()
    start = asyncio.Event()
    all_ready = Countdown(len(backlogs))
    async with asyncio.TaskGroup() as group:
        for index in range(args.connections):
            group.create_task(connection(port, index, backlogs[index::args.connections],
                                         args.batch, args.ack_timeout_s, counters, all_ready,
                                         start), name=f"connection-{index}")
        await all_ready.wait()
        print(f"  {len(backlogs)} collectors said hello over {args.connections} connection(s); "
              "sending...", file=sys.stderr)
        interval = MeasuredInterval(gateway_pids, broker_pid=broker_pid, postgres=postgres)
        start.set()
    interval.end(measured)
    return measured, interval


async def run_one(args: argparse.Namespace, ledger_kind: str, backlogs: list[Backlog]
                  ) -> dict[str, Any]:
    """One ledger: enrol, start the broker and the gateways, send, wait for the log, check."""
    parameters = {"ledger": ledger_kind, "gateways": args.gateways, "collectors": args.collectors,
                  "blocks_per_collector": args.blocks, "readings_per_block": args.readings,
                  "blocks_per_message": args.batch, "messages_in_flight_per_collector": 1,
                  "connections": args.connections}
    return await in_ledger(
        ledger_kind, prefix="stackline-ingest-mqtt-", database="stackline_bench_mqtt",
        measure=lambda location, tmp: _measure(args, location, tmp, backlogs, parameters))


async def _measure(args: argparse.Namespace, location: str, tmp: Path, backlogs: list[Backlog],
                   parameters: dict[str, Any]) -> dict[str, Any]:
    postgres = location.startswith("postgresql://")
    await enroll_backlogs(location, backlogs)
    generate_key_files(tmp / "log-signing.key")  # before the gateways: they share it
    broker, port = start_mosquitto(tmp)
    gateways = [spawn_gateway({
        "gateway": {"id": f"bench-gw{index}"}, "listen": {"grpc": None},
        "ledger": {"url": location} if postgres else {"path": location},
        "mqtt": {"host": "127.0.0.1", "port": port, "insecure": True},
        "log": {"key_file": str(tmp / "log-signing.key"), "origin": "bench.stackline/ingest"},
    }, tmp, f"gateway-{index}") for index in range(args.gateways)]
    total = sum(b.blocks for b in backlogs)
    counters = Counters()
    try:
        print(f"  broker on port {port}, {args.gateways} gateway(s), ledger "
              f"{parameters['ledger']}", file=sys.stderr)
        measured, interval = await load(port, backlogs, args, [g.pid for g in gateways],
                                        broker.pid, postgres, counters)
        print(f"  {total:,} blocks acknowledged in {measured.wall_s:.1f} s; waiting for the "
              "transparency log...", file=sys.stderr)
        await interval.log_catch_up(location, total, measured)
    except Exception as exc:
        return result(SCENARIO, parameters, None, failure_text(exc, tmp / "gateway-0.log"))
    finally:
        for gateway in gateways:
            stop(gateway)
        stop(broker)
    return await ingest_result(SCENARIO, parameters, location, backlogs, args.readings, measured,
                               extra={"resent_messages": counters.resent_messages})


async def run(args: argparse.Namespace, backlogs: list[Backlog]) -> int:
    return await each_ledger(args.ledger, SCENARIO,
                             lambda ledger_kind: run_one(args, ledger_kind, backlogs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ledger", choices=LEDGER_CHOICES, default="both")
    parser.add_argument("--gateways", type=int, default=1,
                        help="gateway processes sharing the subscription (PostgreSQL only)")
    parser.add_argument("--collectors", type=int, default=100)
    parser.add_argument("--blocks", type=int, default=500,
                        help="blocks per collector (the first one its configuration)")
    parser.add_argument("--readings", type=int, default=40, help="readings per block")
    parser.add_argument("--batch", type=int, default=100, help="blocks per MQTT message")
    parser.add_argument("--connections", type=int, default=4,
                        help="MQTT connections of the load process")
    parser.add_argument("--ack-timeout-s", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="20 collectors x 250 blocks")
    args = parser.parse_args()
    if args.gateways > 1 and args.ledger != "postgresql":
        parser.error("several gateways share a PostgreSQL ledger: add --ledger postgresql")
    if args.quick:
        args.collectors, args.blocks = 20, 250
    return asyncio.run(run(args, presign(args.collectors, args.blocks, args.readings, args.batch)))


if __name__ == "__main__":
    sys.exit(main())
