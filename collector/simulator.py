"""A plant simulator: serves a plant configuration's devices from pymodbus Modbus servers.

Values are a pure function of the UTC time (slow sine waves plus hash-seeded noise, totalizers that
grow at a fixed rate, a calibration window now and then), so two runs agree to the bit and tests
can compute the expected reading for any instant: `device_registers` gives every word and bit a
device holds at an instant, with no server involved. A profile's `simulation` may pin a point
instead: `value` (a constant engineering value), `words` (raw registers served as they are) or
`text` (a string).

`PlantSimulator` serves one Modbus TCP server per host:port and one Modbus RTU server per serial
line it is given a port for, each carrying every device (unit id) behind it. For fault tests a
device can be made silent, answer with an exception, answer late (`set_fault`), and have a
totalizer set to any count (`set_counter`); each device counts and logs the requests it receives.

This module and `collector.modbus_source` are the only places pymodbus is imported: the server
side here, the client side there. Requests are answered by `_RequestHandler`, not pymodbus' own
handler, because the latter stamps a late answer with the unit id and transaction id of whichever
request arrived last (so a slow device's answer would pass for another device's), never shows
requests for unmapped addresses to the device's action, and answers unknown unit ids on a serial
line with "device failure" where a real bus stays silent.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from collector.config import (
    DataType,
    LoadedDevice,
    LoadedPlant,
    PointSpec,
    RegisterType,
    SerialLine,
    StatusRegister,
    TotalizerSpec,
)
from collector.decode import encode_raw, encode_text, encode_value
from collector.errors import CollectorError, ConfigError
from collector.totalizer import rollover_span

__all__ = [
    "READ_FUNCTION_CODES",
    "RECENT_REQUESTS",
    "TOTALIZER_EPOCH_S",
    "CounterAnchor",
    "Fault",
    "FaultMode",
    "PlantSimulator",
    "Registers",
    "RequestRecord",
    "SimulatedDevice",
    "SimulatorError",
    "device_registers",
    "point_value",
    "status_word",
    "table_spans",
    "totalizer_count",
]

log = logging.getLogger(__name__)

# Totalizers count from this instant so that a uint32 does not roll over for decades.
TOTALIZER_EPOCH_S = 1_767_225_600  # 2026-01-01T00:00:00Z
READ_FUNCTION_CODES: Mapping[int, RegisterType] = {
    1: RegisterType.COIL,
    2: RegisterType.DISCRETE_INPUT,
    3: RegisterType.HOLDING,
    4: RegisterType.INPUT,
}
RECENT_REQUESTS = 64  # requests each device remembers, newest last

Registers = dict[tuple[RegisterType, int], int]


class SimulatorError(CollectorError):
    """The simulator cannot serve an endpoint (a port in use, a serial device that is not there)."""


class FaultMode(enum.Enum):
    """How a device misbehaves, by `PlantSimulator.set_fault`."""

    SILENT = "silent"  # receives requests and sends nothing back
    EXCEPTION = "exception"  # answers every request with one Modbus exception code
    SLOW = "slow"  # answers correctly, after a delay


@dataclass(frozen=True, slots=True)
class Fault:
    """A device's injected fault."""

    mode: FaultMode
    delay_s: float = 0.0
    exception_code: int = 6  # device busy


@dataclass(frozen=True, slots=True)
class CounterAnchor:
    """A totalizer set to `raw` counts at UTC time `t_s`; it counts on at its rate from there."""

    t_s: float
    raw: int | float


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request a device received, and the fault it was answered under (None: normally)."""

    function_code: int
    address: int
    count: int
    fault: FaultMode | None = None


# --- values: pure functions of the device, the point and the time -------------------------------


def _unit_interval(*parts: object) -> float:
    """A deterministic number in [-1, 1) from its inputs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1.0


def _raw_rate_per_s(device_id: str, point: PointSpec) -> float:
    """A totalizer's raw counts per second; each meter runs a little faster or slower than nominal,
    so two feeders differ."""
    sim = point.simulation
    if sim is None or not sim.rate_per_s:
        return 0.0
    return sim.rate_per_s * (1.0 + 0.1 * _unit_interval(device_id, point.name, "rate")) / point.scale


def _wrap(raw: int | float, point: PointSpec) -> int | float:
    """A count past the meter's span starts again from zero, as the device's would."""
    span = rollover_span(point.totalizer or TotalizerSpec(), point.data_type)
    if span is None:
        return raw
    if isinstance(raw, int) and isinstance(span, int):
        return raw % span
    return math.fmod(raw, span) if raw >= 0 else raw


def totalizer_count(device_id: str, point: PointSpec, t_s: float, *,
                    since: CounterAnchor | None = None) -> int | float:
    """A counting point's raw count (before scale and offset) at UTC time `t_s`.

    Counts from 0 at `TOTALIZER_EPOCH_S`, or from `since`; integer types count whole steps (an
    int, exact up to 2**64) and wrap at the meter's rollover span.
    """
    anchor = since or CounterAnchor(TOTALIZER_EPOCH_S, 0)
    grown = max(0.0, t_s - anchor.t_s) * _raw_rate_per_s(device_id, point)
    raw: int | float
    if point.data_type in (DataType.FLOAT32, DataType.FLOAT64):
        raw = float(anchor.raw) + grown
    else:
        raw = int(anchor.raw) + math.floor(grown)
    return _wrap(raw, point)


def point_value(device_id: str, point: PointSpec, t_s: float) -> float:
    """The simulated engineering value of a point at UTC time `t_s` (seconds).

    A constant `value` wins; a totalizer (`rate_per_s`) is its count times scale plus offset;
    otherwise a sine wave with noise. Strings and points given fixed `words` have no value here
    (NaN): `device_registers` gives what they hold.
    """
    sim = point.simulation
    if sim is None:
        return 0.0
    if sim.words is not None or point.data_type is DataType.STRING:
        return math.nan
    if sim.value is not None:
        return sim.value
    if sim.rate_per_s:
        return float(totalizer_count(device_id, point, t_s)) * point.scale + point.offset
    phase = (_unit_interval(device_id, point.name) + 1.0) * math.pi
    wave = sim.amplitude * math.sin(2 * math.pi * t_s / sim.period_s + phase)
    noise = sim.noise * _unit_interval(device_id, point.name, int(t_s))
    return sim.mean + wave + noise


def status_word(device_id: str, status: StatusRegister, t_s: float) -> int:
    """The simulated status word: the calibration bit is set during each calibration window."""
    every = status.simulation_calibration_every_s
    if not every or status.bits.calibration is None:
        return 0
    shift = (_unit_interval(device_id, "calibration") + 1.0) / 2 * every
    in_window = (t_s + shift) % every < status.simulation_calibration_duration_s
    return 1 << status.bits.calibration if in_window else 0


def _width(point: PointSpec, register_type: RegisterType) -> int:
    """Registers (or bits) a point spans."""
    if register_type.is_bit:
        return 1
    if point.data_type is DataType.STRING:
        return point.registers or 1
    return point.data_type.registers


def _bit_field(device_id: str, point: PointSpec, t_s: float) -> int:
    """A bool's bit or a bits point's field, unshifted. Fixed `words` give the point's own bits of
    the first word; a bool is 1 from a value of 0.5 up; a field is its scaled value, clamped."""
    low = point.bit or 0
    mask = (1 << (point.bit_count or 1)) - 1
    sim = point.simulation
    if sim is not None and sim.words is not None:
        return sim.words[0] >> low & mask
    value = point_value(device_id, point, t_s)
    if point.data_type is DataType.BOOL:
        return 1 if value >= 0.5 else 0
    if math.isnan(value):
        return 0
    return min(max(round((value - point.offset) / point.scale), 0), mask)


def _point_words(device: LoadedDevice, point: PointSpec, t_s: float,
                 anchor: CounterAnchor | None) -> list[int]:
    """The registers of a whole-register point (a number or a string)."""
    profile = device.profile
    byte_order = point.byte_order or profile.defaults.byte_order
    sim = point.simulation
    if point.data_type is DataType.STRING:
        if sim is not None and sim.words is not None:
            return list(sim.words)
        return encode_text(sim.text if sim is not None and sim.text else "", point.registers or 1,
                           byte_order)
    if anchor is not None or (sim is not None and sim.rate_per_s and sim.words is None
                              and sim.value is None):
        raw = totalizer_count(device.config.id, point, t_s, since=anchor)
        return encode_raw(raw, point.data_type, byte_order)
    if sim is not None and sim.words is not None:
        return list(sim.words)
    return encode_value(point_value(device.config.id, point, t_s), point.data_type,
                        byte_order=byte_order, scale=point.scale, offset=point.offset)


def device_registers(device: LoadedDevice, t_s: float, *,
                     counters: Mapping[str, CounterAnchor] | None = None) -> Registers:
    """Every register and bit a device holds at UTC time `t_s`, by (table, wire address).

    Wire addresses are the profile's minus its `address_base`. Coils and discrete inputs are 0 or
    1; bool and bits points in a register are OR-ed into its word, together with the status word
    if it shares that register. `counters` (by point name) are totalizers set by `set_counter`.
    Addresses no point covers are absent (a server reads them as 0 inside a device's span).
    """
    profile = device.profile
    device_id = device.config.id
    anchors = counters or {}
    registers: Registers = {}
    for point in profile.points:
        register_type = point.register_type or profile.defaults.register_type
        address = point.address - profile.address_base
        if register_type.is_bit:
            registers[(register_type, address)] = _bit_field(device_id, point, t_s)
        elif point.data_type in (DataType.BOOL, DataType.BITS):
            key = (register_type, address)
            registers[key] = registers.get(key, 0) | _bit_field(device_id, point, t_s) << (point.bit or 0)
        else:
            words = _point_words(device, point, t_s, anchors.get(point.name))
            for index, word in enumerate(words):
                registers[(register_type, address + index)] = word
    if profile.status is not None:
        status = profile.status
        key = (status.register_type or profile.defaults.register_type, status.address - profile.address_base)
        registers[key] = registers.get(key, 0) | status_word(device_id, status, t_s)
    return registers


def table_spans(device: LoadedDevice) -> dict[RegisterType, tuple[int, int]]:
    """The wire addresses each table of a device serves: [first, end) from its lowest to past its
    highest point. Tables without points are absent (every read of them is an illegal address)."""
    profile = device.profile
    spans: dict[RegisterType, tuple[int, int]] = {}

    def cover(register_type: RegisterType, address: int, width: int) -> None:
        first, end = spans.get(register_type, (address, address + width))
        spans[register_type] = (min(first, address), max(end, address + width))

    for point in profile.points:
        register_type = point.register_type or profile.defaults.register_type
        cover(register_type, point.address - profile.address_base, _width(point, register_type))
    if profile.status is not None:
        cover(profile.status.register_type or profile.defaults.register_type,
              profile.status.address - profile.address_base, 1)
    return spans


def _check_simulation(device: LoadedDevice) -> None:
    """Refuse fixed words or text that do not fit their point, naming the field."""
    profile = device.profile
    for index, point in enumerate(profile.points):
        sim = point.simulation
        if sim is None:
            continue
        register_type = point.register_type or profile.defaults.register_type
        field = f"points[{index}].simulation"
        width = 1 if point.data_type in (DataType.BOOL, DataType.BITS) else _width(point, register_type)
        if sim.words is not None and len(sim.words) != width:
            raise ConfigError(str(device.profile_path), f"{field}.words",
                              f"point {point.name!r} spans {width} register{'s' if width > 1 else ''}: "
                              f"give {width} word{'s' if width > 1 else ''}, not {len(sim.words)}")
        if sim.text is not None:
            if point.data_type is not DataType.STRING:
                raise ConfigError(str(device.profile_path), f"{field}.text",
                                  f"point {point.name!r} is {point.data_type.value}, not a string")
            try:
                encode_text(sim.text, width)
            except ValueError as exc:
                raise ConfigError(str(device.profile_path), f"{field}.text", str(exc)) from exc


# --- one device, as the servers see it ------------------------------------------------------------


class SimulatedDevice:
    """One device's registers, refreshed from the clock on every read, with its injected fault,
    its set totalizers, and the requests it received."""

    def __init__(self, *, device: LoadedDevice, clock: Callable[[], float]) -> None:
        _check_simulation(device)
        self.device = device
        self.clock = clock
        self.tables = table_spans(device)
        self.counters: dict[str, CounterAnchor] = {}
        self.fault: Fault | None = None
        self.reads = 0  # read requests (function codes 1 to 4) received
        self.reads_by_type: collections.Counter[RegisterType] = collections.Counter()
        self.requests = 0  # every request received, reads or not
        self.recent: collections.deque[RequestRecord] = collections.deque(maxlen=RECENT_REQUESTS)

    def __repr__(self) -> str:
        fault = self.fault.mode.name if self.fault else "none"
        return (f"SimulatedDevice(id={self.device_id!r}, unit_id={self.unit_id}, reads={self.reads}, "
                f"fault={fault})")

    @property
    def device_id(self) -> str:
        """The device's id in the plant configuration."""
        return self.device.config.id

    @property
    def unit_id(self) -> int:
        """The Modbus unit id the device answers to."""
        return self.device.config.unit_id

    def registers(self, t_s: float | None = None) -> Registers:
        """What the device holds now (or at `t_s`), set totalizers included."""
        return device_registers(self.device, self.clock() if t_s is None else t_s, counters=self.counters)

    def set_fault(self, mode: FaultMode | None, *, delay_s: float = 0.0,
                  exception_code: int = 6) -> None:
        """Make the device misbehave from its next request on; None makes it answer normally."""
        if mode is None:
            self.fault = None
            log.info("simulated device %s answers normally", self.device_id)
            return
        if not math.isfinite(delay_s) or delay_s < 0:
            raise ValueError(f"delay_s must be 0 or more seconds, not {delay_s}")
        if mode is FaultMode.SLOW and delay_s == 0:
            raise ValueError("a slow device needs delay_s: how late it answers")
        if not 1 <= exception_code <= 255:
            raise ValueError(f"a Modbus exception code is 1..255, not {exception_code}")
        self.fault = Fault(mode, float(delay_s), int(exception_code))
        log.info("simulated device %s now %s", self.device_id, self.fault)

    def set_counter(self, point_name: str, raw: int) -> None:
        """Make a numeric point read `raw` counts now and count on at its rate from there."""
        point = next((p for p in self.device.profile.points if p.name == point_name), None)
        if point is None:
            raise KeyError(f"device {self.device_id} has no point {point_name!r}")
        if not point.data_type.is_numeric_word:
            raise ValueError(f"point {point_name!r} is {point.data_type.value}: only numbers count")
        span = rollover_span(point.totalizer or TotalizerSpec(), point.data_type)
        if (raw < 0 and point.data_type.value.startswith("u")) or (span is not None and raw >= span):
            limit = f"0..{span - 1}" if isinstance(span, int) else f"below {span}"
            raise ValueError(f"point {point_name!r} ({point.data_type.value}) counts {limit}, not {raw}")
        self.counters[point_name] = CounterAnchor(self.clock(), raw)

    def reset_requests(self) -> None:
        """Forget the requests counted and logged so far."""
        self.reads = self.requests = 0
        self.reads_by_type.clear()
        self.recent.clear()

    def record(self, function_code: int, address: int, count: int) -> Fault | None:
        """Count and log one request; the fault it is to be answered under."""
        fault = self.fault
        self.requests += 1
        register_type = READ_FUNCTION_CODES.get(function_code)
        if register_type is not None:
            self.reads += 1
            self.reads_by_type[register_type] += 1
        self.recent.append(RequestRecord(function_code, address, count, fault.mode if fault else None))
        return fault

    def sim_device(self) -> SimDevice:
        """The pymodbus device model: a block per table over the device's span, filled by `_fill`
        at every read. Bit tables use pymodbus' bit addressing: bit N is bit N % 16 of the
        block's register N // 16."""
        blocks: list[list[SimData]] = []
        for register_type in (RegisterType.COIL, RegisterType.DISCRETE_INPUT,
                              RegisterType.HOLDING, RegisterType.INPUT):
            span = self.tables.get(register_type)
            if register_type.is_bit:
                # pymodbus wants a bits block in each bit table; `_fill` refuses reads outside the span
                first, end = span or (0, 1)
                blocks.append([SimData(first, count=end - first, values=False, datatype=SimType.BITS)])
            elif span is None:
                blocks.append([SimData(0, datatype=SimType.INVALID)])
            else:
                first, end = span
                blocks.append([SimData(first, count=end - first, values=0, datatype=SimType.REGISTERS)])
        coils, discrete_inputs, holding, inputs = blocks
        return SimDevice(id=self.unit_id, simdata=(coils, discrete_inputs, holding, inputs),
                         use_bit_addressing=True, action=self._fill)

    async def _fill(  # noqa: PLR0917  # the positional signature pymodbus calls an action with
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus' action: write the requested range's current words into the block."""
        register_type = READ_FUNCTION_CODES.get(function_code)
        if register_type is None or set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        span = self.tables.get(register_type)
        if span is None or address < span[0] or address + count > span[1]:
            return ExcCodes.ILLEGAL_ADDRESS
        values = self.registers()
        if register_type.is_bit:
            for word_index in range(address // 16, (address + count - 1) // 16 + 1):
                word = 0
                for bit in range(16):
                    if values.get((register_type, word_index * 16 + bit)):
                        word |= 1 << bit
                registers[word_index - start_address] = word
        else:
            for wire_address in range(address, address + count):
                registers[wire_address - start_address] = values.get((register_type, wire_address), 0)
        return None


# --- the servers --------------------------------------------------------------------------------


class _RequestHandler(ServerRequestHandler):
    """Answers the requests of one connection (a TCP client, or a whole serial line), each in its
    own task, with the request it answers captured when it arrives."""

    def __init__(self, owner: ModbusBaseServer, *, units: Mapping[int, SimulatedDevice],
                 answer_unknown: bool) -> None:
        super().__init__(owner, None, None, None)  # type: ignore[no-untyped-call]  # pymodbus: unannotated
        self.units = units
        self.answer_unknown = answer_unknown
        self.answering: set[asyncio.Task[None]] = set()

    def handle_later(self) -> None:
        """Called by pymodbus just after a request frame is decoded (replaces its handler)."""
        request, addr = self.last_pdu, self.last_addr
        if request is None:
            return
        task = self.loop.create_task(self._answer(request, addr), name=f"modbus-unit-{request.dev_id}")
        self.answering.add(task)
        task.add_done_callback(self.answering.discard)

    def callback_disconnected(self, exc: Exception | None) -> None:
        """The client went away: late answers have nowhere to go."""
        for task in self.answering:
            task.cancel()
        super().callback_disconnected(exc)

    async def _answer(self, request: ModbusPDU, addr: tuple[str, int] | None) -> None:
        unit_id = request.dev_id
        device = self.units.get(unit_id) or self.units.get(0)
        function_code = request.function_code
        response: ModbusPDU
        if device is None:
            if not self.answer_unknown:
                return  # on a serial line nobody answers for a unit that is not there
            response = ExceptionResponse(function_code, ExcCodes.GATEWAY_NO_RESPONSE)
        else:
            fault = device.record(function_code, request.address, request.count)
            mode = fault.mode if fault else None
            if fault is not None and mode is FaultMode.SLOW:
                await asyncio.sleep(fault.delay_s)
            if mode is FaultMode.SILENT:
                log.debug("simulated device %s stays silent", device.device_id)
                return
            if fault is not None and mode is FaultMode.EXCEPTION:
                response = ExceptionResponse(function_code, fault.exception_code)
            elif function_code not in READ_FUNCTION_CODES:
                response = ExceptionResponse(function_code, ExcCodes.ILLEGAL_FUNCTION)
            else:
                try:
                    response = await request.datastore_update(self.server.context, unit_id)
                except Exception:
                    log.exception("simulated device %s failed a request", device.device_id)
                    response = ExceptionResponse(function_code, ExcCodes.DEVICE_FAILURE)
        response.transaction_id = request.transaction_id
        response.dev_id = unit_id
        self.server_send(response, addr)  # type: ignore[no-untyped-call]  # pymodbus: unannotated


class _TcpServer(ModbusTcpServer):
    """A Modbus TCP endpoint; unknown unit ids get "gateway target failed to respond"."""

    def __init__(self, devices: Sequence[SimulatedDevice], *, address: tuple[str, int]) -> None:
        self.sim_units = {d.unit_id: d for d in devices}
        super().__init__([d.sim_device() for d in devices], address=address)

    def callback_new_connection(self) -> _RequestHandler:
        """A handler for each accepted connection."""
        return _RequestHandler(self, units=self.sim_units, answer_unknown=True)


class _SerialServer(ModbusSerialServer):
    """A Modbus RTU line; unknown unit ids get no answer, as on a real bus."""

    def __init__(self, devices: Sequence[SimulatedDevice], *, port: str, line: SerialLine) -> None:
        self.sim_units = {d.unit_id: d for d in devices}
        super().__init__([d.sim_device() for d in devices], framer=FramerType.RTU, port=port,
                         baudrate=line.baudrate, parity=line.parity, stopbits=line.stop_bits,
                         bytesize=line.bytesize)

    def callback_new_connection(self) -> _RequestHandler:
        """The one handler of the opened serial port."""
        return _RequestHandler(self, units=self.sim_units, answer_unknown=False)


class PlantSimulator:
    """One Modbus TCP server per endpoint of the plant, one Modbus RTU server per serial line;
    devices sharing an endpoint or a line share its server.

    `serial_ports` maps a serial line id to the port the simulator opens for it (the far end of
    the collector's port, e.g. one end of a socat pty pair); lines without one are not served.
    """

    def __init__(self, *, plant: LoadedPlant, clock: Callable[[], float] = time.time,
                 serial_ports: Mapping[str, str] | None = None) -> None:
        self.plant = plant
        self.clock = clock
        self.serial_ports = dict(serial_ports or {})
        self.devices = [SimulatedDevice(device=d, clock=clock) for d in plant.devices]
        self._by_id = {sim.device_id: sim for sim in self.devices}
        endpoints: dict[tuple[str, int], list[SimulatedDevice]] = collections.defaultdict(list)
        serial_lines: dict[str, list[SimulatedDevice]] = collections.defaultdict(list)
        for sim in self.devices:
            line, tcp = sim.device.serial_line, sim.device.config.tcp
            if line is not None:
                serial_lines[line.id].append(sim)
            elif tcp is not None:
                endpoints[(tcp.host, tcp.port)].append(sim)
        self.endpoints = dict(endpoints)
        self.serial_lines = dict(serial_lines)
        unknown = sorted(set(self.serial_ports) - set(self.serial_lines))
        if unknown:
            raise ValueError(f"serial_ports names lines no device uses: {', '.join(unknown)}")
        self.ready = asyncio.Event()  # set while every endpoint is being served

    def __repr__(self) -> str:
        return (f"PlantSimulator(plant={self.plant.config.plant.id!r}, endpoints={len(self.endpoints)}, "
                f"serial_lines={len(self.serial_lines)}, ready={self.ready.is_set()})")

    def device(self, device_id: str) -> SimulatedDevice:
        """A simulated device by its id; KeyError names the known ones."""
        try:
            return self._by_id[device_id]
        except KeyError:
            raise KeyError(f"no device {device_id!r} (devices: {', '.join(self._by_id)})") from None

    def set_fault(self, device_id: str, mode: FaultMode | None, *, delay_s: float = 0.0,
                  exception_code: int = 6) -> None:
        """Make a device silent, answer with `exception_code`, or answer `delay_s` late, from its
        next request on (while serving, too); None makes it answer normally again."""
        self.device(device_id).set_fault(mode, delay_s=delay_s, exception_code=exception_code)

    def set_counter(self, device_id: str, point_name: str, raw: int) -> None:
        """Make a totalizer read `raw` counts (before scale) now and count on at its rate from
        there: just below its rollover to watch it wrap, or 0 for a meter reset."""
        self.device(device_id).set_counter(point_name, raw)

    def _servers(self) -> list[tuple[str, list[SimulatedDevice], ModbusBaseServer]]:
        """The servers to start (inside the running loop: pymodbus binds them to it)."""
        servers: list[tuple[str, list[SimulatedDevice], ModbusBaseServer]] = []
        for (host, port), sims in self.endpoints.items():
            servers.append((f"{host}:{port}", sims, _TcpServer(sims, address=(host, port))))
        for line_id, sims in self.serial_lines.items():
            line = sims[0].device.serial_line
            path = self.serial_ports.get(line_id)
            if path is None or line is None:
                log.warning("serial line %s is not simulated: no port given for it (devices %s)",
                            line_id, ", ".join(s.device_id for s in sims))
                continue
            servers.append((f"serial line {line_id} at {path}", sims,
                            _SerialServer(sims, port=path, line=line)))
        return servers

    async def serve(self) -> None:
        """Serve every endpoint until cancelled; SimulatorError when one cannot be opened."""
        servers = self._servers()
        try:
            for where, sims, server in servers:
                try:
                    await server.serve_forever(background=True)
                except Exception as exc:
                    # pymodbus logs an OSError and raises RuntimeError("Could not start listen");
                    # pyserial's termios.error (settings the port refuses) comes through as it is
                    raise SimulatorError(f"the simulator cannot serve {where}: {exc}{_hint(sims)}") from exc
                log.info("serving %s on %s",
                         ", ".join(f"{s.device_id} (unit {s.unit_id})" for s in sims), where)
            self.ready.set()
            await asyncio.get_running_loop().create_future()  # until cancelled
        finally:
            self.ready.clear()
            for _, _, server in servers:
                await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated


def _hint(devices: Sequence[SimulatedDevice]) -> str:
    """What may be wrong with a serial line that would not open."""
    line = devices[0].device.serial_line if devices else None
    if line is not None and (line.parity != "N" or line.bytesize != 8):
        return (f" (line {line.id} asks for {line.bytesize} data bits, parity {line.parity}: a "
                f"pseudo-terminal such as a socat pty takes only 8 data bits and no parity on Linux 6)")
    return ""
