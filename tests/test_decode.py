"""Register words to engineering values and quality flags (collector/decode.py).

The golden register values are computed by hand from the IEEE 754 / two's-complement bit patterns,
not by the code under test. Order names, A the most significant byte: ABCD = word big / byte big,
CDAB = word little / byte big, BADC = word big / byte little, DCBA = word little / byte little.
"""

from __future__ import annotations

import dataclasses
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import ByteOrder, DataType, RegisterType, TotalizerSpec, load_plant
from collector.decode import (
    decode_device,
    decode_raw,
    decode_text,
    decode_value,
    device_quality,
    encode_raw,
    encode_text,
    encode_value,
)
from collector.plan import (
    DevicePlan,
    PointPlan,
    ReadPlan,
    ReadRequest,
    StatusPlan,
    TcpLink,
    compile_plan,
)
from collector.totalizer import TotalizerTracker
from proto.stackline.v1 import stackline_pb2 as pb
from tests.conftest import DEMO_PLANT

ABCD, BADC, CDAB, DCBA = ByteOrder.ABCD, ByteOrder.BADC, ByteOrder.CDAB, ByteOrder.DCBA
NUMERIC_TYPES = [data_type for data_type in DataType if data_type.is_numeric_word]

# (data type, value, {order: registers}); for one-register types only the byte swap shows.
GOLDEN: list[tuple[DataType, float, dict[str, list[int]]]] = [
    (DataType.INT16, -2, {"ABCD": [0xFFFE], "CDAB": [0xFFFE], "BADC": [0xFEFF], "DCBA": [0xFEFF]}),
    (DataType.INT16, -12345,
     {"ABCD": [0xCFC7], "CDAB": [0xCFC7], "BADC": [0xC7CF], "DCBA": [0xC7CF]}),
    (DataType.UINT16, 0xABCD,
     {"ABCD": [0xABCD], "CDAB": [0xABCD], "BADC": [0xCDAB], "DCBA": [0xCDAB]}),
    (DataType.UINT16, 65535,
     {"ABCD": [0xFFFF], "CDAB": [0xFFFF], "BADC": [0xFFFF], "DCBA": [0xFFFF]}),
    (DataType.INT32, -123456789,  # 0xF8A432EB
     {"ABCD": [0xF8A4, 0x32EB], "CDAB": [0x32EB, 0xF8A4],
      "BADC": [0xA4F8, 0xEB32], "DCBA": [0xEB32, 0xA4F8]}),
    (DataType.UINT32, 0x12345678,
     {"ABCD": [0x1234, 0x5678], "CDAB": [0x5678, 0x1234],
      "BADC": [0x3412, 0x7856], "DCBA": [0x7856, 0x3412]}),
    (DataType.INT64, -0x0011223344556677,  # 0xFFEEDDCCBBAA9989
     {"ABCD": [0xFFEE, 0xDDCC, 0xBBAA, 0x9989], "CDAB": [0x9989, 0xBBAA, 0xDDCC, 0xFFEE],
      "BADC": [0xEEFF, 0xCCDD, 0xAABB, 0x8999], "DCBA": [0x8999, 0xAABB, 0xCCDD, 0xEEFF]}),
    (DataType.UINT64, 0x0011223344556677,  # below 2**53: exact as a float64
     {"ABCD": [0x0011, 0x2233, 0x4455, 0x6677], "CDAB": [0x6677, 0x4455, 0x2233, 0x0011],
      "BADC": [0x1100, 0x3322, 0x5544, 0x7766], "DCBA": [0x7766, 0x5544, 0x3322, 0x1100]}),
    (DataType.FLOAT32, -1.5,  # 0xBFC00000
     {"ABCD": [0xBFC0, 0x0000], "CDAB": [0x0000, 0xBFC0],
      "BADC": [0xC0BF, 0x0000], "DCBA": [0x0000, 0xC0BF]}),
    (DataType.FLOAT64, 123.456,  # 0x405EDD2F1A9FBE77
     {"ABCD": [0x405E, 0xDD2F, 0x1A9F, 0xBE77], "CDAB": [0xBE77, 0x1A9F, 0xDD2F, 0x405E],
      "BADC": [0x5E40, 0x2FDD, 0x9F1A, 0x77BE], "DCBA": [0x77BE, 0x9F1A, 0x2FDD, 0x5E40]}),
]
# float32 123.456 is 0x42F6E979; not exact in binary32, so checked to float32 precision.
FLOAT32_123_456 = {"ABCD": [0x42F6, 0xE979], "CDAB": [0xE979, 0x42F6],
                   "BADC": [0xF642, 0x79E9], "DCBA": [0x79E9, 0xF642]}

_CASES = [
    pytest.param(data_type, value, order, registers, id=f"{data_type.value}-{value}-{order}")
    for data_type, value, by_order in GOLDEN
    for order, registers in by_order.items()
]


@pytest.mark.parametrize(("data_type", "value", "order", "registers"), _CASES)
def test_decode_golden(data_type: DataType, value: float, order: str, registers: list[int]) -> None:
    assert decode_value(registers, data_type, byte_order=ByteOrder(order)) == value
    raw = decode_raw(registers, data_type, ByteOrder(order))
    assert raw == value
    assert isinstance(raw, float if data_type in (DataType.FLOAT32, DataType.FLOAT64) else int)


@pytest.mark.parametrize(("data_type", "value", "order", "registers"), _CASES)
def test_encode_golden(data_type: DataType, value: float, order: str, registers: list[int]) -> None:
    assert encode_value(value, data_type, byte_order=ByteOrder(order)) == registers


@pytest.mark.parametrize("order", list(FLOAT32_123_456))
def test_float32_123_456_in_every_order(order: str) -> None:
    registers = FLOAT32_123_456[order]
    value = decode_value(registers, DataType.FLOAT32, byte_order=ByteOrder(order))
    assert value == pytest.approx(123.456, rel=1e-7)
    assert encode_value(123.456, DataType.FLOAT32, byte_order=ByteOrder(order)) == registers


def test_defaults_are_abcd() -> None:
    assert decode_value([0x42F6, 0xE979], DataType.FLOAT32) == pytest.approx(123.456, rel=1e-7)
    assert encode_value(0x12345678, DataType.UINT32) == [0x1234, 0x5678]


def test_scale_and_offset_apply_as_raw_times_scale_plus_offset() -> None:
    # The demo coal feeder's totalizer: uint32, CDAB, 10 kg per count, reported in tonnes.
    total_t = decode_value([0x5678, 0x1234], DataType.UINT32, byte_order=CDAB, scale=0.01)
    assert total_t == pytest.approx(3_054_198.96, abs=1e-6)
    # A temperature sent in tenths of a kelvin offset to degrees Celsius: -400 * 0.1 + 273.15
    temperature = decode_value([0xFE70], DataType.INT16, scale=0.1, offset=273.15)
    assert temperature == pytest.approx(233.15, abs=1e-9)
    # and back: the registers a device holds for that value
    assert encode_value(3_054_198.96, DataType.UINT32, byte_order=CDAB, scale=0.01) == [
        0x5678, 0x1234]
    assert encode_value(233.15, DataType.INT16, scale=0.1, offset=273.15) == [0xFE70]


@pytest.mark.parametrize(("data_type", "count"), [
    (DataType.INT16, 2), (DataType.FLOAT32, 1), (DataType.FLOAT32, 3), (DataType.FLOAT64, 2),
    (DataType.UINT64, 0),
])
def test_decode_value_refuses_the_wrong_number_of_registers(data_type: DataType, count: int) -> None:
    with pytest.raises(ValueError, match=f"needs {data_type.registers} registers"):
        decode_value([0] * count, data_type)


def test_encode_value_clamps_integers_to_their_range() -> None:
    assert encode_value(70000, DataType.UINT16) == [0xFFFF]
    assert encode_value(-5, DataType.UINT16) == [0x0000]
    assert encode_value(-40000, DataType.INT16) == [0x8000]
    assert encode_value(2.6, DataType.INT16) == [0x0003]


# --- round trips ---------------------------------------------------------------------------------

_INT_RANGES = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    # 64-bit values travel as float64 readings: exact up to 2**53
    DataType.INT64: (-(2**53), 2**53),
    DataType.UINT64: (0, 2**53),
}
_orders = st.sampled_from(list(ByteOrder))


@settings(max_examples=400, deadline=None)
@given(data_type=st.sampled_from(list(_INT_RANGES)), order=_orders, data=st.data())
def test_integers_round_trip_exactly(data_type: DataType, order: ByteOrder,
                                     data: st.DataObject) -> None:
    low, high = _INT_RANGES[data_type]
    value = data.draw(st.integers(min_value=low, max_value=high), label="value")
    registers = encode_value(value, data_type, byte_order=order)
    assert len(registers) == data_type.registers
    assert all(0 <= word <= 0xFFFF for word in registers)
    assert decode_value(registers, data_type, byte_order=order) == value


@settings(max_examples=300, deadline=None)
@given(value=st.floats(width=32, allow_nan=False), order=_orders)
def test_float32_values_round_trip_exactly(value: float, order: ByteOrder) -> None:
    registers = encode_value(value, DataType.FLOAT32, byte_order=order)
    assert decode_value(registers, DataType.FLOAT32, byte_order=order) == value


@settings(max_examples=300, deadline=None)
@given(value=st.floats(min_value=-3.0e38, max_value=3.0e38), order=_orders)
def test_any_float_round_trips_through_float32_within_float32_precision(value: float,
                                                                        order: ByteOrder) -> None:
    registers = encode_value(value, DataType.FLOAT32, byte_order=order)
    decoded = decode_value(registers, DataType.FLOAT32, byte_order=order)
    assert decoded == pytest.approx(value, rel=2**-24, abs=1e-45)


@settings(max_examples=300, deadline=None)
@given(value=st.floats(allow_nan=False), order=_orders)
def test_float64_values_round_trip_exactly(value: float, order: ByteOrder) -> None:
    registers = encode_value(value, DataType.FLOAT64, byte_order=order)
    assert decode_value(registers, DataType.FLOAT64, byte_order=order) == value


@settings(max_examples=400, deadline=None)
@given(data_type=st.sampled_from(NUMERIC_TYPES), order=_orders, data=st.data())
def test_registers_decode_and_encode_back_to_the_same_words(data_type: DataType,
                                                            order: ByteOrder,
                                                            data: st.DataObject) -> None:
    registers = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=data_type.registers,
                                   max_size=data_type.registers), label="registers")
    # the raw number is exact for every integer width, 64 bits included
    assert encode_raw(decode_raw(registers, data_type, order), data_type, order) == registers
    value = decode_value(registers, data_type, byte_order=order)
    if math.isnan(value):
        return  # NaN payload bits are not preserved through a Python float, and need not be
    if data_type in (DataType.INT64, DataType.UINT64) and abs(value) > 2**53:
        return  # beyond float64's exact integers
    assert encode_value(value, data_type, byte_order=order) == registers


# --- device_quality ------------------------------------------------------------------------------

CEMS_STATUS = StatusPlan(request_index=0, offset=18, calibration_bit=0, maintenance_bit=1, fault_bit=2)


@pytest.mark.parametrize(("word", "quality"), [
    (0b000, pb.QUALITY_NORMAL),
    (0b001, pb.QUALITY_CALIBRATION),
    (0b010, pb.QUALITY_MAINTENANCE),
    (0b100, pb.QUALITY_FAULT),
    (0b011, pb.QUALITY_MAINTENANCE),  # maintenance outranks calibration
    (0b101, pb.QUALITY_FAULT),        # fault outranks calibration
    (0b110, pb.QUALITY_FAULT),        # fault outranks maintenance
    (0b111, pb.QUALITY_FAULT),
    (0xFFF8, pb.QUALITY_NORMAL),      # bits with no meaning change nothing
])
def test_device_quality_precedence(word: int, quality: int) -> None:
    assert device_quality(CEMS_STATUS, word) == quality


def test_device_quality_ignores_meanings_the_profile_does_not_define() -> None:
    only_fault = StatusPlan(0, 0, calibration_bit=None, maintenance_bit=None, fault_bit=15)
    assert device_quality(only_fault, 0x7FFF) == pb.QUALITY_NORMAL
    assert device_quality(only_fault, 0x8000) == pb.QUALITY_FAULT


# --- decode_device over the demo plant -----------------------------------------------------------

CEMS_VALUES = {
    "so2": 35.5, "nox": 45.25, "o2": 7.5, "co2": 240000.0, "particulate": 6.0, "flow": 140.0,
    "temperature": 120.5, "static_pressure": 0.375, "moisture": 8.5,
}  # all exact in float32
T_MS = 1_700_000_000_000


@pytest.fixture(scope="module")
def demo_plan() -> ReadPlan:
    return compile_plan(load_plant(DEMO_PLANT))


def _device(plan: ReadPlan, device_id: str) -> DevicePlan:
    return next(d for d in plan.devices if d.device_id == device_id)


def _cems_response(status_word: int = 0, **overrides: list[int]) -> list[int]:
    """The 19 registers 100..118 of the CEMS rack."""
    words: list[int] = []
    for name, value in CEMS_VALUES.items():
        words += overrides.get(name, list(struct.unpack(">HH", struct.pack(">f", value))))
    return [*words, status_word]


def test_cems_all_normal(demo_plan: ReadPlan) -> None:
    cems = _device(demo_plan, "cems-1")
    readings = decode_device(cems, [_cems_response()], T_MS)
    assert [r.point_id for r in readings] == [
        "demo-plant/cems-1/status", *(f"demo-plant/cems-1/{name}" for name in CEMS_VALUES)]
    status, *points = readings
    assert (status.value, status.quality, status.raw_registers) == (0.0, pb.QUALITY_NORMAL, (0,))
    assert {r.point_id.rsplit("/", 1)[1]: r.value for r in points} == CEMS_VALUES
    assert all(r.quality == pb.QUALITY_NORMAL for r in points)
    assert all(r.time_unix_ms == T_MS for r in readings)
    so2 = points[0]
    assert so2.raw_registers == tuple(struct.unpack(">HH", struct.pack(">f", 35.5)))


def test_a_failed_request_gives_nan_and_comm_loss_for_every_point(demo_plan: ReadPlan) -> None:
    cems = _device(demo_plan, "cems-1")
    good = decode_device(cems, [_cems_response()], T_MS)
    failed = decode_device(cems, [None], T_MS)
    assert len(failed) == len(good) == 10  # absence recorded, not skipped
    assert [r.point_id for r in failed] == [r.point_id for r in good]
    for reading in failed:
        assert math.isnan(reading.value)
        assert reading.quality == pb.QUALITY_COMM_LOSS
        assert reading.raw_registers == ()
        assert reading.time_unix_ms == T_MS


@pytest.mark.parametrize(("word", "flag"), [
    (0b001, pb.QUALITY_CALIBRATION),
    (0b010, pb.QUALITY_MAINTENANCE),
    (0b100, pb.QUALITY_FAULT),
    (0b011, pb.QUALITY_MAINTENANCE),
    (0b111, pb.QUALITY_FAULT),
])
def test_the_status_word_flags_the_devices_points(demo_plan: ReadPlan, word: int, flag: int) -> None:
    cems = _device(demo_plan, "cems-1")
    status, *points = decode_device(cems, [_cems_response(status_word=word)], T_MS)
    # the status reading itself records the raw word, unflagged
    assert status.point_id == "demo-plant/cems-1/status"
    assert (status.value, status.quality, status.raw_registers) == (float(word), pb.QUALITY_NORMAL,
                                                                    (word,))
    assert [r.quality for r in points] == [flag] * len(CEMS_VALUES)
    # the values are still the measured ones: a flag qualifies a value, it does not erase it
    assert [r.value for r in points] == list(CEMS_VALUES.values())


def test_a_point_not_flagged_by_status_keeps_normal_quality(demo_plan: ReadPlan) -> None:
    cems = _device(demo_plan, "cems-1")
    unflagged = dataclasses.replace(cems.points[0], flagged_by_status=False)
    plan = dataclasses.replace(cems, points=(unflagged, *cems.points[1:]))
    _, so2, nox, *_ = decode_device(plan, [_cems_response(status_word=0b100)], T_MS)
    assert so2.quality == pb.QUALITY_NORMAL
    assert nox.quality == pb.QUALITY_FAULT


@pytest.mark.parametrize(("registers", "what"), [
    ([0x7FC0, 0x0000], "quiet NaN"),
    ([0xFFC0, 0x0001], "negative NaN with payload"),
    ([0x7F80, 0x0000], "+infinity"),
    ([0xFF80, 0x0000], "-infinity"),
])
def test_nan_or_infinite_float_registers_are_a_fault(demo_plan: ReadPlan, registers: list[int],
                                                     what: str) -> None:
    cems = _device(demo_plan, "cems-1")
    _, so2, nox, *_ = decode_device(cems, [_cems_response(so2=registers)], T_MS)
    assert math.isnan(so2.value), what
    assert so2.quality == pb.QUALITY_FAULT
    assert so2.raw_registers == tuple(registers)  # the evidence of what the device sent
    assert (nox.value, nox.quality) == (45.25, pb.QUALITY_NORMAL)


def test_keep_raw_false_drops_the_register_words(demo_plan: ReadPlan) -> None:
    cems = _device(demo_plan, "cems-1")
    readings = decode_device(cems, [_cems_response(status_word=1)], T_MS, keep_raw=False)
    assert all(r.raw_registers == () for r in readings)
    assert readings[0].value == 1.0


def test_feeder_cdab_and_scaled_totalizer(demo_plan: ReadPlan) -> None:
    feeder = _device(demo_plan, "feeder-1a")
    # feed rate 45.5 t/h = 0x42360000 low word first; total 0x12345678 counts of 10 kg, CDAB
    readings = decode_device(feeder, [[0x0000, 0x4236, 0x5678, 0x1234]], T_MS)
    assert [r.point_id for r in readings] == ["demo-plant/feeder-1a/feed_rate",
                                              "demo-plant/feeder-1a/total"]
    feed_rate, total = readings
    assert feed_rate.value == 45.5
    assert total.value == pytest.approx(3_054_198.96, abs=1e-6)
    assert total.raw_registers == (0x5678, 0x1234)
    assert {r.quality for r in readings} == {pb.QUALITY_NORMAL}  # no status word on this device


def _two_request_device() -> DevicePlan:
    """A device read in two requests, its status word in the second."""
    def point(name: str, request_index: int, offset: int) -> PointPlan:
        return PointPlan(point_id=f"p/d/{name}", name=name, request_index=request_index,
                         offset=offset, data_type=DataType.FLOAT32, register_count=2, byte_order=ABCD,
                         scale=1.0, value_offset=0.0, flagged_by_status=True)
    return DevicePlan(
        device_id="d", link=TcpLink("127.0.0.1", 502), unit_id=1, timeout_ms=100,
        requests=(ReadRequest(RegisterType.HOLDING, 0, 2), ReadRequest(RegisterType.INPUT, 0, 3)),
        points=(point("a", 0, 0), point("b", 1, 0)),
        status=StatusPlan(request_index=1, offset=2, calibration_bit=0, maintenance_bit=None,
                          fault_bit=None),
        status_point_id="p/d/status",
    )


def test_one_failed_request_of_several_flags_only_its_own_points() -> None:
    device = _two_request_device()
    readings = decode_device(device, [None, [0x3FC0, 0x0000, 0x0001]], T_MS)
    by_id = {r.point_id: r for r in readings}
    assert list(by_id) == ["p/d/status", "p/d/a", "p/d/b"]
    assert math.isnan(by_id["p/d/a"].value)
    assert by_id["p/d/a"].quality == pb.QUALITY_COMM_LOSS
    assert (by_id["p/d/b"].value, by_id["p/d/b"].quality) == (1.5, pb.QUALITY_CALIBRATION)
    assert (by_id["p/d/status"].value, by_id["p/d/status"].quality) == (1.0, pb.QUALITY_NORMAL)


def test_when_the_status_word_is_lost_the_status_reading_is_comm_loss_and_values_stay() -> None:
    device = _two_request_device()
    readings = decode_device(device, [[0x3FC0, 0x0000], None], T_MS)
    by_id = {r.point_id: r for r in readings}
    assert len(readings) == 3
    assert math.isnan(by_id["p/d/status"].value)
    assert by_id["p/d/status"].quality == pb.QUALITY_COMM_LOSS
    assert math.isnan(by_id["p/d/b"].value)
    assert by_id["p/d/a"].value == 1.5  # read fine, but the device's state is unknown
    assert by_id["p/d/a"].quality != pb.QUALITY_NORMAL


def test_a_failed_request_takes_the_flag_the_source_gives_it() -> None:
    device = _two_request_device()
    # request 1 refused with a Modbus exception (fault, D); request 2 answered
    readings = decode_device(device, [None, [0x3FC0, 0x0000, 0x0000]], T_MS,
                             failure_quality=[pb.QUALITY_FAULT, pb.QUALITY_COMM_LOSS])
    by_id = {r.point_id: r for r in readings}
    assert math.isnan(by_id["p/d/a"].value)
    assert by_id["p/d/a"].quality == pb.QUALITY_FAULT
    assert (by_id["p/d/b"].value, by_id["p/d/b"].quality) == (1.5, pb.QUALITY_NORMAL)


def test_a_refused_status_request_flags_the_status_and_the_points_it_qualifies() -> None:
    device = _two_request_device()
    readings = decode_device(device, [[0x3FC0, 0x0000], None], T_MS,
                             failure_quality=[pb.QUALITY_COMM_LOSS, pb.QUALITY_FAULT])
    by_id = {r.point_id: r for r in readings}
    assert by_id["p/d/status"].quality == pb.QUALITY_FAULT
    assert (by_id["p/d/a"].value, by_id["p/d/a"].quality) == (1.5, pb.QUALITY_FAULT)
    assert math.isnan(by_id["p/d/b"].value)
    assert by_id["p/d/b"].quality == pb.QUALITY_FAULT


# --- 64-bit raw numbers, scale and offset, types that are not numbers -----------------------------

# 0xFFEEDDCCBBAA9988 is above 2**53: exact only as the raw integer
UINT64_HIGH = {"ABCD": [0xFFEE, 0xDDCC, 0xBBAA, 0x9988], "CDAB": [0x9988, 0xBBAA, 0xDDCC, 0xFFEE],
               "BADC": [0xEEFF, 0xCCDD, 0xAABB, 0x8899], "DCBA": [0x8899, 0xAABB, 0xCCDD, 0xEEFF]}


@pytest.mark.parametrize("order", list(UINT64_HIGH))
def test_64_bit_raw_numbers_are_exact_integers(order: str) -> None:
    registers = UINT64_HIGH[order]
    assert decode_raw(registers, DataType.UINT64, ByteOrder(order)) == 18_441_921_395_520_346_504
    assert decode_raw(registers, DataType.INT64, ByteOrder(order)) == -4_822_678_189_205_112
    assert encode_raw(18_441_921_395_520_346_504, DataType.UINT64, ByteOrder(order)) == registers


@pytest.mark.parametrize(("registers", "data_type", "order", "scale", "offset", "value"), [
    # -405 = 0xFE6B, bytes swapped; tenths of a degree
    ([0x6BFE], DataType.INT16, BADC, 0.1, 0.0, -40.5),
    # 4-20 mA input as 0..10000 counts = 0x2710, mapped to -50..150 degC
    ([0x2710], DataType.UINT16, ABCD, 0.02, -50.0, 150.0),
    # 1_000_000 = 0x000F4240, fully little-endian, in grams read as kilograms
    ([0x4042, 0x0F00], DataType.UINT32, DCBA, 0.001, 0.0, 1000.0),
    # -2 = 0xFFFFFFFE, word swapped, with an offset
    ([0xFFFE, 0xFFFF], DataType.INT32, CDAB, 10.0, 5.0, -15.0),
    # 2.5 = 0x40200000, a gauge offset by one atmosphere
    ([0x4020, 0x0000], DataType.FLOAT32, ABCD, 1.0, 101.325, 103.825),
    # 0.25 = 0x3FD0000000000000, bytes swapped
    ([0xD03F, 0x0000, 0x0000, 0x0000], DataType.FLOAT64, BADC, 4.0, 0.0, 1.0),
])
def test_scale_and_offset_golden(registers: list[int], data_type: DataType, order: ByteOrder,
                                 scale: float, offset: float, value: float) -> None:
    assert decode_value(registers, data_type, byte_order=order, scale=scale,
                        offset=offset) == pytest.approx(value, abs=1e-9)
    assert encode_value(value, data_type, byte_order=order, scale=scale, offset=offset) == registers


@pytest.mark.parametrize("data_type", [DataType.BOOL, DataType.BITS, DataType.STRING])
def test_decode_value_refuses_what_is_not_a_whole_register_number(data_type: DataType) -> None:
    with pytest.raises(ValueError, match="not a whole-register number"):
        decode_value([0x0001], data_type)


# --- strings ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("registers", "order", "text"), [
    # "FT-101" NUL-terminated in 4 registers: 46 54 2D 31 30 31 00 00
    ([0x4654, 0x2D31, 0x3031, 0x0000], ABCD, "FT-101"),
    # the same with the bytes of each register swapped
    ([0x5446, 0x312D, 0x3130, 0x0000], BADC, "FT-101"),
    # padded with spaces instead of NULs
    ([0x5849, 0x2D32, 0x2020, 0x2020], ABCD, "XI-2"),
    # an odd length: the NUL sits in the low byte of the last register
    ([0x4142, 0x4300], ABCD, "ABC"),
    ([0x4241, 0x0043], BADC, "ABC"),
    # what follows the first NUL is left-over memory, not text
    ([0x4F4B, 0x0058, 0x5959], ABCD, "OK"),
    # full: no terminator at all
    ([0x5346, 0x3630], ABCD, "SF60"),
    ([0x0000, 0x4142], ABCD, ""),
    # a byte that is not UTF-8 shows as U+FFFD rather than failing the reading
    ([0x41FF], ABCD, "A\ufffd"),
])
def test_decode_text_golden(registers: list[int], order: ByteOrder, text: str) -> None:
    assert decode_text(registers, order) == text


def test_encode_text_pads_with_nul_and_refuses_what_does_not_fit() -> None:
    assert encode_text("FT-101", 4) == [0x4654, 0x2D31, 0x3031, 0x0000]
    assert encode_text("FT-101", 4, BADC) == [0x5446, 0x312D, 0x3130, 0x0000]
    assert encode_text("SF60", 2) == [0x5346, 0x3630]
    with pytest.raises(ValueError, match="more than 2 registers"):
        encode_text("SF601", 2)
    with pytest.raises(ValueError):
        encode_text("µµµ", 2)  # 6 bytes in UTF-8


_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=24)


@settings(max_examples=300, deadline=None)
@given(text=_text, spare=st.integers(0, 4), order=_orders)
def test_text_round_trips_in_every_order(text: str, spare: int, order: ByteOrder) -> None:
    registers = -(-len(text.encode("utf-8")) // 2) + spare
    if registers == 0:
        registers = 1
    words = encode_text(text, registers, order)
    assert len(words) == registers
    assert all(0 <= word <= 0xFFFF for word in words)
    # trailing spaces are padding to a device, so they do not come back
    assert decode_text(words, order) == text.rstrip(" ")


# --- bits, coils and bit fields through decode_device ------------------------------------------------

def _point(name: str, request_index: int, offset: int, data_type: DataType, *,
           register_count: int = 1, bit: int | None = None, bit_count: int = 1,
           byte_order: ByteOrder = ABCD, scale: float = 1.0,
           totalizer: TotalizerSpec | None = None) -> PointPlan:
    return PointPlan(point_id=f"p/d/{name}", name=name, request_index=request_index, offset=offset,
                     data_type=data_type, register_count=register_count, byte_order=byte_order,
                     scale=scale, value_offset=0.0, flagged_by_status=True, bit=bit,
                     bit_count=bit_count, totalizer=totalizer)


def _device_of(requests: tuple[ReadRequest, ...], *points: PointPlan) -> DevicePlan:
    return DevicePlan(device_id="d", link=TcpLink("127.0.0.1", 502), unit_id=1, timeout_ms=100,
                      requests=requests, points=points, status=None, status_point_id=None)


def test_coils_and_register_bits_decode_to_0_and_1() -> None:
    device = _device_of(
        (ReadRequest(RegisterType.COIL, 0, 3), ReadRequest(RegisterType.HOLDING, 9, 1)),
        _point("pump", 0, 0, DataType.BOOL), _point("fan", 0, 1, DataType.BOOL),
        _point("valve", 0, 2, DataType.BOOL),
        _point("alarm", 1, 0, DataType.BOOL, bit=15), _point("ready", 1, 0, DataType.BOOL, bit=0),
        _point("mode", 1, 0, DataType.BITS, bit=4, bit_count=3),
        _point("speed", 1, 0, DataType.BITS, bit=8, bit_count=4, scale=25.0))
    # coils arrive one 0/1 word per bit; the register is 1000 0011 0101 0000
    readings = decode_device(device, [[1, 0, 1], [0x8350]], T_MS)
    assert {r.point_id.rsplit("/", 1)[1]: r.value for r in readings} == {
        "pump": 1.0, "fan": 0.0, "valve": 1.0,
        "alarm": 1.0, "ready": 0.0, "mode": 5.0, "speed": 75.0}  # bits 4..6 = 101, 8..11 = 0011
    assert {r.quality for r in readings} == {pb.QUALITY_NORMAL}
    assert [r.raw_registers for r in readings[3:]] == [(0x8350,)] * 4


def test_a_compiled_profile_decodes_every_kind_of_point(tmp_path: Path) -> None:
    """Config in, readings out: the planner's offsets and the decoder agree on a mixed map."""
    device = _compiled(tmp_path, {
        "name": "mixed", "address_base": 1,
        "points": [
            {**_q("pump"), "address": 1, "register_type": "coil", "data_type": "bool"},
            {**_q("fan"), "address": 2, "register_type": "coil", "data_type": "bool"},
            {**_q("door"), "address": 7, "register_type": "discrete_input", "data_type": "bool"},
            {**_q("alarm"), "address": 10, "data_type": "bool", "bit": 15},
            {**_q("mode"), "address": 10, "data_type": "bits", "bit": 0, "bit_count": 4},
            {**_q("tag"), "address": 11, "data_type": "string", "registers": 4},
            {**_q("temp"), "address": 15, "data_type": "int16", "byte_order": "BADC", "scale": 0.1},
            {**_q("energy"), "address": 1, "register_type": "input", "data_type": "uint64",
             "byte_order": "DCBA", "scale": 0.001, "totalizer": {}},
        ]})
    assert device.requests == (
        ReadRequest(RegisterType.COIL, 0, 2), ReadRequest(RegisterType.DISCRETE_INPUT, 6, 1),
        ReadRequest(RegisterType.HOLDING, 9, 6), ReadRequest(RegisterType.INPUT, 0, 4))
    responses: list[list[int] | None] = [
        [0, 1], [1],
        [0x800A, 0x4654, 0x2D31, 0x3031, 0x0000, 0x6BFE],  # bit 15 and 0b1010; "FT-101"; -405
        [0x00F2, 0x052A, 0x0100, 0x0000],  # 5_000_000_000 = 0x000000012A05F200, little-endian
    ]
    readings = decode_device(device, responses, T_MS)
    by_name = {r.point_id.rsplit("/", 1)[1]: r for r in readings}
    assert {name: r.value for name, r in by_name.items() if name != "tag"} == pytest.approx({
        "pump": 0.0, "fan": 1.0, "door": 1.0, "alarm": 1.0, "mode": 10.0, "temp": -40.5,
        "energy": 5_000_000.0})
    tag = by_name["tag"]
    assert (tag.text, tag.raw_registers) == ("FT-101", (0x4654, 0x2D31, 0x3031, 0x0000))
    assert math.isnan(tag.value)
    assert {r.quality for r in readings} == {pb.QUALITY_NORMAL}


def _q(name: str) -> dict[str, Any]:
    return {"name": name, "quantity": "q", "unit": "u"}


def _compiled(tmp_path: Path, profile: dict[str, Any]) -> DevicePlan:
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    (tmp_path / "plant.yaml").write_text(yaml.safe_dump({
        "plant": {"id": "p"},
        "collector": {"id": "c", "key_file": "c.key", "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
        "devices": [{"id": "d", "profile": "profile.yaml", "emission_unit": "u",
                     "tcp": {"host": "127.0.0.1"}}]}))
    return compile_plan(load_plant(tmp_path / "plant.yaml")).devices[0]


def test_a_nan_float64_is_a_fault() -> None:
    device = _device_of((ReadRequest(RegisterType.HOLDING, 0, 4),),
                        _point("x", 0, 0, DataType.FLOAT64, register_count=4))
    reading, = decode_device(device, [[0x7FF8, 0, 0, 0]], T_MS)
    assert math.isnan(reading.value)
    assert reading.quality == pb.QUALITY_FAULT


# --- totalizers through decode_device ---------------------------------------------------------------

def _feeder_words(count: int) -> list[int]:
    """The feeder's 4 registers: feed rate 45.5 t/h (0x42360000) and the count, both CDAB."""
    return [0x0000, 0x4236, count & 0xFFFF, count >> 16]


def test_a_totalizer_reading_carries_its_increment_and_counter_event(demo_plan: ReadPlan) -> None:
    feeder = _device(demo_plan, "feeder-1a")
    total = feeder.points[1]
    assert total.totalizer is not None  # at most 0.05 t/s, 0.01 t per count
    trackers = {total.point_id: TotalizerTracker(spec=total.totalizer, data_type=total.data_type,
                                                 scale=total.scale)}

    def poll(seconds: int, count: int | None) -> tuple[float, float | None, int]:
        responses = [None if count is None else _feeder_words(count)]
        _, reading = decode_device(feeder, responses, T_MS + seconds * 1000, totalizers=trackers)
        return reading.value, reading.increment, reading.counter_event

    value, increment, event = poll(0, 0xFFFF_FFF0)
    assert value == pytest.approx(42_949_672.80)
    assert (increment, event) == (None, pb.COUNTER_EVENT_FIRST)
    _, increment, event = poll(2, 0xFFFF_FFF6)  # 6 counts
    assert event == pb.COUNTER_EVENT_CONTINUED
    assert increment == pytest.approx(0.06)
    # a lost poll: no reading for the tracker, and the next one counts from the last good one
    value, increment, event = poll(4, None)
    assert math.isnan(value)
    assert (increment, event) == (None, pb.COUNTER_EVENT_UNSPECIFIED)
    # past 2**32: 10 counts to the top, 4 after it, in 4 s (the feeder may count 20)
    value, increment, event = poll(6, 4)
    assert event == pb.COUNTER_EVENT_ROLLOVER
    assert (value, increment) == pytest.approx((0.04, 0.14))
    # a drop no feeder could count its way round in 2 s: the meter was reset
    _, increment, event = poll(8, 3)
    assert event == pb.COUNTER_EVENT_RESET
    assert increment == pytest.approx(0.03)


def test_points_without_a_tracker_carry_no_counter_event(demo_plan: ReadPlan) -> None:
    feeder = _device(demo_plan, "feeder-1a")
    readings = decode_device(feeder, [_feeder_words(100)], T_MS)
    assert [(r.increment, r.counter_event) for r in readings] == [
        (None, pb.COUNTER_EVENT_UNSPECIFIED)] * 2
