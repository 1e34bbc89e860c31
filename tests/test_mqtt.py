"""Blocks over MQTT through a real Mosquitto (started from docs/mosquitto/), end to end."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from collector.config import load_plant
from collector.runtime import CollectorRuntime, build_runtime
from collector.simulator import PlantSimulator
from gateway.config import load_gateway_config
from gateway.ledger import SqliteLedger
from gateway.runtime import GatewayRuntime, enroll_collector
from gateway.verifier import verify_ledger
from proto.keys import load_public_key, load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import GENESIS_HASH, BlockDraft, Signer, encode_block
from tests.conftest import wait_for
from tests.mqtt_broker import GATEWAY_USER, Broker
from tests.support import write_plant

TICK_MS = 200
COLLECTORS = ("plant-a-c1", "plant-b-c1")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    users = {GATEWAY_USER: "gateway-secret", **{c: f"{c}-secret" for c in COLLECTORS}}
    broker = Broker(tmp_path / "broker", users)
    broker.start()
    yield broker
    broker.stop()


def mqtt_uplink(broker: Broker, user: str, directory: Path, **extra: Any) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mqtt-password").write_text(broker.users[user] + "\n")
    return {"host": "127.0.0.1", "port": broker.port, "username": user,
            "password_file": "mqtt-password", "insecure": True, "ack_timeout_s": 2.0,
            "reconnect_max_s": 0.5, **extra}


@dataclass
class Site:
    """A gateway, the collectors feeding it, and the simulator they read."""

    gateway: GatewayRuntime
    ledger_path: Path
    collectors: dict[str, CollectorRuntime]
    grpc_port: int

    async def head(self, collector_id: str) -> int:
        return (await self.gateway.ledger.head(collector_id)).sequence


def write_mqtt_gateway(directory: Path, broker: Broker, *, grpc: bool = False,
                       ledger: dict[str, str] | None = None, log_key_file: Path | None = None
                       ) -> Path:
    """A gateway configuration ingesting from the broker (and gRPC on a free port if asked);
    gateways sharing one ledger share its log key (`log_key_file`)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "mqtt-password").write_text(broker.users[GATEWAY_USER] + "\n")
    config = directory / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "gateway": {"id": "gw-test"},
        "listen": {"grpc": "127.0.0.1:0" if grpc else None},
        "ledger": ledger or {"path": "ledger.sqlite"},
        "mqtt": {"host": "127.0.0.1", "port": broker.port, "username": GATEWAY_USER,
                 "password_file": "mqtt-password", "insecure": True, "reconnect_max_s": 0.5},
        **({"log": {"key_file": str(log_key_file)}} if log_key_file else {}),
    }))
    return config


async def start_gateway(directory: Path, broker: Broker, *, grpc: bool = False) -> GatewayRuntime:
    config = write_mqtt_gateway(directory, broker, grpc=grpc)
    runtime = GatewayRuntime(config=load_gateway_config(config))
    await runtime.start()
    assert runtime.mqtt is not None
    await asyncio.wait_for(runtime.mqtt.connected.wait(), 10)
    return runtime


@contextlib.asynccontextmanager
async def site(tmp_path: Path, broker: Broker, *, collector_ids: tuple[str, ...] = COLLECTORS,
               grpc: bool = False, mqtt_extra: dict[str, Any] | None = None,
               ) -> AsyncIterator[Site]:
    gateway = await start_gateway(tmp_path / "gateway", broker, grpc=grpc)
    grpc_port = gateway.grpc.port if gateway.grpc is not None else 0
    modbus_ports: dict[int, int] = {}
    collectors: dict[str, CollectorRuntime] = {}
    plants = []
    for collector_id in collector_ids:
        directory = tmp_path / collector_id
        path = write_plant(
            directory, grpc_port=grpc_port if grpc else None, tick_ms=TICK_MS,
            collector_id=collector_id, modbus_ports=modbus_ports,
            mqtt=mqtt_uplink(broker, collector_id, directory, **(mqtt_extra or {})))
        plant = load_plant(path)
        plants.append(plant)
        await enroll_collector(gateway.ledger, collector_id=collector_id,
                               public_key=load_public_key(directory / "collector.key.pub"))
        collectors[collector_id] = build_runtime(plant)
    simulator = PlantSimulator(plant=plants[0])
    sim_task = asyncio.create_task(simulator.serve())
    stop = asyncio.Event()
    tasks = [asyncio.create_task(c.run_until(stop, drain_timeout_s=10)) for c in collectors.values()]
    try:
        yield Site(gateway, tmp_path / "gateway" / "ledger.sqlite", collectors, grpc_port)
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        sim_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sim_task
        await gateway.stop()


async def assert_every_block_once(site: Site) -> None:
    """After the collectors stopped: every block each made is stored exactly once and verifies."""
    ledger = SqliteLedger(path=site.ledger_path, read_only=True)
    try:
        for collector_id, runtime in site.collectors.items():
            head = runtime.buffer.chain_state().sequence
            rows = [row.sequence async for row in ledger.iter_blocks(collector_id)]
            assert rows == list(range(1, head + 1)), collector_id
            assert runtime.buffer.acknowledged_through() == head, "all acknowledged end to end"
        report = await verify_ledger(ledger)
        assert report.ok, report.findings[:5]
    finally:
        await ledger.close()


async def test_blocks_flow_through_the_broker_and_are_acknowledged(tmp_path: Path,
                                                                  broker: Broker) -> None:
    async with site(tmp_path, broker) as line:
        for collector_id in COLLECTORS:
            await wait_for(functools.partial(_at_least, line, collector_id, 8), timeout_s=20,
                           what=f"8 blocks of {collector_id} in the ledger")
        uplink = next(iter(line.collectors.values())).uplinks[0]

        async def acknowledged() -> bool:
            return uplink.stats.acknowledged_through >= 8
        await wait_for(acknowledged, timeout_s=10, what="the gateway's ack back at the collector")
    await assert_every_block_once(line)
    with sqlite3.connect(line.ledger_path) as db:
        assert {t for (t,) in db.execute("SELECT DISTINCT transport FROM blocks")} == {"mqtt"}


async def _at_least(line: Site, collector_id: str, count: int) -> bool:
    return await line.head(collector_id) >= count


@pytest.mark.slow
async def test_broker_killed_twice_mid_stream_loses_nothing(tmp_path: Path, broker: Broker) -> None:
    async with site(tmp_path, broker) as line:
        target = 5
        for _ in range(2):
            for collector_id in COLLECTORS:
                await wait_for(functools.partial(_at_least, line, collector_id, target),
                               timeout_s=30, what=f"{target} blocks of {collector_id}")
            broker.kill()
            await asyncio.sleep(1.5)  # the outage: collectors keep ticking into their buffers
            broker.start()
            target += 12
        for collector_id in COLLECTORS:
            await wait_for(functools.partial(_at_least, line, collector_id, target), timeout_s=30,
                           what=f"{collector_id} caught up after the second restart")
    await assert_every_block_once(line)


async def test_grpc_and_mqtt_at_once_store_each_block_once(tmp_path: Path, broker: Broker) -> None:
    async with site(tmp_path, broker, collector_ids=("plant-a-c1",), grpc=True) as line:
        await wait_for(lambda: _at_least(line, "plant-a-c1", 15), timeout_s=20,
                       what="15 blocks over both transports")
        runtime = line.collectors["plant-a-c1"]
        assert len(runtime.uplinks) == 2
        assert all(u.stats.blocks_sent > 0 for u in runtime.uplinks), "both transports sent"
    await assert_every_block_once(line)
    core = line.gateway.core
    assert core.stats.duplicates["plant-a-c1"] > 0, "the second copies were acknowledged, not stored"
    assert not core.stats.rejections


async def _collect(client: aiomqtt.Client, seconds: float) -> list[str]:
    topics: list[str] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                topics.append(message.topic.value)
    return topics


async def test_acl_keeps_each_collector_to_its_own_topics(broker: Broker) -> None:
    async with (
        aiomqtt.Client("127.0.0.1", broker.port, username=GATEWAY_USER,
                       password=broker.users[GATEWAY_USER]) as watcher,
        aiomqtt.Client("127.0.0.1", broker.port, username="plant-a-c1",
                       password=broker.users["plant-a-c1"],
                       protocol=aiomqtt.ProtocolVersion.V5) as plant_a,
    ):
        await watcher.subscribe("stackline/v1/+/blocks", qos=1)
        await plant_a.subscribe("stackline/v1/plant-b-c1/acks", qos=1)
        await plant_a.publish("stackline/v1/plant-b-c1/blocks", b"posing as B", qos=1)
        await plant_a.publish("stackline/v1/plant-a-c1/blocks", b"own topic", qos=1)
        await watcher.publish("stackline/v1/plant-b-c1/acks", b"ack for B", qos=1)
        seen_by_gateway = await _collect(watcher, 1.0)
        seen_by_a = await _collect(plant_a, 0.5)
    assert seen_by_gateway == ["stackline/v1/plant-a-c1/blocks"], "the broker refused A's post as B"
    assert seen_by_a == [], "A cannot read B's acks"


async def test_wrong_credentials_are_refused_by_the_broker(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client("127.0.0.1", broker.port, username="plant-a-c1",
                                  password="not-the-password"):
            pass


def _signed_for(collector_id: str, signer: Signer, sequence: int = 1) -> pb.SignedBlock:
    payload = encode_block(BlockDraft(collector_id, 0, 1000, [], b"\x00" * 32),
                           sequence=sequence, previous_hash=GENESIS_HASH)
    return signer.envelope(payload)


async def test_a_block_for_b_signed_with_a_key_is_quarantined(tmp_path: Path,
                                                             broker: Broker) -> None:
    async with site(tmp_path, broker, collector_ids=COLLECTORS) as line:
        key_a = Signer(signing_key=load_signing_key(tmp_path / "plant-a-c1" / "collector.key"))
        forged = _signed_for("plant-b-c1", key_a, sequence=10_000)
        request = pb.IngestRequest(batch=pb.Batch(blocks=[forged]))
        # B's broker password has leaked: the broker lets the message through; the gateway must not
        async with aiomqtt.Client("127.0.0.1", broker.port, username="plant-b-c1",
                                  password=broker.users["plant-b-c1"]) as thief:
            await thief.publish("stackline/v1/plant-b-c1/blocks", request.SerializeToString(), qos=1)
            await thief.publish("stackline/v1/plant-b-c1/blocks", b"\xff" * 12, qos=1)

        async def refused() -> bool:
            reasons = await line.gateway.ledger.quarantine_counts()
            return reasons.get("unknown_key", 0) >= 1 and reasons.get("malformed_message", 0) >= 1
        await wait_for(refused, timeout_s=10, what="the forged and the garbled message quarantined")
        entries = await line.gateway.ledger.quarantine_entries()
        forged_entry = next(e for e in entries if e.reason == "unknown_key")
        assert (forged_entry.collector_id, forged_entry.transport, forged_entry.alarm) == (
            "plant-b-c1", "mqtt", True)
        assert forged_entry.raw == forged.SerializeToString()
        await wait_for(lambda: _at_least(line, "plant-b-c1", 5), timeout_s=20,
                       what="plant B still streaming")
    await assert_every_block_once(line)


async def test_collector_over_tls_with_a_client_certificate(tmp_path: Path, broker: Broker) -> None:
    tls = broker.certificates
    extra = {"port": broker.tls_port, "insecure": False,
             "tls": {"ca_file": str(tls / "ca.crt"), "cert_file": str(tls / "client.crt"),
                     "key_file": str(tls / "client.key")}}
    async with site(tmp_path, broker, collector_ids=("plant-a-c1",), mqtt_extra=extra) as line:
        await wait_for(lambda: _at_least(line, "plant-a-c1", 5), timeout_s=20,
                       what="blocks over TLS")
    await assert_every_block_once(line)


async def test_plaintext_must_be_chosen_explicitly(tmp_path: Path, broker: Broker) -> None:
    from collector.errors import ConfigError  # noqa: PLC0415

    uplink = mqtt_uplink(broker, "plant-a-c1", tmp_path)
    del uplink["insecure"]
    with pytest.raises(ConfigError, match=r"uplink\.mqtt: .*insecure: true"):
        load_plant(write_plant(tmp_path, grpc_port=None, mqtt=uplink))
