"""The collector against a real pymodbus simulator: polled values, flags, blocks, and coalescing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import math
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import nacl.signing
import pytest
import yaml

from collector.buffer import MemoryBuffer
from collector.config import LoadedPlant, load_plant
from collector.modbus_source import ModbusSource, PollOutcome
from collector.plan import DevicePlan, SerialLink, compile_plan
from collector.runtime import CollectorRuntime, Reload
from collector.simulator import PlantSimulator, point_value, status_word
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import Signer, Verifier, block_hash, decode_block
from tests.conftest import DEMO_PLANT, wait_for
from tests.plant_sim import serving
from tests.support import write_plant
from tests.test_plan import fewest_requests

# An instant outside the demo CEMS rack's calibration window (checked below).
FIXED_T = 1_795_000_100.0


def test_fixed_instant_is_outside_calibration() -> None:
    plant = load_plant(DEMO_PLANT)
    status = plant.devices[0].profile.status
    assert status is not None
    assert status_word("cems-1", status, FIXED_T) == 0


def _float32(value: float) -> float:
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


async def _serve(plant: LoadedPlant, clock: float) -> AsyncIterator[PlantSimulator]:
    simulator = PlantSimulator(plant=plant, clock=lambda: clock)
    task = asyncio.create_task(simulator.serve())
    # the simulator is up when every endpoint accepts a connection
    for host, port in simulator.endpoints:
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection(host, port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            await writer.wait_closed()
            break
    yield simulator
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _last_block(buffer: MemoryBuffer) -> pb.Block:
    return decode_block(pb.SignedBlock.FromString(buffer.read_from(1, 100)[-1][1]).payload)


def _runtime(plant: LoadedPlant, buffer: MemoryBuffer, signer: Signer) -> CollectorRuntime:
    return CollectorRuntime(plan=compile_plan(plant), signer=signer, buffer=buffer,
                            source=ModbusSource(), tick_ms=1000, clock=lambda: FIXED_T)


@pytest.fixture
def signer() -> Signer:
    return Signer(signing_key=nacl.signing.SigningKey.generate())


async def test_tick_reads_every_point_as_the_simulator_serves_it(tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    buffer = MemoryBuffer()
    runtime = _runtime(plant, buffer, signer)
    async for simulator in _serve(plant, FIXED_T):
        assert runtime.record_config_if_changed()
        assert await runtime.tick(1_795_000_100_000)
        await runtime.source.close()
        counted = {sim.device.config.id: sim.reads for sim in simulator.devices}

    blocks = [decode_block(pb.SignedBlock.FromString(env).payload) for _, env in buffer.read_from(1, 10)]
    assert [b.kind for b in blocks] == [pb.BLOCK_KIND_CONFIG, pb.BLOCK_KIND_READINGS]
    config_block, readings_block = blocks
    assert config_block.config_digest == runtime.plan.config_digest
    assert readings_block.previous_hash == block_hash(
        pb.SignedBlock.FromString(buffer.read_from(1, 1)[0][1]).payload)
    assert readings_block.window_start_unix_ms == 1_795_000_100_000
    assert readings_block.window_end_unix_ms == 1_795_000_101_000

    by_id = {r.point_id: r for r in readings_block.readings}
    assert len(by_id) == runtime.plan.reading_count == 14
    for device in plant.devices:
        for point in device.profile.points:
            reading = by_id[f"demo-plant/{device.config.id}/{point.name}"]
            expected = point_value(device.config.id, point, FIXED_T)
            if point.data_type.value == "float32":
                assert reading.value == pytest.approx(_float32(expected), rel=1e-7)
            else:
                assert reading.value == pytest.approx(round(expected / point.scale) * point.scale)
            assert len(reading.raw_registers) == point.data_type.registers
        if device.profile.status is not None:
            status = by_id[f"demo-plant/{device.config.id}/status"]
            assert status.value == status_word(device.config.id, device.profile.status, FIXED_T)
    # one coalesced request per device per tick: the demo layout allows no fewer (the minimum
    # computed independently from the register map, by dynamic programming)
    assert counted == {"cems-1": 1, "feeder-1a": 1, "feeder-1b": 1}
    for device in plant.devices:
        profile = device.profile
        spans = [(p.address, p.data_type.registers) for p in profile.points]
        spans += [(profile.status.address, 1)] if profile.status else []
        assert counted[device.config.id] == fewest_requests(
            spans, profile.max_registers_per_request, profile.max_gap_registers)
    # every envelope verifies with the collector's key
    for _, envelope in buffer.read_from(1, 10):
        signed = pb.SignedBlock.FromString(envelope)
        Verifier(public_key=signer.public_key).verify(signed.payload, signed.signature)


async def test_calibration_window_flags_the_cems_points(tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    cems = plant.devices[0]
    assert cems.profile.status is not None
    calibrating = next(t for t in range(int(FIXED_T), int(FIXED_T) + 400)
                       if status_word("cems-1", cems.profile.status, float(t)))
    buffer = MemoryBuffer()
    runtime = _runtime(plant, buffer, signer)
    async for _ in _serve(plant, float(calibrating)):
        await runtime.tick(calibrating * 1000)
        await runtime.source.close()
    block = _last_block(buffer)  # block 1 records the configuration
    flags = {r.point_id: r.quality for r in block.readings}
    assert flags["demo-plant/cems-1/so2"] == pb.QUALITY_CALIBRATION
    assert flags["demo-plant/cems-1/status"] == pb.QUALITY_NORMAL
    assert flags["demo-plant/feeder-1a/feed_rate"] == pb.QUALITY_NORMAL


async def test_a_dead_device_still_yields_flagged_readings(tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1, dead_device=True))
    buffer = MemoryBuffer()
    runtime = _runtime(plant, buffer, signer)
    async for _ in _serve(plant.model_copy(update={"devices": plant.devices[:3]}), FIXED_T):
        assert await runtime.tick(1_795_000_100_000)
        await runtime.source.close()
    block = _last_block(buffer)  # block 1 records the configuration
    dead = [r for r in block.readings if r.point_id.startswith("demo-plant/cems-dead/")]
    alive = [r for r in block.readings if r.point_id.startswith("demo-plant/cems-1/")]
    assert len(dead) == len(alive) == 10  # absence is recorded, point by point
    assert all(r.quality == pb.QUALITY_COMM_LOSS and math.isnan(r.value) for r in dead)
    assert all(r.quality == pb.QUALITY_NORMAL for r in alive)
    assert runtime.stats.device_failures == 1


async def test_a_full_buffer_alarms_and_keeps_what_it_holds(
        tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    buffer = MemoryBuffer()
    runtime = _runtime(plant, buffer, signer)
    async for _ in _serve(plant, FIXED_T):
        runtime.record_config_if_changed()
        assert await runtime.tick(1_795_000_100_000)
        held = buffer.read_from(1, 10)
        buffer.max_bytes = buffer.depth().bytes + 1  # no room for one more block

        assert not await runtime.tick(1_795_000_101_000)
        assert not await runtime.tick(1_795_000_102_000)
        assert buffer.read_from(1, 10) == held, "nothing buffered is dropped to make room"
        assert runtime.stats.unbuffered_ticks == 2
        assert sum("ALARM" in r.message for r in caplog.records) == 1, "one alarm per episode"

        buffer.acknowledge(1)  # the gateway stored the configuration block
        assert await runtime.tick(1_795_000_103_000)
        await runtime.source.close()
    assert [seq for seq, _ in buffer.read_from(1, 10)] == [2, 3]


async def _silent_device() -> tuple[asyncio.Server, int]:
    """A TCP server that accepts Modbus connections and never answers."""
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the collector gives up and closes
        writer.close()
    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def test_a_silent_device_does_not_hold_up_the_tick(tmp_path: Path, signer: Signer) -> None:
    server, port = await _silent_device()
    path = write_plant(tmp_path, grpc_port=1, dead_device=True)
    plant_yaml = yaml.safe_load(path.read_text())
    plant_yaml["devices"][-1]["tcp"]["port"] = port
    plant_yaml["devices"][-1]["timeout_ms"] = 5000  # longer than the tick on purpose
    plant_yaml["devices"][-1]["poll_interval_ms"] = 10_000  # (which its interval must exceed)
    path.write_text(yaml.safe_dump(plant_yaml))
    plant = load_plant(path)
    buffer = MemoryBuffer()
    runtime = CollectorRuntime(plan=compile_plan(plant), signer=signer, buffer=buffer,
                               source=ModbusSource(), tick_ms=500, clock=lambda: FIXED_T)
    async with server:
        async for _ in _serve(plant.model_copy(update={"devices": plant.devices[:3]}), FIXED_T):
            started = time.monotonic()
            assert await runtime.tick(1_795_000_100_000)
            took = time.monotonic() - started
            await runtime.source.close()
    assert took < 0.5, f"the tick took {took:.2f} s: the silent device held it up"
    block = _last_block(buffer)  # block 1 records the configuration
    silent = [r for r in block.readings if r.point_id.startswith("demo-plant/cems-dead/")]
    assert silent and all(r.quality == pb.QUALITY_COMM_LOSS for r in silent)
    assert all(r.quality == pb.QUALITY_NORMAL for r in block.readings
               if r.point_id.startswith("demo-plant/feeder-1a/"))
    assert runtime.devices["cems-dead"].failures_by_kind == {"timeout": 1}


async def test_readings_wait_for_their_configuration_to_be_recorded(
        tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    buffer = MemoryBuffer(max_bytes=100)  # too small for any block: a full buffer
    runtime = _runtime(plant, buffer, signer)
    async for _ in _serve(plant, FIXED_T):
        assert not runtime.record_config_if_changed()
        assert not await runtime.tick(1_795_000_100_000), "no readings under an unrecorded config"
        assert buffer.chain_state().sequence == 0
        buffer.max_bytes = 1 << 20
        assert await runtime.tick(1_795_000_101_000)
        await runtime.source.close()
    kinds = [decode_block(pb.SignedBlock.FromString(env).payload).kind
             for _, env in buffer.read_from(1, 10)]
    assert kinds == [pb.BLOCK_KIND_CONFIG, pb.BLOCK_KIND_READINGS]


async def test_a_clock_stepping_back_realigns_the_ticks(
        tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    offset = [0.0]
    buffer = MemoryBuffer()
    runtime = CollectorRuntime(plan=compile_plan(plant), signer=signer, buffer=buffer,
                               source=ModbusSource(), tick_ms=100,
                               clock=lambda: time.time() + offset[0])
    async for _ in _serve(plant, FIXED_T):
        ticker = asyncio.create_task(runtime._ticker())

        async def ticks(count: int) -> bool:
            return runtime.stats.ticks >= count
        await wait_for(functools.partial(ticks, 3), timeout_s=5, what="three ticks")
        offset[0] = -600.0  # NTP steps the clock back ten minutes
        before = runtime.stats.ticks
        await wait_for(functools.partial(ticks, before + 3), timeout_s=5,
                       what="ticks going on after the clock stepped back")
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await runtime.source.close()
    assert any("ALARM: the clock went back" in r.message for r in caplog.records)


async def test_stopping_seals_the_readings_of_the_window_in_progress(
        tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))  # every device polled each second
    buffer = MemoryBuffer()
    runtime = CollectorRuntime(plan=compile_plan(plant), signer=signer, buffer=buffer,
                               source=ModbusSource(), tick_ms=60_000)  # a window far longer
    async with serving(plant):
        ticker = asyncio.create_task(runtime._ticker())

        async def polled() -> bool:
            return all(health.polls >= 1 for health in runtime.devices.values())
        await wait_for(polled, timeout_s=10, what="one poll of every device")
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await runtime.source.close()
    blocks = [decode_block(pb.SignedBlock.FromString(env).payload) for _, env in buffer.read_from(1, 10)]
    assert [b.kind for b in blocks] == [pb.BLOCK_KIND_CONFIG, pb.BLOCK_KIND_READINGS]
    assert len(blocks[1].readings) >= 14, "the readings taken before the stop are in the chain"


def test_a_reload_that_changes_only_keep_raw_registers_is_applied(tmp_path: Path, signer: Signer) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1))
    plan = compile_plan(plant)
    runtime = CollectorRuntime(plan=plan, signer=signer, buffer=MemoryBuffer(), source=ModbusSource(),
                               tick_ms=1000, reloader=lambda: Reload(plan=plan, tick_ms=1000,
                                                                     keep_raw_registers=False))
    assert runtime._load_reload() is not None  # the digest is the same, the setting is not
    same = CollectorRuntime(plan=plan, signer=signer, buffer=MemoryBuffer(), source=ModbusSource(),
                            tick_ms=1000, reloader=lambda: Reload(plan=plan, tick_ms=1000,
                                                                  keep_raw_registers=True))
    assert same._load_reload() is None  # nothing changed


async def test_a_serial_line_whose_settings_change_gets_a_new_link() -> None:
    line = SerialLink(line_id="line-1", port="/dev/ttyUSB0", baudrate=9600)
    device = DevicePlan(device_id="d", link=line, unit_id=1, timeout_ms=100, requests=(), points=(),
                        status=None, status_point_id=None)
    source = ModbusSource()
    first = source._link(device)
    assert source._link(device) is first
    moved = dataclasses.replace(device, link=dataclasses.replace(line, port="/dev/ttyUSB1", baudrate=19200))
    second = source._link(moved)
    assert second is not first and second.link == moved.link


class _BrokenOnce:
    """A device source with a bug: its first poll raises something no one handles."""

    def __init__(self, inner: ModbusSource) -> None:
        self.inner = inner
        self.raised = False

    async def poll(self, device: DevicePlan) -> PollOutcome:
        if not self.raised:
            self.raised = True
            raise RuntimeError("a bug in a source")
        return await self.inner.poll(device)

    async def close(self) -> None:
        await self.inner.close()


async def test_a_bug_in_one_poll_does_not_stop_the_line(
        tmp_path: Path, signer: Signer, caplog: pytest.LogCaptureFixture) -> None:
    plant = load_plant(write_plant(tmp_path, grpc_port=1, tick_ms=200))
    buffer = MemoryBuffer()
    source = _BrokenOnce(ModbusSource())
    runtime = CollectorRuntime(plan=compile_plan(plant), signer=signer, buffer=buffer, source=source,
                               tick_ms=200)
    async with serving(plant):
        ticker = asyncio.create_task(runtime._ticker())

        async def polled_again() -> bool:
            return all(health.polls >= 3 for health in runtime.devices.values())
        await wait_for(polled_again, timeout_s=10, what="polling to go on after the failure")
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await source.close()
    assert source.raised
    assert any("ALARM" in r.getMessage() and "unexpectedly" in r.getMessage() for r in caplog.records)
    assert sum(health.failures for health in runtime.devices.values()) >= 1
