"""Three gateway processes share the MQTT subscription and one PostgreSQL ledger, fed by ten
collectors; one gateway is killed mid-stream. Every block must land exactly once, every chain
must verify."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector.config import load_plant
from collector.runtime import CollectorRuntime, build_runtime
from collector.simulator import PlantSimulator
from gateway.ledger import PostgresLedger
from gateway.runtime import enroll_collector
from gateway.verifier import verify_ledger
from proto.keys import load_public_key
from tests.conftest import wait_for
from tests.mqtt_broker import GATEWAY_USER, Broker
from tests.support import stackline, stop, write_plant
from tests.test_mqtt import mqtt_uplink, write_mqtt_gateway

pytestmark = pytest.mark.slow

COLLECTORS = tuple(f"fleet-c{n:02d}" for n in range(10))
GATEWAYS = 3
TICK_MS = 250


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    users = {GATEWAY_USER: "gateway-secret", **{c: f"{c}-secret" for c in COLLECTORS}}
    broker = Broker(tmp_path / "broker", users)
    broker.start()
    yield broker
    broker.stop()


async def _heads(ledger: PostgresLedger) -> dict[str, int]:
    return {c: (await ledger.head(c)).sequence for c in COLLECTORS}


async def _all_at_least(ledger: PostgresLedger, count: int) -> bool:
    return min((await _heads(ledger)).values()) >= count


def _log_says(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


async def _subscribed(log: Path) -> bool:
    return _log_says(log, "MQTT ingest subscribed")


async def test_three_gateways_ten_collectors_one_gateway_killed(
        tmp_path: Path, broker: Broker, postgres_url: str) -> None:
    ledger = PostgresLedger(url=postgres_url)
    await ledger.open()
    gateways: list[subprocess.Popen[bytes]] = []
    collectors: dict[str, CollectorRuntime] = {}
    modbus_ports: dict[int, int] = {}
    for collector_id in COLLECTORS:
        directory = tmp_path / collector_id
        path = write_plant(directory, grpc_port=None, tick_ms=TICK_MS, collector_id=collector_id,
                           modbus_ports=modbus_ports,
                           mqtt=mqtt_uplink(broker, collector_id, directory))
        await enroll_collector(ledger, collector_id=collector_id,
                               public_key=load_public_key(directory / "collector.key.pub"))
        collectors[collector_id] = build_runtime(load_plant(path))
    for index in range(GATEWAYS):
        # gateways sharing a ledger share its log key (a second key is refused at start)
        config = write_mqtt_gateway(tmp_path / f"gateway-{index}", broker,
                                    ledger={"url": postgres_url},
                                    log_key_file=tmp_path / "log-signing.key")
        log = tmp_path / f"gateway-{index}.log"
        gateways.append(stackline("gateway", "run", "--config", str(config), log=log))
        await wait_for(functools.partial(_subscribed, log), timeout_s=30,
                       what=f"gateway {index} subscribed")

    simulator = PlantSimulator(plant=load_plant(tmp_path / COLLECTORS[0] / "plant.yaml"))
    sim_task = asyncio.create_task(simulator.serve())
    halt = asyncio.Event()
    tasks = [asyncio.create_task(c.run_until(halt, drain_timeout_s=20)) for c in collectors.values()]
    try:
        await wait_for(functools.partial(_all_at_least, ledger, 8), timeout_s=60,
                       what="8 blocks from every collector")
        stop(gateways[0], sig=signal.SIGKILL)
        at_kill = await _heads(ledger)
        await wait_for(functools.partial(_all_at_least, ledger, max(at_kill.values()) + 12),
                       timeout_s=60, what="every collector past the killed gateway")
        halt.set()
        await asyncio.gather(*tasks)
    finally:
        halt.set()
        for task in tasks:
            task.cancel()
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim_task
        for process in gateways:
            stop(process)

    try:
        for collector_id, runtime in collectors.items():
            head = runtime.buffer.chain_state().sequence
            rows = [row.sequence async for row in ledger.iter_blocks(collector_id)]
            assert rows == list(range(1, head + 1)), f"{collector_id}: every block, once, in order"
            assert runtime.buffer.acknowledged_through() == head
        report = await verify_ledger(ledger)
        assert report.ok, report.findings[:5]
        assert len(report.collectors) == len(COLLECTORS)
        assert report.quarantined == 0
    finally:
        await ledger.close()
