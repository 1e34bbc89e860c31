"""Decode register words into engineering values and quality flags. Pure functions.

A value's bytes are laid out as its profile's `ByteOrder` says (A = most significant byte):
ABCD keeps Modbus' own order (first register most significant, high byte first), CDAB swaps the
words, BADC swaps the bytes within each register, DCBA does both. Coils and discrete inputs
arrive as one 0/1 word per bit.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Literal

from collector.config import ByteOrder, DataType
from collector.plan import DevicePlan, PointPlan, StatusPlan
from collector.totalizer import TotalizerTracker
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import ReadingValue

__all__ = [
    "decode_device",
    "decode_point",
    "decode_raw",
    "decode_text",
    "decode_value",
    "device_quality",
    "encode_raw",
    "encode_text",
    "encode_value",
]

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
_FLOATS = (DataType.FLOAT32, DataType.FLOAT64)


def _to_bytes(registers: Sequence[int], byte_order: ByteOrder) -> bytes:
    """The value's bytes, most significant first, from registers as read."""
    words = registers[::-1] if byte_order.words_reversed else registers
    endian: Literal["big", "little"] = "little" if byte_order.bytes_swapped else "big"
    return b"".join(int(word).to_bytes(2, endian) for word in words)


def _to_registers(data: bytes, byte_order: ByteOrder) -> list[int]:
    """The inverse of `_to_bytes`."""
    endian: Literal["big", "little"] = "little" if byte_order.bytes_swapped else "big"
    words = [int.from_bytes(data[i:i + 2], endian) for i in range(0, len(data), 2)]
    return words[::-1] if byte_order.words_reversed else words


def decode_raw(registers: Sequence[int], data_type: DataType,
               byte_order: ByteOrder = ByteOrder.ABCD) -> int | float:
    """A numeric point's raw number before scale and offset: an int for integer types."""
    if data_type not in _STRUCTS:
        raise ValueError(f"{data_type.value} is not a whole-register number")
    width = data_type.registers
    if len(registers) != width:
        raise ValueError(f"{data_type.value} needs {width} registers, got {len(registers)}")
    raw: int | float = _STRUCTS[data_type].unpack(_to_bytes(registers, byte_order))[0]
    return raw


def decode_value(
    registers: Sequence[int],
    data_type: DataType,
    *,
    byte_order: ByteOrder = ByteOrder.ABCD,
    scale: float = 1.0,
    offset: float = 0.0,
) -> float:
    """Registers (16-bit words, as read) to `raw * scale + offset`."""
    return float(decode_raw(registers, data_type, byte_order)) * scale + offset


def decode_text(registers: Sequence[int], byte_order: ByteOrder = ByteOrder.ABCD) -> str:
    """A string point: two characters per register, up to the first NUL, trailing spaces dropped.
    Bytes that are not UTF-8 show as U+FFFD rather than failing the reading."""
    data = _to_bytes(registers, byte_order)
    return data.split(b"\x00", 1)[0].decode("utf-8", errors="replace").rstrip(" ")


def encode_text(text: str, registers: int, byte_order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """The registers a device holds for `text`, NUL-padded; raise ValueError if it does not fit."""
    data = text.encode("utf-8")
    if len(data) > registers * 2:
        raise ValueError(f"{text!r} needs {len(data)} bytes, more than {registers} registers hold")
    return _to_registers(data.ljust(registers * 2, b"\x00"), byte_order)


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


def decode_point(point: PointPlan, words: Sequence[int]) -> tuple[float, str, int | float | None]:
    """One point's (value, text, raw number) from the words of its span. `raw` is the number
    a totalizer counts with (None for bool, bits and strings)."""
    data_type = point.data_type
    if data_type is DataType.STRING:
        return math.nan, decode_text(words, point.byte_order), None
    if data_type is DataType.BOOL:
        bit = 0 if point.bit is None else point.bit
        return float(words[0] >> bit & 1), "", None
    if data_type is DataType.BITS:
        field = words[0] >> (point.bit or 0) & ((1 << point.bit_count) - 1)
        return field * point.scale + point.value_offset, "", None
    raw = decode_raw(words, data_type, point.byte_order)
    return float(raw) * point.scale + point.value_offset, "", raw


def _point_reading(point: PointPlan, words: Sequence[int], time_unix_ms: int, flag: int, *,
                   keep_raw: bool, tracker: TotalizerTracker | None) -> ReadingValue:
    value, text, raw = decode_point(point, words)
    quality = flag if point.flagged_by_status else pb.QUALITY_NORMAL
    if point.data_type is not DataType.STRING and (math.isnan(value) or math.isinf(value)):
        # a float register holding NaN or infinity is the instrument saying it has no value
        value, quality, raw = math.nan, pb.QUALITY_FAULT, None
    increment: float | None = None
    event: int = pb.COUNTER_EVENT_UNSPECIFIED
    if tracker is not None and raw is not None:
        step = tracker.observe(raw, time_unix_ms)
        increment, event = step.increment, step.event
    return ReadingValue(point.point_id, time_unix_ms, value, quality,
                        tuple(words) if keep_raw or text else (), increment, event, text)


def decode_device(
    plan: DevicePlan,
    responses: Sequence[Sequence[int] | None],
    time_unix_ms: int,
    *,
    keep_raw: bool = True,
    failure_quality: Sequence[int] | None = None,
    totalizers: Mapping[str, TotalizerTracker] | None = None,
) -> list[ReadingValue]:
    """Readings for one poll of a device; `responses[i]` answers `plan.requests[i]`, None when that
    request failed. A failed request's points read NaN with `failure_quality[i]` (communication
    loss unless said otherwise): absence is recorded, not skipped. Points flagged by the status
    word take its request's failure flag too, since their state is unknown. `totalizers` (by point
    id) count increments for totalizer points."""
    def failed(index: int) -> int:
        return pb.QUALITY_COMM_LOSS if failure_quality is None else failure_quality[index]

    readings: list[ReadingValue] = []
    flag: int = pb.QUALITY_NORMAL
    if plan.status is not None and plan.status_point_id is not None:
        status_words = responses[plan.status.request_index]
        if status_words is None:
            flag = failed(plan.status.request_index)
            readings.append(ReadingValue(plan.status_point_id, time_unix_ms, math.nan, flag))
        else:
            word = status_words[plan.status.offset]
            flag = device_quality(plan.status, word)
            readings.append(ReadingValue(plan.status_point_id, time_unix_ms, float(word),
                                         pb.QUALITY_NORMAL, (word,) if keep_raw else ()))
    trackers = totalizers or {}
    for point in plan.points:
        words = responses[point.request_index]
        if words is None:
            readings.append(ReadingValue(point.point_id, time_unix_ms, math.nan,
                                         failed(point.request_index)))
            continue
        span = words[point.offset:point.offset + point.register_count]
        readings.append(_point_reading(point, span, time_unix_ms, flag, keep_raw=keep_raw,
                                       tracker=trackers.get(point.point_id)))
    return readings


def encode_raw(raw: int | float, data_type: DataType, byte_order: ByteOrder = ByteOrder.ABCD) -> list[int]:
    """The registers a device holds for the raw number `raw`; integers clamp to the type's range."""
    fmt = _STRUCTS[data_type]
    if data_type in _FLOATS:
        packed = fmt.pack(float(raw))
    else:
        bits = fmt.size * 8
        signed = data_type.value.startswith("int")
        low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
        packed = fmt.pack(min(max(int(raw), low), high))
    return _to_registers(packed, byte_order)


def encode_value(
    value: float,
    data_type: DataType,
    *,
    byte_order: ByteOrder = ByteOrder.ABCD,
    scale: float = 1.0,
    offset: float = 0.0,
) -> list[int]:
    """The inverse of `decode_value`: the registers a device would hold for `value`.

    Integer types round to the nearest step and clamp to the type's range.
    """
    raw = (value - offset) / scale
    if data_type in _FLOATS:
        return encode_raw(raw, data_type, byte_order)
    return encode_raw(round(raw), data_type, byte_order)
