"""Every register kind, type and byte order read through the collector's Modbus client from the
simulator, over Modbus TCP and over Modbus RTU on a pseudo-terminal pair, against golden values
stated by hand (the profile serves fixed raw words: tests/golden/all-types-profile.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from collector.config import load_plant
from collector.decode import decode_device
from collector.modbus_source import ModbusSource
from collector.plan import DevicePlan, compile_plan
from proto.stackline.v1 import stackline_pb2 as pb
from tests.conftest import free_port
from tests.plant_sim import serving
from tests.serial_pty import PtyPair

GOLDEN_PROFILE = Path(__file__).parent / "golden" / "all-types-profile.yaml"

# raw words as served, and the value each decodes to (checked by hand with struct)
NUMBERS: dict[str, tuple[tuple[int, ...], float]] = {
    "int16_abcd": ((0xCFC7,), -12345.0),
    "int16_cdab": ((0xCFC7,), -12345.0),
    "int16_badc": ((0xC7CF,), -12345.0),
    "int16_dcba": ((0xC7CF,), -12345.0),
    "uint16_abcd": ((0xC822,), 51234.0),
    "uint16_cdab": ((0xC822,), 51234.0),
    "uint16_badc": ((0x22C8,), 51234.0),
    "uint16_dcba": ((0x22C8,), 51234.0),
    "int32_abcd": ((0xF8A4, 0x32EB), -123456789.0),
    "int32_cdab": ((0x32EB, 0xF8A4), -123456789.0),
    "int32_badc": ((0xA4F8, 0xEB32), -123456789.0),
    "int32_dcba": ((0xEB32, 0xA4F8), -123456789.0),
    "uint32_abcd": ((0xB2D0, 0x5E00), 3000000000.0),
    "uint32_cdab": ((0x5E00, 0xB2D0), 3000000000.0),
    "uint32_badc": ((0xD0B2, 0x005E), 3000000000.0),
    "uint32_dcba": ((0x005E, 0xD0B2), 3000000000.0),
    "int64_abcd": ((0xEEDD, 0xEF0B, 0x8216, 0x7EEB), float(-1234567890123456789)),
    "int64_cdab": ((0x7EEB, 0x8216, 0xEF0B, 0xEEDD), float(-1234567890123456789)),
    "int64_badc": ((0xDDEE, 0x0BEF, 0x1682, 0xEB7E), float(-1234567890123456789)),
    "int64_dcba": ((0xEB7E, 0x1682, 0x0BEF, 0xDDEE), float(-1234567890123456789)),
    "uint64_abcd": ((0xAB54, 0xA98C, 0xEB1F, 0x0AD2), float(12345678901234567890)),
    "uint64_cdab": ((0x0AD2, 0xEB1F, 0xA98C, 0xAB54), float(12345678901234567890)),
    "uint64_badc": ((0x54AB, 0x8CA9, 0x1FEB, 0xD20A), float(12345678901234567890)),
    "uint64_dcba": ((0xD20A, 0x1FEB, 0x8CA9, 0x54AB), float(12345678901234567890)),
    "float32_abcd": ((0x42F6, 0xE979), 123.45600128173828),
    "float32_cdab": ((0xE979, 0x42F6), 123.45600128173828),
    "float32_badc": ((0xF642, 0x79E9), 123.45600128173828),
    "float32_dcba": ((0x79E9, 0xF642), 123.45600128173828),
    "float64_abcd": ((0xC0C3, 0x4A45, 0x87E7, 0xC06E), -9876.54321),
    "float64_cdab": ((0xC06E, 0x87E7, 0x4A45, 0xC0C3), -9876.54321),
    "float64_badc": ((0xC3C0, 0x454A, 0xE787, 0x6EC0), -9876.54321),
    "float64_dcba": ((0x6EC0, 0xE787, 0x454A, 0xC3C0), -9876.54321),
    "scaled": ((0x04D2,), 1234 * 0.1 - 40.0),  # int16 1234, scale 0.1, offset -40
    "input_float": ((0xE979, 0x42F6), 123.45600128173828),  # input register, CDAB
    "flag_bit": ((0x00A8,), 1.0),  # bit 3 of 0x00A8
    "range_field": ((0x00A8,), 10.0),  # bits 4..7 of 0x00A8
    "coil_on": ((1,), 1.0),
    "coil_off": ((0,), 0.0),
    "coil_far": ((1,), 1.0),
    "input_on": ((1,), 1.0),
    "input_off": ((0,), 0.0),
}
TEXTS = {
    "text": ((0x534E, 0x2D31, 0x3233, 0x3435, 0x0000, 0x0000), "SN-12345"),
    "text_swapped": ((0x4241, 0x0043), "ABC"),  # BADC: low byte first in each register
}
# holding 1..90 in one request; the status word and the input float in one; coils 1-2 and 20
# (bits are not read across gaps) in two; discrete inputs 5-6 in one
EXPECTED_REQUESTS = 5


def write_golden_plant(directory: Path, *, tcp_port: int, serial_port: str | None) -> Path:
    """A plant with the golden device on Modbus TCP and, when given a port, two golden devices
    (units 1 and 2) on one serial line."""
    devices: list[dict[str, Any]] = [{
        "id": "golden-tcp", "profile": str(GOLDEN_PROFILE), "emission_unit": "stack-1",
        "tcp": {"host": "127.0.0.1", "port": tcp_port}, "unit_id": 1, "timeout_ms": 500,
    }]
    plant: dict[str, Any] = {
        "plant": {"id": "golden"},
        "collector": {"id": "golden-c1", "key_file": "collector.key", "tick_ms": 1000,
                      "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "devices": devices,
    }
    if serial_port is not None:
        plant["serial_lines"] = [{"id": "line-1", "port": serial_port, "baudrate": 115200,
                                  "request_gap_ms": 5}]
        for unit in (1, 2):
            devices.append({"id": f"golden-rtu-{unit}", "profile": str(GOLDEN_PROFILE),
                            "emission_unit": "stack-1", "serial_line": "line-1", "unit_id": unit,
                            "timeout_ms": 500})
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "golden-plant.yaml"
    path.write_text(yaml.safe_dump(plant, sort_keys=False))
    return path


def _assert_golden(device: DevicePlan, readings: list[Any]) -> None:
    by_name = {r.point_id.rsplit("/", 1)[-1]: r for r in readings}
    for name, (words, value) in NUMBERS.items():
        reading = by_name[name]
        assert reading.quality == pb.QUALITY_NORMAL, (device.device_id, name)
        assert reading.raw_registers == words, (device.device_id, name)
        assert reading.value == value, (device.device_id, name, reading.value, value)
    for name, (words, text) in TEXTS.items():
        reading = by_name[name]
        assert (reading.raw_registers, reading.text) == (words, text), (device.device_id, name)
    assert by_name["status"].value == 0.0


async def test_every_type_and_byte_order_over_modbus_tcp(tmp_path: Path) -> None:
    plant = load_plant(write_golden_plant(tmp_path, tcp_port=free_port(), serial_port=None))
    plan = compile_plan(plant)
    (device,) = plan.devices
    assert len(device.requests) == EXPECTED_REQUESTS
    source = ModbusSource()
    async with serving(plant) as simulator:
        outcome = await source.poll(device)
        await source.close()
        assert outcome.error is None, outcome.error
        _assert_golden(device, decode_device(device, outcome.responses, outcome.started_unix_ms))
        assert simulator.device("golden-tcp").reads == EXPECTED_REQUESTS


async def test_every_type_and_byte_order_over_modbus_rtu_on_a_serial_line(
        tmp_path: Path, pty_pair: PtyPair) -> None:
    plant = load_plant(write_golden_plant(tmp_path, tcp_port=free_port(),
                                          serial_port=pty_pair.collector_end))
    plan = compile_plan(plant)
    serial = [d for d in plan.devices if d.device_id.startswith("golden-rtu")]
    source = ModbusSource()
    async with serving(plant, serial_ports={"line-1": pty_pair.plant_end}) as simulator:
        # both units on the one line, one request at a time
        outcomes = [await source.poll(device) for device in serial]
        await source.close()
        for device, outcome in zip(serial, outcomes, strict=True):
            assert outcome.error is None, outcome.error
            _assert_golden(device, decode_device(device, outcome.responses, outcome.started_unix_ms))
            assert simulator.device(device.device_id).reads == EXPECTED_REQUESTS
