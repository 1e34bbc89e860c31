"""Reads devices over Modbus TCP with pymodbus; the only home of the pymodbus client.

pymodbus errors are translated here into the collector's own: `DeviceTimeout`,
`DeviceConnectionLost`, `DeviceException` (with the Modbus exception code).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from typing import Protocol

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from collector.config import RegisterType
from collector.errors import DeviceConnectionLost, DeviceError, DeviceException, DeviceTimeout
from collector.plan import DevicePlan, ReadRequest
from proto.backoff import raise_if_cancelled

__all__ = ["DeviceSource", "LinkState", "ModbusTcpSource", "PollResult"]

log = logging.getLogger(__name__)

RAW_FRAMES_KEPT = 8
CLIENT_TIMEOUT_S = 120.0


class LinkState(enum.Enum):
    """State of the connection to one endpoint."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    FAILED = "failed"


PollResult = list[list[int] | None]


class DeviceSource(Protocol):
    """Something that answers a device's read plan: one entry per request, None where it failed."""

    async def poll(self, device: DevicePlan) -> tuple[PollResult, DeviceError | None]:
        """Read every request of the device; the error is the first failure, if any."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class _Endpoint:
    """One TCP connection, shared by the devices (unit ids) behind it, one request at a time."""

    def __init__(self, *, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.state = LinkState.DISCONNECTED
        self.lock = asyncio.Lock()
        self.frames: deque[tuple[bool, bytes]] = deque(maxlen=RAW_FRAMES_KEPT)
        # pymodbus' own response timeout is set out of the way: each request runs under the
        # device's `timeout_ms` (asyncio.timeout below), whatever it is.
        self.client = AsyncModbusTcpClient(
            host, port=port, retries=0, reconnect_delay=0, timeout=CLIENT_TIMEOUT_S,
            trace_packet=self._trace,
        )

    def __repr__(self) -> str:
        return f"_Endpoint({self.host}:{self.port}, state={self.state.value})"

    def _trace(self, sending: bool, data: bytes) -> bytes:
        self.frames.append((sending, bytes(data)))
        return data

    def frames_hex(self) -> str:
        """The last raw frames, for an error message."""
        return " | ".join(("> " if sent else "< ") + data.hex(" ") for sent, data in self.frames)


class ModbusTcpSource:
    """Polls devices over Modbus TCP, coalesced requests as the plan says."""

    def __init__(self) -> None:
        self._endpoints: dict[tuple[str, int], _Endpoint] = {}
        self._failing: set[str] = set()

    def __repr__(self) -> str:
        return f"ModbusTcpSource(endpoints={list(self._endpoints.values())!r})"

    def _endpoint(self, device: DevicePlan) -> _Endpoint:
        key = (device.host, device.port)
        if key not in self._endpoints:
            self._endpoints[key] = _Endpoint(host=device.host, port=device.port)
        return self._endpoints[key]

    async def _read(self, endpoint: _Endpoint, device: DevicePlan, request: ReadRequest) -> list[int]:
        client = endpoint.client
        if not client.connected:
            try:
                async with asyncio.timeout(device.timeout_ms / 1000):
                    connected = await client.connect()
            except TimeoutError:
                connected = False
            if not connected:
                endpoint.state = LinkState.FAILED
                raise DeviceConnectionLost(
                    device.device_id, f"cannot connect to {device.host}:{device.port}"
                )
            endpoint.state = LinkState.CONNECTED
        read = (client.read_holding_registers if request.register_type is RegisterType.HOLDING
                else client.read_input_registers)
        try:
            async with asyncio.timeout(device.timeout_ms / 1000):
                response = await read(request.address, count=request.count,
                                      device_id=device.unit_id)
        except TimeoutError as exc:
            # A late answer would pair with the next request: start that one on a fresh connection.
            client.close()
            endpoint.state = LinkState.DISCONNECTED
            raise DeviceTimeout(
                device.device_id, f"no answer within {device.timeout_ms} ms to {_describe(request)}"
            ) from exc
        except ConnectionException as exc:
            raise_if_cancelled(exc)
            client.close()
            endpoint.state = LinkState.FAILED
            raise DeviceConnectionLost(device.device_id, f"connection lost: {exc}") from exc
        except ModbusIOException as exc:
            raise_if_cancelled(exc)
            client.close()
            endpoint.state = LinkState.DISCONNECTED
            raise DeviceTimeout(device.device_id, f"{_describe(request)} failed: {exc}") from exc
        except ModbusException as exc:
            raise_if_cancelled(exc)
            client.close()
            endpoint.state = LinkState.FAILED
            raise DeviceConnectionLost(device.device_id, f"{_describe(request)}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            raise DeviceException(
                device.device_id, f"exception code {code} in answer to {_describe(request)}",
                exception_code=code,
            )
        registers = list(response.registers)
        if len(registers) != request.count:
            raise DeviceException(
                device.device_id,
                f"{len(registers)} registers in answer to {_describe(request)}", exception_code=0,
            )
        return registers

    async def poll(self, device: DevicePlan) -> tuple[PollResult, DeviceError | None]:
        """Read every request of the device in turn; a failed request leaves None in its place."""
        endpoint = self._endpoint(device)
        results: PollResult = []
        first_error: DeviceError | None = None
        async with endpoint.lock:
            try:
                for request in device.requests:
                    if isinstance(first_error, DeviceConnectionLost | DeviceTimeout):
                        # a device that is gone or silent would only make every request wait
                        results.append(None)
                        continue
                    try:
                        results.append(await self._read(endpoint, device, request))
                    except DeviceError as exc:
                        results.append(None)
                        first_error = first_error or exc
            except asyncio.CancelledError:
                # cut off mid-request (the tick's deadline): a late answer must not meet the
                # next request on this connection
                endpoint.client.close()
                endpoint.state = LinkState.DISCONNECTED
                raise
        self._report(device, first_error, endpoint)
        return results, first_error

    def _report(self, device: DevicePlan, error: DeviceError | None, endpoint: _Endpoint) -> None:
        if error is None:
            if device.device_id in self._failing:
                self._failing.discard(device.device_id)
                log.warning("device %s answers again", device.device_id)
            return
        if device.device_id not in self._failing:
            self._failing.add(device.device_id)
            log.error("%s; readings are flagged until it recovers; last frames: %s",
                      error, endpoint.frames_hex() or "none")
        else:
            log.debug("%s (still failing)", error)

    async def close(self) -> None:
        """Close every connection."""
        for endpoint in self._endpoints.values():
            endpoint.client.close()
            endpoint.state = LinkState.DISCONNECTED


def _describe(request: ReadRequest) -> str:
    return f"read of {request.count} {request.register_type.value} registers at {request.address}"
