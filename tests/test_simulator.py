"""What the plant simulator serves, without a socket: registers and bits of every kind of point,
address_base, bit composition, fixed words and text, totalizers set by hand, fault state.

Golden words are worked out by hand from the IEEE 754 / two's-complement bit patterns. Round trips
through a real Modbus client are the collector's tests (tests/test_runtime.py and the serial ones).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import (
    DataType,
    DeviceConfig,
    DeviceProfile,
    LoadedDevice,
    RegisterType,
    SerialLine,
    load_plant,
)
from collector.decode import decode_point, decode_raw, decode_text
from collector.errors import ConfigError
from collector.plan import compile_plan
from collector.simulator import (
    RECENT_REQUESTS,
    TOTALIZER_EPOCH_S,
    CounterAnchor,
    Fault,
    FaultMode,
    PlantSimulator,
    RequestRecord,
    SimulatedDevice,
    device_registers,
    point_value,
    status_word,
    table_spans,
    totalizer_count,
)
from tests.conftest import DEMO_PLANT, FIRMWARE
from tests.serial_pty import PtyPair

T = 1_795_000_100.0
HOLDING, INPUT, COIL, DISCRETE = (RegisterType.HOLDING, RegisterType.INPUT, RegisterType.COIL,
                                  RegisterType.DISCRETE_INPUT)


def _point(name: str, address: int, data_type: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "data_type": data_type, "quantity": "q", "unit": "u",
            **fields}


def _device(points: list[dict[str, Any]], *, device_id: str = "dev-1", unit_id: int = 1,
            serial_line: SerialLine | None = None, **profile: Any) -> LoadedDevice:
    """A loaded device from a profile written inline (no files)."""
    transport: dict[str, Any] = ({"serial_line": serial_line.id} if serial_line is not None
                                 else {"tcp": {"host": "127.0.0.1", "port": 1502}})
    config = DeviceConfig.model_validate({"id": device_id, "profile": "inline.yaml",
                                          "emission_unit": "stack-1", "unit_id": unit_id, **transport})
    return LoadedDevice(config=config,
                        profile=DeviceProfile.model_validate({"name": "inline", "points": points, **profile}),
                        profile_path=Path("inline.yaml"), serial_line=serial_line, poll_interval_ms=1000)


def _words(registers: dict[tuple[RegisterType, int], int], table: RegisterType, first: int,
           count: int) -> list[int]:
    return [registers.get((table, address), 0) for address in range(first, first + count)]


# --- numbers, byte orders, address_base -----------------------------------------------------------


def test_constant_numbers_are_served_in_their_byte_order() -> None:
    device = _device([
        _point("f32", 0, "float32", simulation={"value": 1.0}),  # 0x3F800000
        _point("f32_swapped", 2, "float32", byte_order="CDAB", simulation={"value": 1.0}),
        _point("i16", 4, "int16", simulation={"value": -2}),  # 0xFFFE
        _point("i16_bytes", 5, "int16", byte_order="BADC", simulation={"value": -2}),
        _point("u64", 6, "uint64", byte_order="DCBA", simulation={"value": 0x0102030405060700}),
        _point("f64", 10, "float64", byte_order="BADC", simulation={"value": 3.25}),  # 0x400A0000...
        _point("scaled", 14, "uint32", scale=0.01, offset=-10.0, simulation={"value": 2.5}),
    ])
    registers = device_registers(device, T)
    assert _words(registers, HOLDING, 0, 15) == [
        0x3F80, 0x0000, 0x0000, 0x3F80, 0xFFFE, 0xFEFF,
        0x0007, 0x0605, 0x0403, 0x0201, 0x0A40, 0x0000, 0x0000, 0x0000,
        0x0000,  # 1250 counts = (2.5 + 10) / 0.01, high word first
    ]
    assert registers[(HOLDING, 15)] == 1250


def test_the_profile_default_byte_order_applies_when_the_point_names_none() -> None:
    device = _device([_point("f32", 0, "float32", simulation={"value": 1.0})],
                     defaults={"byte_order": "CDAB"})
    assert _words(device_registers(device, T), HOLDING, 0, 2) == [0x0000, 0x3F80]


def test_address_base_1_serves_profile_address_n_at_wire_address_n_minus_1() -> None:
    device = _device([
        _point("so2", 1, "uint16", register_type="input", simulation={"value": 7}),
        _point("door", 1, "bool", register_type="discrete_input", simulation={"value": 1}),
    ], address_base=1, status={"address": 10, "register_type": "input", "bits": {"fault": 2}})
    registers = device_registers(device, T)
    assert registers == {(INPUT, 0): 7, (DISCRETE, 0): 1, (INPUT, 9): 0}
    assert table_spans(device) == {INPUT: (0, 10), DISCRETE: (0, 1)}


def test_a_sine_point_serves_its_point_value() -> None:
    point = _point("so2", 0, "float32", simulation={"mean": 35.0, "amplitude": 8.0, "noise": 0.6})
    device = _device([point])
    value = point_value("dev-1", device.profile.points[0], T)
    assert 26.0 < value < 44.0
    served = decode_raw(_words(device_registers(device, T), HOLDING, 0, 2), DataType.FLOAT32)
    assert served == pytest.approx(value, rel=1e-7)
    # deterministic: the same instant gives the same words, another instant others
    assert device_registers(device, T) == device_registers(device, T)
    assert device_registers(device, T) != device_registers(device, T + 1.0)


# --- bits in registers, coils, discrete inputs ----------------------------------------------------


def test_bit_points_and_the_status_word_share_their_register() -> None:
    status = {"address": 20, "bits": {"calibration": 0, "maintenance": 1, "fault": 2},
              "simulation_calibration_every_s": 10, "simulation_calibration_duration_s": 5}
    device = _device([
        _point("flag", 20, "bool", bit=8, simulation={"value": 1}),
        _point("mode", 20, "bits", bit=10, bit_count=3, simulation={"value": 5}),
        _point("off", 20, "bool", bit=15, simulation={"value": 0}),
        _point("alarm", 21, "bool", bit=15, simulation={"value": 1}),
    ], status=status)
    assert device.profile.status is not None
    window = [(t, status_word("dev-1", device.profile.status, t)) for t in range(int(T), int(T) + 10)]
    quiet = next(t for t, word in window if not word)
    calibrating = next(t for t, word in window if word)
    assert device_registers(device, quiet)[(HOLDING, 20)] == 1 << 8 | 5 << 10
    assert device_registers(device, calibrating)[(HOLDING, 20)] == 1 << 8 | 5 << 10 | 1
    assert device_registers(device, quiet)[(HOLDING, 21)] == 0x8000


def test_bits_take_scale_and_offset_and_clamp_to_their_width() -> None:
    device = _device([
        _point("level", 0, "bits", bit=4, bit_count=4, scale=0.5, offset=1.0, simulation={"value": 4.0}),
        _point("too_big", 1, "bits", bit=0, bit_count=2, simulation={"value": 9}),
        _point("negative", 2, "bits", bit=0, bit_count=2, simulation={"value": -3}),
    ])
    registers = device_registers(device, T)
    assert registers[(HOLDING, 0)] == 6 << 4  # (4.0 - 1.0) / 0.5
    assert registers[(HOLDING, 1)] == 0b11
    assert registers[(HOLDING, 2)] == 0


def test_a_bool_follows_its_wave_from_one_half_up() -> None:
    device = _device([_point("running", 0, "bool", bit=3,
                             simulation={"mean": 0.5, "amplitude": 1.0, "period_s": 60})])
    point = device.profile.points[0]
    seen = set()
    for t in range(int(T), int(T) + 60):
        word = device_registers(device, t)[(HOLDING, 0)]
        assert word == (8 if point_value("dev-1", point, t) >= 0.5 else 0)
        seen.add(word)
    assert seen == {0, 8}


def test_coils_and_discrete_inputs_are_single_bits() -> None:
    device = _device([
        _point("c0", 0, "bool", register_type="coil", simulation={"value": 1}),
        _point("c17", 17, "bool", register_type="coil", simulation={"value": 1}),
        _point("c5", 5, "bool", register_type="coil", simulation={"value": 0}),
        _point("d3", 3, "bool", register_type="discrete_input", simulation={"words": [1]}),
        _point("d4", 4, "bool", register_type="discrete_input"),  # no simulation: 0
    ])
    assert device_registers(device, T) == {(COIL, 0): 1, (COIL, 17): 1, (COIL, 5): 0,
                                           (DISCRETE, 3): 1, (DISCRETE, 4): 0}
    assert table_spans(device) == {COIL: (0, 18), DISCRETE: (3, 5)}


async def test_coil_n_is_bit_n_of_the_block_the_server_reads() -> None:
    # pymodbus keeps coils 16 to a register (bit addressing): coil N is bit N % 16 of register N // 16
    device = _device([
        _point("c1", 1, "bool", register_type="coil", simulation={"value": 1}),
        _point("c15", 15, "bool", register_type="coil", simulation={"value": 1}),
        _point("c16", 16, "bool", register_type="coil", simulation={"value": 1}),
        _point("c33", 33, "bool", register_type="coil", simulation={"value": 1}),
    ])
    sim = SimulatedDevice(device=device, clock=lambda: T)
    block = [0xFFFF] * 4  # stale contents are overwritten
    assert await sim._fill(1, 0, 1, 33, block, None) is None
    assert block[:3] == [1 << 1 | 1 << 15, 1 << 0, 1 << 1]
    assert await sim._fill(1, 0, 34, 1, block, None) == 2  # past the last coil: illegal address
    assert await sim._fill(1, 0, 0, 2, block, None) == 2  # coil 0 is below the lowest coil
    assert await sim._fill(2, 0, 0, 1, block, None) == 2  # no discrete inputs at all
    assert await sim._fill(5, 0, 1, 1, block, [True]) == 1  # writes are refused


async def test_the_register_block_is_filled_for_the_requested_range_only() -> None:
    device = _device([_point("a", 10, "uint16", simulation={"value": 7}),
                      _point("b", 13, "uint16", simulation={"value": 9})])
    sim = SimulatedDevice(device=device, clock=lambda: T)
    block = [0xAAAA] * 5  # the block starts at wire address 10
    assert await sim._fill(3, 10, 11, 3, block, None) is None
    assert block == [0xAAAA, 0, 0, 9, 0xAAAA]
    assert await sim._fill(4, 10, 10, 1, block, None) == 2  # no input registers


# --- strings, fixed words -------------------------------------------------------------------------


def test_text_is_served_two_characters_per_register() -> None:
    device = _device([_point("serial", 100, "string", registers=5, simulation={"text": "SLGA-0173"}),
                      _point("blank", 105, "string", registers=2),
                      _point("swapped", 107, "string", registers=1, byte_order="BADC",
                             simulation={"text": "AB"})])
    registers = device_registers(device, T)
    assert _words(registers, HOLDING, 100, 5) == [0x534C, 0x4741, 0x2D30, 0x3137, 0x3300]
    assert decode_text(_words(registers, HOLDING, 100, 5)) == "SLGA-0173"
    assert _words(registers, HOLDING, 105, 2) == [0, 0]
    assert registers[(HOLDING, 107)] == 0x4241


def test_fixed_words_are_served_exactly_as_given() -> None:
    device = _device([
        _point("nan", 0, "float32", simulation={"words": [0x7FC0, 0x0001]}),
        _point("raw", 2, "uint32", byte_order="DCBA", scale=0.1, simulation={"words": [0xDEAD, 0xBEEF]}),
        _point("odd", 4, "string", registers=2, simulation={"words": [0xFFFE, 0x0041]}),
        _point("bits", 6, "bits", bit=4, bit_count=4, simulation={"words": [0xFFFF]}),
    ])
    registers = device_registers(device, T)
    assert _words(registers, HOLDING, 0, 6) == [0x7FC0, 0x0001, 0xDEAD, 0xBEEF, 0xFFFE, 0x0041]
    assert registers[(HOLDING, 6)] == 0x00F0  # only the point's own bits of the word
    assert math.isnan(point_value("dev-1", device.profile.points[0], T))


def test_fixed_words_of_the_wrong_length_are_refused_naming_the_field() -> None:
    device = _device([_point("total", 0, "uint32", simulation={"words": [1]})])
    with pytest.raises(ConfigError, match=r"points\[0\]\.simulation\.words: point 'total' spans 2 registers"):
        SimulatedDevice(device=device, clock=lambda: T)


def test_text_longer_than_its_registers_is_refused() -> None:
    device = _device([_point("tag", 0, "string", registers=2, simulation={"text": "TOO-LONG"})])
    with pytest.raises(ConfigError, match=r"points\[0\]\.simulation\.text: 'TOO-LONG' needs 8 bytes"):
        SimulatedDevice(device=device, clock=lambda: T)


def test_text_on_a_number_is_refused() -> None:
    device = _device([_point("flow", 0, "float32", simulation={"text": "12"})])
    with pytest.raises(ConfigError, match="is float32, not a string"):
        SimulatedDevice(device=device, clock=lambda: T)


# --- totalizers -----------------------------------------------------------------------------------

METER = _point("total", 0, "uint32", scale=0.01, byte_order="CDAB", totalizer={},
               simulation={"rate_per_s": 0.5})  # 50 counts per second, give or take 10 %


def _served_count(sim: SimulatedDevice, t_s: float | None = None) -> int:
    low, high = _words(sim.registers(t_s), HOLDING, 0, 2)
    return high << 16 | low


def test_a_totalizer_counts_whole_steps_from_the_epoch() -> None:
    device = _device([METER])
    point = device.profile.points[0]
    assert totalizer_count("dev-1", point, TOTALIZER_EPOCH_S - 100) == 0
    one_day = totalizer_count("dev-1", point, TOTALIZER_EPOCH_S + 86_400)
    assert isinstance(one_day, int)
    assert 45 * 86_400 <= one_day <= 55 * 86_400
    assert point_value("dev-1", point, TOTALIZER_EPOCH_S + 86_400) == pytest.approx(one_day * 0.01)
    sim = SimulatedDevice(device=device, clock=lambda: TOTALIZER_EPOCH_S + 86_400)
    assert _served_count(sim) == one_day


def test_set_counter_just_below_the_rollover_wraps_to_a_small_count() -> None:
    now = [T]
    sim = SimulatedDevice(device=_device([METER]), clock=lambda: now[0])
    sim.set_counter("total", 2**32 - 10)
    assert _served_count(sim) == 2**32 - 10
    assert sim.counters["total"] == CounterAnchor(T, 2**32 - 10)
    now[0] = T + 0.1  # 4.5 to 5.5 counts later: not yet
    assert 2**32 - 10 < _served_count(sim) < 2**32
    now[0] = T + 2.0  # 90 to 110 counts later: past 2**32, so it starts again from zero
    assert 80 <= _served_count(sim) < 100
    counted = totalizer_count("dev-1", sim.device.profile.points[0], T + 2.0, since=CounterAnchor(T, 0))
    assert _served_count(sim) == 2**32 - 10 + int(counted) - 2**32  # at the meter's own rate
    sim.set_counter("total", 0)  # a meter reset
    assert _served_count(sim) == 0


def test_a_uint64_counter_counts_exactly_near_two_to_the_64() -> None:
    device = _device([_point("volume", 0, "uint64", totalizer={}, simulation={"rate_per_s": 1.0})])
    point = device.profile.points[0]
    anchor = CounterAnchor(T, 2**64 - 3)
    assert totalizer_count("dev-1", point, T, since=anchor) == 2**64 - 3
    assert totalizer_count("dev-1", point, T + 1.5, since=anchor) == 2**64 - 2  # 1.35..1.65 counts
    assert totalizer_count("dev-1", point, T + 10, since=anchor) in range(5, 9)
    sim = SimulatedDevice(device=device, clock=lambda: T)
    sim.set_counter("volume", 2**64 - 3)
    assert decode_raw(_words(sim.registers(), HOLDING, 0, 4), DataType.UINT64) == 2**64 - 3


def test_a_configured_rollover_wraps_there() -> None:
    device = _device([_point("energy", 0, "uint32", totalizer={"rollover_at": 100_000_000},
                             simulation={"rate_per_s": 10.0})])
    point = device.profile.points[0]
    assert totalizer_count("dev-1", point, T + 1.0, since=CounterAnchor(T, 99_999_999)) < 20
    sim = SimulatedDevice(device=device, clock=lambda: T)
    with pytest.raises(ValueError, match=r"counts 0\.\.99999999, not 100000000"):
        sim.set_counter("energy", 100_000_000)


def test_a_float_totalizer_counts_fractions() -> None:
    device = _device([_point("heat", 0, "float64", totalizer={"rollover_at": 1e6},
                             simulation={"rate_per_s": 0.25})])
    point = device.profile.points[0]
    count = totalizer_count("dev-1", point, T + 1.0, since=CounterAnchor(T, 10))
    assert isinstance(count, float)
    assert 10.2 < count < 10.3


def test_set_counter_overrides_a_constant_and_holds_without_a_rate() -> None:
    now = [T]
    sim = SimulatedDevice(device=_device([_point("n", 0, "uint16", simulation={"value": 5})]),
                          clock=lambda: now[0])
    assert sim.registers()[(HOLDING, 0)] == 5
    sim.set_counter("n", 42)
    now[0] += 100
    assert sim.registers()[(HOLDING, 0)] == 42


def test_set_counter_refuses_what_cannot_count() -> None:
    sim = SimulatedDevice(device=_device([METER, _point("on", 2, "bool", bit=0)]), clock=lambda: T)
    with pytest.raises(KeyError, match="no point 'nope'"):
        sim.set_counter("nope", 1)
    with pytest.raises(ValueError, match="only numbers count"):
        sim.set_counter("on", 1)
    with pytest.raises(ValueError, match=r"counts 0\.\.4294967295, not -1"):
        sim.set_counter("total", -1)
    with pytest.raises(ValueError, match="not 4294967296"):
        sim.set_counter("total", 2**32)


# --- faults and the request log --------------------------------------------------------------------


def test_fault_state_is_set_cleared_and_checked() -> None:
    sim = SimulatedDevice(device=_device([METER]), clock=lambda: T)
    assert sim.fault is None
    sim.set_fault(FaultMode.SILENT)
    assert sim.fault == Fault(FaultMode.SILENT)
    sim.set_fault(FaultMode.EXCEPTION, exception_code=4)
    assert sim.fault == Fault(FaultMode.EXCEPTION, exception_code=4)
    assert Fault(FaultMode.EXCEPTION).exception_code == 6  # device busy by default
    sim.set_fault(FaultMode.SLOW, delay_s=0.25)
    assert sim.fault == Fault(FaultMode.SLOW, delay_s=0.25)
    assert "fault=SLOW" in repr(sim)
    sim.set_fault(None)
    assert sim.fault is None
    with pytest.raises(ValueError, match="needs delay_s"):
        sim.set_fault(FaultMode.SLOW)
    with pytest.raises(ValueError, match="0 or more seconds"):
        sim.set_fault(FaultMode.SLOW, delay_s=-1)
    with pytest.raises(ValueError, match=r"1\.\.255, not 0"):
        sim.set_fault(FaultMode.EXCEPTION, exception_code=0)


def test_requests_are_counted_by_kind_and_the_log_is_bounded() -> None:
    sim = SimulatedDevice(device=_device([METER]), clock=lambda: T)
    assert sim.record(3, 0, 2) is None
    sim.set_fault(FaultMode.SILENT)
    assert sim.record(1, 5, 1) == Fault(FaultMode.SILENT)
    assert sim.record(16, 0, 2) == Fault(FaultMode.SILENT)  # a write: a request, not a read
    assert (sim.requests, sim.reads) == (3, 2)
    assert sim.reads_by_type == {HOLDING: 1, COIL: 1}
    assert list(sim.recent) == [RequestRecord(3, 0, 2), RequestRecord(1, 5, 1, FaultMode.SILENT),
                                RequestRecord(16, 0, 2, FaultMode.SILENT)]
    for address in range(RECENT_REQUESTS + 10):
        sim.record(4, address, 1)
    assert len(sim.recent) == RECENT_REQUESTS
    assert sim.recent[-1] == RequestRecord(4, RECENT_REQUESTS + 9, 1, FaultMode.SILENT)
    sim.reset_requests()
    assert (sim.requests, sim.reads, len(sim.recent), sum(sim.reads_by_type.values())) == (0, 0, 0, 0)


# --- the plant ------------------------------------------------------------------------------------


def _write_plant(tmp_path: Path) -> Path:
    profiles = FIRMWARE / "profiles"
    plant = {
        "plant": {"id": "sim-plant"},
        "collector": {"id": "sim-c1", "key_file": "collector.key",
                      "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "serial_lines": [{"id": "line-1", "port": str(tmp_path / "ttyS-collector")}],
        "devices": [
            {"id": "cems-1", "profile": str(profiles / "cems-analyzer-rack.yaml"),
             "emission_unit": "stack-1", "tcp": {"host": "127.0.0.1", "port": 15020}},
            {"id": "flow-1", "profile": str(profiles / "generic-flow-computer.yaml"),
             "emission_unit": "boiler-1", "tcp": {"host": "127.0.0.1", "port": 15020}, "unit_id": 2},
            {"id": "feeder-1", "profile": str(profiles / "coal-feeder-belt-scale.yaml"),
             "emission_unit": "boiler-1", "tcp": {"host": "127.0.0.1", "port": 15021}},
            {"id": "gas-1", "profile": str(profiles / "generic-gas-analyzer.yaml"),
             "emission_unit": "stack-1", "serial_line": "line-1", "unit_id": 1},
            {"id": "gas-2", "profile": str(profiles / "generic-gas-analyzer.yaml"),
             "emission_unit": "stack-2", "serial_line": "line-1", "unit_id": 2},
        ],
    }
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(plant))
    return path


def test_devices_are_grouped_by_endpoint_and_serial_line(tmp_path: Path) -> None:
    plant = load_plant(_write_plant(tmp_path))
    simulator = PlantSimulator(plant=plant, serial_ports={"line-1": str(tmp_path / "ttyS-plant")})
    assert {where: [s.device_id for s in sims] for where, sims in simulator.endpoints.items()} == {
        ("127.0.0.1", 15020): ["cems-1", "flow-1"], ("127.0.0.1", 15021): ["feeder-1"]}
    assert {line: [(s.device_id, s.unit_id) for s in sims]
            for line, sims in simulator.serial_lines.items()} == {"line-1": [("gas-1", 1), ("gas-2", 2)]}
    simulator.set_fault("gas-1", FaultMode.EXCEPTION, exception_code=11)
    assert simulator.device("gas-1").fault == Fault(FaultMode.EXCEPTION, exception_code=11)
    assert simulator.device("gas-2").fault is None
    with pytest.raises(KeyError, match="no device 'gas-9'"):
        simulator.set_fault("gas-9", None)
    with pytest.raises(ValueError, match="serial_ports names lines no device uses: line-2"):
        PlantSimulator(plant=plant, serial_ports={"line-2": "/dev/null"})
    assert not simulator.ready.is_set()


def test_every_request_the_collector_plans_reads_what_the_simulator_holds(tmp_path: Path) -> None:
    """The collector's own decoding of the served words gives the simulated values, for every
    point of every shipped profile, and no planned request leaves the span the simulator serves."""
    plant = load_plant(_write_plant(tmp_path))
    plan = compile_plan(plant)
    t_s = TOTALIZER_EPOCH_S + 123_456.5
    for device, device_plan in zip(plant.devices, plan.devices, strict=True):
        registers = device_registers(device, t_s)
        spans = table_spans(device)
        responses = []
        for request in device_plan.requests:
            first, end = spans[request.register_type]
            assert first <= request.address and request.address + request.count <= end
            responses.append(_words(registers, request.register_type, request.address, request.count))
        for point, point_plan in zip(device.profile.points, device_plan.points, strict=True):
            words = responses[point_plan.request_index][point_plan.offset:]
            value, text, _ = decode_point(point_plan, words[:point_plan.register_count])
            sim = point.simulation
            assert sim is not None
            if point.data_type is DataType.STRING:
                assert text == sim.text
                continue
            expected = point_value(device.config.id, point, t_s)
            if point.data_type is DataType.BOOL:
                expected = 1.0 if expected >= 0.5 else 0.0
            tolerance = point.scale / 2 + abs(expected) * 1e-6
            assert abs(value - expected) <= tolerance, (device.config.id, point.name, value, expected)


def test_the_demo_plant_is_served_as_before() -> None:
    plant = load_plant(DEMO_PLANT)
    feeder = next(d for d in plant.devices if d.config.id == "feeder-1a")
    total = feeder.profile.points[1]
    registers = device_registers(feeder, T)
    low, high = _words(registers, HOLDING, 2, 2)  # CDAB: low word first
    assert (high << 16 | low) * total.scale == pytest.approx(point_value("feeder-1a", total, T))
    assert round(point_value("feeder-1a", total, T) / total.scale) == high << 16 | low


# --- the serial line the simulator is given -------------------------------------------------------


def test_a_pty_pair_carries_bytes_both_ways_and_cleans_up(tmp_path: Path) -> None:
    with PtyPair(tmp_path / "pty") as pair:
        ends = [os.open(end, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
                for end in (pair.collector_end, pair.plant_end)]
        try:
            for sender, receiver, frame in ((0, 1, b"\x01\x03\x00\x00\x00\x02\xc4\x0b"),
                                            (1, 0, b"\x01\x83\x06\xc0\xf2")):
                os.write(ends[sender], frame)
                received = b""
                deadline = time.monotonic() + 5
                while len(received) < len(frame) and time.monotonic() < deadline:
                    try:
                        received += os.read(ends[receiver], 64)
                    except BlockingIOError:
                        time.sleep(0.005)
                assert received == frame
        finally:
            for fd in ends:
                os.close(fd)
    assert not pair.running
    assert not Path(pair.collector_end).is_symlink() and not Path(pair.plant_end).is_symlink()
    with PtyPair() as own:  # in a temporary folder of its own, removed on stop
        assert Path(own.plant_end).exists()
    assert not own.directory.exists()
