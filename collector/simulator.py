"""A plant simulator: serves a plant configuration's devices from pymodbus Modbus TCP servers.

Values are a pure function of the UTC time (slow sine waves plus hash-seeded noise, totalizers that
grow at a fixed rate, a calibration window now and then), so two runs agree to the bit and tests
can compute the expected reading for any instant. This module and `collector.modbus_source` are the
only places pymodbus is imported: the server side here, the client side there.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from collector.config import LoadedDevice, LoadedPlant, PointSpec, RegisterType, StatusRegister
from collector.decode import encode_value

__all__ = ["PlantSimulator", "point_value", "status_word"]

log = logging.getLogger(__name__)

# Totalizers count from this instant so that a uint32 does not roll over for decades.
TOTALIZER_EPOCH_S = 1_767_225_600  # 2026-01-01T00:00:00Z
READ_FUNCTION_CODES = {3: RegisterType.HOLDING, 4: RegisterType.INPUT}


def _unit_interval(*parts: object) -> float:
    """A deterministic number in [-1, 1) from its inputs."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1.0


def point_value(device_id: str, point: PointSpec, t_s: float) -> float:
    """The simulated engineering value of a point at UTC time `t_s` (seconds)."""
    sim = point.simulation
    if sim is None:
        return 0.0
    if sim.rate_per_s:
        # each meter runs a little faster or slower than nominal, so two feeders differ
        rate = sim.rate_per_s * (1.0 + 0.1 * _unit_interval(device_id, point.name, "rate"))
        return max(0.0, (t_s - TOTALIZER_EPOCH_S) * rate)
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


@dataclass(frozen=True, slots=True)
class _Slot:
    register_type: RegisterType
    address: int
    fill: Callable[[float], list[int]]


def _slots(device: LoadedDevice) -> list[_Slot]:
    profile = device.profile
    device_id = device.config.id
    slots = []
    for point in profile.points:
        def fill(t_s: float, point: PointSpec = point) -> list[int]:
            return encode_value(
                point_value(device_id, point, t_s), point.data_type,
                byte_order=point.byte_order or profile.defaults.byte_order,
                word_order=point.word_order or profile.defaults.word_order,
                scale=point.scale, offset=point.offset,
            )
        slots.append(_Slot(point.register_type or profile.defaults.register_type, point.address, fill))
    if profile.status is not None:
        status = profile.status

        def fill_status(t_s: float) -> list[int]:
            return [status_word(device_id, status, t_s)]
        slots.append(
            _Slot(status.register_type or profile.defaults.register_type, status.address, fill_status)
        )
    return slots


class _SimulatedDevice:
    """Registers of one device, refreshed from the clock on every read."""

    def __init__(self, *, device: LoadedDevice, clock: Callable[[], float]) -> None:
        self.device = device
        self.clock = clock
        self.slots = _slots(device)
        self.reads = 0
        by_type: dict[RegisterType, list[_Slot]] = defaultdict(list)
        for slot in self.slots:
            by_type[slot.register_type].append(slot)
        self.by_type = dict(by_type)

    def _block(self, register_type: RegisterType) -> list[SimData]:
        slots = self.by_type.get(register_type)
        if not slots:
            return [SimData(0, values=0, datatype=SimType.INVALID)]
        start = min(s.address for s in slots)
        end = max(s.address + len(s.fill(0.0)) for s in slots)
        return [SimData(start, count=end - start, values=0, datatype=SimType.REGISTERS)]

    def sim_device(self) -> SimDevice:
        """The pymodbus device model, with this object's refresh as its action."""
        bits = [SimData(0, values=False, datatype=SimType.BITS)]
        return SimDevice(
            id=self.device.config.unit_id,
            simdata=(bits, list(bits), self._block(RegisterType.HOLDING),
                     self._block(RegisterType.INPUT)),
            action=self._refresh,
        )

    async def _refresh(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        _set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        register_type = READ_FUNCTION_CODES.get(function_code)
        if register_type is None:
            return ExcCodes.ILLEGAL_FUNCTION
        self.reads += 1
        now = self.clock()
        for slot in self.by_type.get(register_type, ()):
            words = slot.fill(now)
            index = slot.address - start_address
            registers[index:index + len(words)] = words
        return None


class PlantSimulator:
    """One Modbus TCP server per endpoint of the plant; devices sharing an endpoint share it."""

    def __init__(self, *, plant: LoadedPlant, clock: Callable[[], float] = time.time) -> None:
        self.plant = plant
        self.devices = [_SimulatedDevice(device=d, clock=clock) for d in plant.devices]
        endpoints: dict[tuple[str, int], list[_SimulatedDevice]] = defaultdict(list)
        for sim in self.devices:
            endpoints[(sim.device.config.tcp.host, sim.device.config.tcp.port)].append(sim)
        self.endpoints = dict(endpoints)
        self._servers: list[ModbusTcpServer] = []

    def __repr__(self) -> str:
        return f"PlantSimulator(plant={self.plant.config.plant.id!r}, endpoints={len(self.endpoints)})"

    async def serve(self) -> None:
        """Serve every endpoint until cancelled."""
        for (host, port), sims in self.endpoints.items():
            server = ModbusTcpServer([s.sim_device() for s in sims], address=(host, port))
            self._servers.append(server)
        try:
            async with asyncio.TaskGroup() as group:
                for server in self._servers:
                    group.create_task(server.serve_forever(), name=f"modbus-{server}")
                for (host, port), sims in self.endpoints.items():
                    log.info("serving %s on %s:%d", ", ".join(
                        f"{s.device.config.id} (unit {s.device.config.unit_id})" for s in sims),
                        host, port)
        finally:
            for server in self._servers:
                await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it unannotated
