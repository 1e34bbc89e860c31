"""Compile a loaded plant into a frozen read plan: coalesced requests and where each point sits.

Checks that only the whole register map can answer are made here: a point's span against its
type, points that overlap, points that cannot fit one request, addresses past the end of the table.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass

from collector.config import (
    DataType,
    LoadedDevice,
    LoadedPlant,
    RegisterType,
)
from collector.errors import ConfigError

__all__ = [
    "STATUS_POINT",
    "DevicePlan",
    "PointPlan",
    "ReadPlan",
    "ReadRequest",
    "StatusPlan",
    "compile_plan",
]

STATUS_POINT = "status"  # the reading that records a device's raw status word
REGISTER_SPACE = 65536


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: a table, a start address and a register count."""

    register_type: RegisterType
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class PointPlan:
    """Where one point's registers sit in the device's responses, and how they decode."""

    point_id: str
    name: str
    request_index: int
    offset: int
    data_type: DataType
    byte_order: str
    word_order: str
    scale: float
    value_offset: float
    flagged_by_status: bool


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """The status word's position and the meaning of its bits."""

    request_index: int
    offset: int
    calibration_bit: int | None
    maintenance_bit: int | None
    fault_bit: int | None


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Everything the poller needs for one device."""

    device_id: str
    host: str
    port: int
    unit_id: int
    timeout_ms: int
    requests: tuple[ReadRequest, ...]
    points: tuple[PointPlan, ...]
    status: StatusPlan | None
    status_point_id: str | None


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """The compiled plant: devices to poll and the configuration document the chain records."""

    plant_id: str
    collector_id: str
    devices: tuple[DevicePlan, ...]
    config_document: bytes
    config_digest: bytes

    @property
    def reading_count(self) -> int:
        """Readings one tick produces."""
        return sum(len(d.points) + (1 if d.status else 0) for d in self.devices)


@dataclass(frozen=True, slots=True)
class _Span:
    name: str
    field: str
    register_type: RegisterType
    address: int
    width: int


def _spans(device: LoadedDevice) -> list[_Span]:
    profile = device.profile
    where = f"profile {device.profile_path.name}"
    spans: list[_Span] = []
    for index, point in enumerate(profile.points):
        field = f"points[{index}]"
        width = point.data_type.registers
        if point.registers is not None and point.registers != width:
            raise ConfigError(
                str(device.profile_path), f"{field}.registers",
                f"point {point.name!r} is {point.data_type.value}, which spans {width} "
                f"register{'s' if width > 1 else ''}, not {point.registers}",
            )
        if point.address + width > REGISTER_SPACE:
            raise ConfigError(
                str(device.profile_path), f"{field}.address",
                f"point {point.name!r} runs past register 65535",
            )
        if width > profile.max_registers_per_request:
            raise ConfigError(
                str(device.profile_path), "max_registers_per_request",
                f"point {point.name!r} spans {width} registers, more than one request may carry "
                f"({profile.max_registers_per_request})",
            )
        spans.append(
            _Span(point.name, field, point.register_type or profile.defaults.register_type,
                  point.address, width)
        )
    if profile.status is not None:
        spans.append(
            _Span(STATUS_POINT, "status",
                  profile.status.register_type or profile.defaults.register_type,
                  profile.status.address, 1)
        )
        bits = profile.status.bits
        used = [b for b in (bits.calibration, bits.maintenance, bits.fault) if b is not None]
        if len(set(used)) != len(used):
            raise ConfigError(
                str(device.profile_path), "status.bits", "two status meanings share one bit"
            )
    names = [s.name for s in spans]
    for index, name in enumerate(names):
        if names.index(name) != index:
            raise ConfigError(
                str(device.profile_path), f"{spans[index].field}.name",
                f"point name {name!r} is used twice in {where}",
            )
    ordered = sorted(spans, key=lambda s: (s.register_type, s.address))
    for before, after in itertools.pairwise(ordered):
        if before.register_type == after.register_type and after.address < before.address + before.width:
            raise ConfigError(
                str(device.profile_path), after.field,
                f"point {after.name!r} at {after.register_type.value} register {after.address} "
                f"overlaps point {before.name!r} (registers {before.address}.."
                f"{before.address + before.width - 1})",
            )
    return spans


def _coalesce(spans: list[_Span], max_registers: int) -> list[tuple[ReadRequest, list[_Span]]]:
    """Group spans into the fewest contiguous requests within the size limit."""
    groups: list[tuple[RegisterType, int, int, list[_Span]]] = []
    for span in sorted(spans, key=lambda s: (s.register_type, s.address)):
        if groups:
            kind, start, end, members = groups[-1]
            if (kind == span.register_type and span.address == end
                    and span.address + span.width - start <= max_registers):
                groups[-1] = (kind, start, span.address + span.width, [*members, span])
                continue
        groups.append((span.register_type, span.address, span.address + span.width, [span]))
    return [(ReadRequest(kind, start, end - start), members) for kind, start, end, members in groups]


def _device_plan(plant: LoadedPlant, device: LoadedDevice) -> DevicePlan:
    profile = device.profile
    spans = _spans(device)
    grouped = _coalesce(spans, profile.max_registers_per_request)
    located: dict[str, tuple[int, int]] = {}
    for request_index, (request, members) in enumerate(grouped):
        for span in members:
            located[span.name] = (request_index, span.address - request.address)
    plant_id = plant.config.plant.id
    prefix = f"{plant_id}/{device.config.id}"
    points = []
    for point in profile.points:
        request_index, offset = located[point.name]
        points.append(
            PointPlan(
                point_id=f"{prefix}/{point.name}",
                name=point.name,
                request_index=request_index,
                offset=offset,
                data_type=point.data_type,
                byte_order=point.byte_order or profile.defaults.byte_order,
                word_order=point.word_order or profile.defaults.word_order,
                scale=point.scale,
                value_offset=point.offset,
                flagged_by_status=point.flagged_by_status,
            )
        )
    status = None
    if profile.status is not None:
        request_index, offset = located[STATUS_POINT]
        bits = profile.status.bits
        status = StatusPlan(request_index, offset, bits.calibration, bits.maintenance, bits.fault)
    return DevicePlan(
        device_id=device.config.id,
        host=device.config.tcp.host,
        port=device.config.tcp.port,
        unit_id=device.config.unit_id,
        timeout_ms=device.config.timeout_ms,
        requests=tuple(request for request, _ in grouped),
        points=tuple(points),
        status=status,
        status_point_id=f"{prefix}/{STATUS_POINT}" if status else None,
    )


def _config_document(plant: LoadedPlant) -> bytes:
    """Canonical JSON of everything that gives a reading its meaning (sorted keys, no spaces)."""
    cfg = plant.config
    devices = []
    for device in plant.devices:
        profile = device.profile
        devices.append({
            "id": device.config.id,
            "emission_unit": device.config.emission_unit,
            "unit_id": device.config.unit_id,
            "endpoint": f"{device.config.tcp.host}:{device.config.tcp.port}",
            "profile": profile.model_dump(mode="json", exclude_none=True),
        })
    document = {
        "format": "stackline.config/v1",
        "plant": cfg.plant.model_dump(mode="json"),
        "collector_id": cfg.collector.id,
        "tick_ms": cfg.collector.tick_ms,
        "devices": devices,
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def compile_plan(plant: LoadedPlant) -> ReadPlan:
    """Check the register maps and freeze the read plan; raise ConfigError naming the field."""
    devices = tuple(_device_plan(plant, device) for device in plant.devices)
    document = _config_document(plant)
    return ReadPlan(
        plant_id=plant.config.plant.id,
        collector_id=plant.config.collector.id,
        devices=devices,
        config_document=document,
        config_digest=hashlib.sha256(document).digest(),
    )
