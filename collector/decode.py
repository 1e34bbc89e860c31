"""Decode register words into engineering values and quality flags. Pure functions.

Word order says which 16-bit register carries the most significant part of a multi-register
value ("big": the first register, as in ABCD); byte order says how the two bytes of each register
are arranged ("big": high byte first). ABCD = big/big, CDAB = word little, BADC = byte little,
DCBA = both little.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal

from collector.config import DataType
from collector.plan import DevicePlan, PointPlan, StatusPlan
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import ReadingValue

__all__ = ["decode_device", "decode_value", "device_quality", "encode_value"]

_FORMATS = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.INT64: "q",
    DataType.UINT64: "Q",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}
_STRUCTS = {data_type: struct.Struct(">" + code) for data_type, code in _FORMATS.items()}


def decode_value(
    registers: Sequence[int],
    data_type: DataType,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> float:
    """Registers (16-bit words, as read) to `raw * scale + offset`."""
    width = data_type.registers
    if len(registers) != width:
        raise ValueError(f"{data_type.value} needs {width} registers, got {len(registers)}")
    words = registers if word_order == "big" else registers[::-1]
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    raw_bytes = b"".join(int(word).to_bytes(2, endian) for word in words)
    raw = _STRUCTS[data_type].unpack(raw_bytes)[0]
    return float(raw) * scale + offset


def device_quality(status: StatusPlan, status_word: int) -> int:
    """The flag the status word puts on the device's points; fault outranks maintenance, which
    outranks calibration."""
    def has(bit: int | None) -> bool:
        return bit is not None and bool(status_word >> bit & 1)

    if has(status.fault_bit):
        return pb.QUALITY_FAULT
    if has(status.maintenance_bit):
        return pb.QUALITY_MAINTENANCE
    if has(status.calibration_bit):
        return pb.QUALITY_CALIBRATION
    return pb.QUALITY_NORMAL


def _point_reading(
    point: PointPlan, words: Sequence[int], time_unix_ms: int, flag: int, keep_raw: bool
) -> ReadingValue:
    value = decode_value(
        words, point.data_type, byte_order=point.byte_order, word_order=point.word_order,
        scale=point.scale, offset=point.value_offset,
    )
    quality = flag if point.flagged_by_status else pb.QUALITY_NORMAL
    if math.isnan(value) or math.isinf(value):
        value, quality = math.nan, pb.QUALITY_FAULT
    return ReadingValue(point.point_id, time_unix_ms, value, quality,
                        tuple(words) if keep_raw else ())


def decode_device(
    plan: DevicePlan,
    responses: Sequence[Sequence[int] | None],
    time_unix_ms: int,
    *,
    keep_raw: bool = True,
) -> list[ReadingValue]:
    """Readings for one poll of a device; `responses[i]` answers `plan.requests[i]`, None when that
    request failed. Failed points read NaN with QUALITY_COMM_LOSS: absence is recorded, not skipped."""
    readings: list[ReadingValue] = []
    flag: int = pb.QUALITY_NORMAL
    if plan.status is not None and plan.status_point_id is not None:
        status_words = responses[plan.status.request_index]
        if status_words is None:
            flag = pb.QUALITY_COMM_LOSS
            readings.append(ReadingValue(plan.status_point_id, time_unix_ms, math.nan,
                                         pb.QUALITY_COMM_LOSS))
        else:
            word = status_words[plan.status.offset]
            flag = device_quality(plan.status, word)
            readings.append(ReadingValue(plan.status_point_id, time_unix_ms, float(word),
                                         pb.QUALITY_NORMAL, (word,) if keep_raw else ()))
    for point in plan.points:
        words = responses[point.request_index]
        if words is None:
            readings.append(ReadingValue(point.point_id, time_unix_ms, math.nan,
                                         pb.QUALITY_COMM_LOSS))
            continue
        span = words[point.offset:point.offset + point.data_type.registers]
        readings.append(_point_reading(point, span, time_unix_ms, flag, keep_raw))
    return readings


def encode_value(
    value: float,
    data_type: DataType,
    *,
    byte_order: str = "big",
    word_order: str = "big",
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """The inverse of `decode_value`: the registers a device would hold for `value`.

    Integer types round to the nearest step and clamp to the type's range.
    """
    raw = (value - offset) / scale
    fmt = _STRUCTS[data_type]
    if data_type in (DataType.FLOAT32, DataType.FLOAT64):
        packed = fmt.pack(raw)
    else:
        bits = fmt.size * 8
        signed = data_type.value.startswith("int")
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        packed = fmt.pack(min(max(round(raw), low), high))
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    words = [int.from_bytes(packed[i:i + 2], endian) for i in range(0, len(packed), 2)]
    return words if word_order == "big" else words[::-1]
