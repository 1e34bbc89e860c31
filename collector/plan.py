"""Compile a loaded plant into a frozen read plan: coalesced requests and where each point sits.

Checks that only the whole register map can answer are made here: a point's span against its
type, points that overlap, points that cannot fit one request, addresses past the end of the table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from collector.config import (
    MAX_BITS_PER_REQUEST,
    ByteOrder,
    DataType,
    LoadedDevice,
    LoadedPlant,
    RegisterType,
    TotalizerSpec,
)
from collector.errors import ConfigError

__all__ = [
    "STATUS_POINT",
    "DevicePlan",
    "PointPlan",
    "ReadPlan",
    "ReadRequest",
    "SerialLink",
    "StatusPlan",
    "TcpLink",
    "compile_plan",
]

STATUS_POINT = "status"  # the reading that records a device's raw status word
REGISTER_SPACE = 65536


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One Modbus read: a table, a start address (as sent on the wire, 0-based) and a count of
    registers (or of bits, for coils and discrete inputs)."""

    register_type: RegisterType
    address: int
    count: int


@dataclass(frozen=True, slots=True)
class PointPlan:
    """Where one point's registers sit in the device's responses, and how they decode."""

    point_id: str
    name: str
    request_index: int
    offset: int  # of the point's first register (or bit) in its request's response
    data_type: DataType
    register_count: int  # registers (or bits) the point spans
    byte_order: ByteOrder
    scale: float
    value_offset: float
    flagged_by_status: bool
    unit: str = ""
    bit: int | None = None  # bool and bits in a register: lowest bit
    bit_count: int = 1
    totalizer: TotalizerSpec | None = None


@dataclass(frozen=True, slots=True)
class StatusPlan:
    """The status word's position and the meaning of its bits."""

    request_index: int
    offset: int
    calibration_bit: int | None
    maintenance_bit: int | None
    fault_bit: int | None


@dataclass(frozen=True, slots=True)
class TcpLink:
    """A Modbus TCP connection; devices behind one host:port share it."""

    host: str
    port: int
    request_gap_ms: int = 0

    @property
    def key(self) -> str:
        """Identifies the link: the devices with one key are polled one request at a time."""
        return f"tcp:{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SerialLink:
    """A Modbus RTU serial line shared by several devices."""

    line_id: str
    port: str
    baudrate: int = 9600
    parity: str = "N"
    stop_bits: int = 1
    bytesize: int = 8
    request_gap_ms: int = 10

    @property
    def key(self) -> str:
        """Identifies the link: the devices with one key are polled one request at a time."""
        return f"serial:{self.line_id}"


@dataclass(frozen=True, slots=True)
class DevicePlan:
    """Everything the poller needs for one device."""

    device_id: str
    link: TcpLink | SerialLink
    unit_id: int
    timeout_ms: int
    requests: tuple[ReadRequest, ...]
    points: tuple[PointPlan, ...]
    status: StatusPlan | None
    status_point_id: str | None
    poll_interval_ms: int = 1000
    failures_before_backoff: int = 3
    backoff_max_ms: int = 30_000
    emission_unit: str = ""

    @property
    def where(self) -> str:
        """The device's address, for messages."""
        if isinstance(self.link, SerialLink):
            return f"unit {self.unit_id} on serial line {self.link.line_id} ({self.link.port})"
        return f"unit {self.unit_id} at {self.link.host}:{self.link.port}"

    @property
    def reading_count(self) -> int:
        """Readings one poll produces."""
        return len(self.points) + (1 if self.status else 0)


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
        """Readings one poll of every device produces."""
        return sum(d.reading_count for d in self.devices)


@dataclass(frozen=True, slots=True)
class _Span:
    name: str
    field: str
    register_type: RegisterType
    address: int  # 0-based, as sent
    width: int
    bits: tuple[int, int] | None = None  # (lowest bit, count) of a bit point in a register
    whole_word: bool = False  # the status word: shares its register with bit points

    @property
    def shares_word(self) -> bool:
        return self.bits is not None or self.whole_word


def _point_span(device: LoadedDevice, index: int) -> _Span:
    profile = device.profile
    point = profile.points[index]
    source = str(device.profile_path)
    field = f"points[{index}]"
    register_type = point.register_type or profile.defaults.register_type
    data_type = point.data_type
    if register_type.is_bit and data_type is not DataType.BOOL:
        raise ConfigError(source, f"{field}.data_type",
                          f"point {point.name!r} is in the {register_type.value} table, which holds "
                          f"single bits: its data_type must be bool")
    if data_type is DataType.BOOL and not register_type.is_bit and point.bit is None:
        raise ConfigError(source, f"{field}.bit",
                          f"point {point.name!r} is a bool in a {register_type.value} register: "
                          f"say which bit (0 = least significant)")
    if register_type.is_bit and point.bit is not None:
        raise ConfigError(source, f"{field}.bit",
                          f"a {register_type.value} is one bit already: drop bit from {point.name!r}")
    width = (point.registers or 1) if data_type is DataType.STRING else data_type.registers
    if point.registers is not None and point.registers != width:
        raise ConfigError(
            source, f"{field}.registers",
            f"point {point.name!r} is {data_type.value}, which spans {width} "
            f"register{'s' if width > 1 else ''}, not {point.registers}",
        )
    address = point.address - profile.address_base
    if address < 0:
        raise ConfigError(source, f"{field}.address",
                          f"point {point.name!r} is at {point.address}, below the profile's "
                          f"address_base {profile.address_base}")
    if address + width > REGISTER_SPACE:
        raise ConfigError(source, f"{field}.address", f"point {point.name!r} runs past address 65535")
    limit = MAX_BITS_PER_REQUEST if register_type.is_bit else profile.max_registers_per_request
    if width > limit:
        raise ConfigError(
            source, "max_registers_per_request",
            f"point {point.name!r} spans {width} registers, more than one request may carry ({limit})",
        )
    bits = None
    if point.bit is not None:
        bits = (point.bit, point.bit_count or 1)
    return _Span(point.name, field, register_type, address, width, bits)


def _spans(device: LoadedDevice) -> list[_Span]:
    profile = device.profile
    source = str(device.profile_path)
    spans = [_point_span(device, index) for index in range(len(profile.points))]
    if profile.status is not None:
        status_type = profile.status.register_type or profile.defaults.register_type
        if status_type.is_bit:
            raise ConfigError(source, "status.register_type",
                              "the status word is a register: holding or input")
        address = profile.status.address - profile.address_base
        if address < 0:
            raise ConfigError(source, "status.address",
                              f"below the profile's address_base {profile.address_base}")
        spans.append(_Span(STATUS_POINT, "status", status_type, address, 1, whole_word=True))
        bits = profile.status.bits
        used = [b for b in (bits.calibration, bits.maintenance, bits.fault) if b is not None]
        if len(set(used)) != len(used):
            raise ConfigError(source, "status.bits", "two status meanings share one bit")
    seen: dict[str, _Span] = {}
    for span in spans:
        if span.name in seen:
            raise ConfigError(source, f"{span.field}.name",
                              f"point name {span.name!r} is used twice in profile "
                              f"{device.profile_path.name}")
        seen[span.name] = span
    ordered = sorted(spans, key=lambda s: (s.register_type, s.address))
    for index, after in enumerate(ordered):
        for before in ordered[:index]:
            if (before.register_type != after.register_type
                    or after.address >= before.address + before.width):
                continue
            if _may_share(before, after):
                continue
            raise ConfigError(
                source, after.field,
                f"point {after.name!r} at {after.register_type.value} address {after.address} "
                f"overlaps point {before.name!r} ({before.register_type.value} "
                f"{before.address}..{before.address + before.width - 1})",
            )
    return spans


def _may_share(one: _Span, other: _Span) -> bool:
    """Bit points may share a register with each other (on distinct bits) and with the status word."""
    if not (one.shares_word and other.shares_word) or one.address != other.address:
        return False
    if one.bits is None or other.bits is None:
        return True  # one of them is the status word
    low_a, count_a = one.bits
    low_b, count_b = other.bits
    return low_a + count_a <= low_b or low_b + count_b <= low_a


def _coalesce(spans: list[_Span], max_registers: int, max_gap: int) -> list[tuple[ReadRequest, list[_Span]]]:
    """Group spans into the fewest requests within the size limit, reading across at most
    `max_gap` unused registers. Greedy in address order, which is optimal for intervals."""
    groups: list[tuple[RegisterType, int, int, list[_Span]]] = []
    for span in sorted(spans, key=lambda s: (s.register_type, s.address)):
        limit = MAX_BITS_PER_REQUEST if span.register_type.is_bit else max_registers
        gap = 0 if span.register_type.is_bit else max_gap
        if groups:
            kind, start, end, members = groups[-1]
            new_end = max(end, span.address + span.width)
            if kind == span.register_type and span.address - end <= gap and new_end - start <= limit:
                groups[-1] = (kind, start, new_end, [*members, span])
                continue
        groups.append((span.register_type, span.address, span.address + span.width, [span]))
    return [(ReadRequest(kind, start, end - start), members) for kind, start, end, members in groups]


def _link(device: LoadedDevice) -> TcpLink | SerialLink:
    line = device.serial_line
    if line is not None:
        return SerialLink(line_id=line.id, port=line.port, baudrate=line.baudrate, parity=line.parity,
                          stop_bits=line.stop_bits, bytesize=line.bytesize,
                          request_gap_ms=line.request_gap_ms)
    tcp = device.config.tcp
    assert tcp is not None  # a device has tcp or a serial line, checked at load
    return TcpLink(host=tcp.host, port=tcp.port, request_gap_ms=tcp.request_gap_ms)


def _device_plan(plant: LoadedPlant, device: LoadedDevice) -> DevicePlan:
    profile = device.profile
    spans = _spans(device)
    grouped = _coalesce(spans, profile.max_registers_per_request, profile.max_gap_registers)
    located: dict[str, tuple[int, int]] = {}
    for request_index, (request, members) in enumerate(grouped):
        for span in members:
            located[span.name] = (request_index, span.address - request.address)
    plant_id = plant.config.plant.id
    prefix = f"{plant_id}/{device.config.id}"
    points = []
    for point, span in zip(profile.points, spans, strict=False):
        request_index, offset = located[point.name]
        points.append(
            PointPlan(
                point_id=f"{prefix}/{point.name}",
                name=point.name,
                request_index=request_index,
                offset=offset,
                data_type=point.data_type,
                register_count=span.width,
                byte_order=point.byte_order or profile.defaults.byte_order,
                scale=point.scale,
                value_offset=point.offset,
                flagged_by_status=point.flagged_by_status,
                unit=point.unit,
                bit=point.bit,
                bit_count=point.bit_count or 1,
                totalizer=point.totalizer,
            )
        )
    status = None
    if profile.status is not None:
        request_index, offset = located[STATUS_POINT]
        bits = profile.status.bits
        status = StatusPlan(request_index, offset, bits.calibration, bits.maintenance, bits.fault)
    return DevicePlan(
        device_id=device.config.id,
        link=_link(device),
        unit_id=device.config.unit_id,
        timeout_ms=device.config.timeout_ms,
        requests=tuple(request for request, _ in grouped),
        points=tuple(points),
        status=status,
        status_point_id=f"{prefix}/{STATUS_POINT}" if status else None,
        poll_interval_ms=device.poll_interval_ms,
        failures_before_backoff=device.config.failures_before_backoff,
        backoff_max_ms=device.config.backoff_max_ms,
        emission_unit=device.config.emission_unit,
    )


def _config_document(plant: LoadedPlant) -> bytes:
    """Canonical JSON of everything that gives a reading its meaning (sorted keys, no spaces)."""
    cfg = plant.config
    devices = []
    for device in plant.devices:
        profile = device.profile
        line = device.serial_line
        tcp = device.config.tcp
        endpoint = (f"serial:{line.id}:{line.port}" if line is not None
                    else f"{tcp.host}:{tcp.port}" if tcp is not None else "")
        devices.append({
            "id": device.config.id,
            "emission_unit": device.config.emission_unit,
            "unit_id": device.config.unit_id,
            "endpoint": endpoint,
            "poll_interval_ms": device.poll_interval_ms,
            "profile": profile.model_dump(mode="json", exclude_none=True),
        })
    document = {
        "format": "stackline.config/v1",
        "plant": cfg.plant.model_dump(mode="json"),
        "collector_id": cfg.collector.id,
        "tick_ms": cfg.collector.tick_ms,
        "devices": devices,
    }
    if cfg.accounting is not None:
        document["accounting"] = cfg.accounting.model_dump(mode="json")
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _blame_override(plant: LoadedPlant, index: int, error: ConfigError) -> ConfigError:
    """A register-map error that a device's override caused, named where the override is."""
    overrides = plant.devices[index].config.overrides
    field = error.field
    profile = plant.devices[index].profile
    culprit: str | None = None
    if field.startswith("points[") and "]" in field:
        position = int(field[len("points["):field.index("]")])
        rest = field[field.index("]") + 1:].lstrip(".")
        name = profile.points[position].name if position < len(profile.points) else ""
        changed = (overrides.get("points") or {}).get(name) or {}
        if changed and (not rest or rest.split(".")[0] in changed):
            culprit = f"points.{name}" + (f".{rest}" if rest else "")
    elif field.split(".")[0] in overrides:
        culprit = field
    if culprit is None:
        return error
    return ConfigError(str(plant.source), f"devices[{index}].overrides.{culprit}", error.message)


def compile_plan(plant: LoadedPlant) -> ReadPlan:
    """Check the register maps and freeze the read plan; raise ConfigError naming the field."""
    plans = []
    for index, device in enumerate(plant.devices):
        try:
            plans.append(_device_plan(plant, device))
        except ConfigError as exc:
            if device.config.overrides:
                raise _blame_override(plant, index, exc) from exc
            raise
    devices = tuple(plans)
    document = _config_document(plant)
    return ReadPlan(
        plant_id=plant.config.plant.id,
        collector_id=plant.config.collector.id,
        devices=devices,
        config_document=document,
        config_digest=hashlib.sha256(document).digest(),
    )
