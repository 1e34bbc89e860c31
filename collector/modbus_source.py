"""Reads devices over Modbus TCP and Modbus RTU (serial) with pymodbus; the only home of the
pymodbus client.

pymodbus errors are translated here into the collector's own: `DeviceTimeout`,
`DeviceConnectionLost`, `DeviceException` (with the Modbus exception code). Every device behind
one link (a TCP connection, or a serial line) is polled one request at a time, with the link's
gap between requests, so that a shared RS-485 bus never carries two frames at once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from collector.config import RegisterType
from collector.errors import DeviceConnectionLost, DeviceError, DeviceException, DeviceTimeout
from collector.plan import DevicePlan, ReadRequest, SerialLink, TcpLink
from proto.backoff import raise_if_cancelled
from proto.stackline.v1 import stackline_pb2 as pb

__all__ = ["DeviceSource", "LinkState", "ModbusSource", "PollOutcome", "RequestOutcome", "describe"]

log = logging.getLogger(__name__)

RAW_FRAMES_KEPT = 8
CLIENT_TIMEOUT_S = 120.0
# after this many requests in a row without an answer, a poll stops asking: the device is silent
# and every further request would only hold the line for another timeout
TIMEOUTS_BEFORE_GIVING_UP = 2


class LinkState(enum.Enum):
    """State of one link (TCP connection or serial port)."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class RequestOutcome:
    """What one request of a poll brought back."""

    request: ReadRequest
    words: list[int] | None  # registers, or one 0/1 per bit; None when it failed
    error: DeviceError | None
    elapsed_ms: float  # from sending the request to its answer (or to giving up)
    frames: str = ""  # the link's last raw frames when it failed, for the log and `check`

    @property
    def answered(self) -> bool:
        """The device answered (with data or with an exception): it is there."""
        if self.error is None:
            return True
        return isinstance(self.error, DeviceException) and not self.error.no_answer_behind_bridge

    @property
    def failure_quality(self) -> int:
        """The flag for the points this request carried when it failed: fault (D) when the device
        refused with an exception, communication loss (B) otherwise."""
        if isinstance(self.error, DeviceException) and not self.error.no_answer_behind_bridge:
            return pb.QUALITY_FAULT
        return pb.QUALITY_COMM_LOSS


@dataclass(slots=True)
class PollOutcome:
    """One poll of one device: an outcome per request of its plan, in order."""

    started_unix_ms: int
    outcomes: list[RequestOutcome] = field(default_factory=list)

    @property
    def responses(self) -> list[list[int] | None]:
        """Words per request, None where the request failed."""
        return [outcome.words for outcome in self.outcomes]

    @property
    def failure_quality(self) -> list[int]:
        """The flag for a failed request's points, per request."""
        return [outcome.failure_quality for outcome in self.outcomes]

    @property
    def error(self) -> DeviceError | None:
        """The first failure, if any."""
        return next((o.error for o in self.outcomes if o.error is not None), None)

    @property
    def answered(self) -> bool:
        """At least one request got an answer: the device is there."""
        return any(outcome.answered for outcome in self.outcomes)


class DeviceSource(Protocol):
    """Something that answers a device's read plan, one outcome per request."""

    async def poll(self, device: DevicePlan) -> PollOutcome:
        """Read every request of the device; never raises DeviceError (it is in the outcome)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class _Link:
    """One connection (TCP) or port (serial), shared by the devices behind it, one request at a
    time."""

    def __init__(self, *, link: TcpLink | SerialLink) -> None:
        self.link = link
        self.state = LinkState.DISCONNECTED
        self.lock = asyncio.Lock()
        self.frames: deque[tuple[bool, bytes]] = deque(maxlen=RAW_FRAMES_KEPT)
        self.last_io = 0.0  # monotonic time of the last answer or give-up
        self.client: AsyncModbusTcpClient | AsyncModbusSerialClient
        # pymodbus' own response timeout and retries are set out of the way: each request runs
        # under the device's `timeout_ms` (asyncio.timeout below), and a retry is the scheduler's
        # decision, not the library's.
        if isinstance(link, SerialLink):
            self.client = AsyncModbusSerialClient(
                link.port, framer=FramerType.RTU, baudrate=link.baudrate, bytesize=link.bytesize,
                parity=link.parity, stopbits=link.stop_bits, retries=0, reconnect_delay=0,
                timeout=CLIENT_TIMEOUT_S, trace_packet=self._trace,
            )
        else:
            self.client = AsyncModbusTcpClient(
                link.host, port=link.port, retries=0, reconnect_delay=0, timeout=CLIENT_TIMEOUT_S,
                trace_packet=self._trace,
            )

    def __repr__(self) -> str:
        return f"_Link({self.link.key}, state={self.state.value})"

    def _trace(self, sending: bool, data: bytes) -> bytes:
        self.frames.append((sending, bytes(data)))
        return data

    def frames_hex(self) -> str:
        """The last raw frames on this link, for an error message."""
        return " | ".join(("> " if sent else "< ") + data.hex(" ") for sent, data in self.frames)

    def describe(self) -> str:
        """The link, for messages."""
        if isinstance(self.link, SerialLink):
            return f"serial line {self.link.line_id} ({self.link.port})"
        return f"{self.link.host}:{self.link.port}"

    def drop(self, state: LinkState) -> None:
        """Close the connection: a late answer must not pair with the next request (on a serial
        line, reopening the port also discards what is in its input buffer)."""
        self.client.close()
        self.state = state

    async def gap(self) -> None:
        """Wait out the link's silence between an answer and the next request."""
        gap_s = self.link.request_gap_ms / 1000
        if gap_s:
            wait = self.last_io + gap_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)


class ModbusSource:
    """Polls devices over Modbus TCP and RTU, with the coalesced requests of the read plan."""

    def __init__(self) -> None:
        self._links: dict[str, _Link] = {}

    def __repr__(self) -> str:
        return f"ModbusSource(links={list(self._links.values())!r})"

    def link_state(self, device: DevicePlan) -> LinkState:
        """The state of the device's link (DISCONNECTED before its first poll)."""
        link = self._links.get(device.link.key)
        return LinkState.DISCONNECTED if link is None else link.state

    def _link(self, device: DevicePlan) -> _Link:
        key = device.link.key
        link = self._links.get(key)
        if link is not None and link.link != device.link:
            link.drop(LinkState.DISCONNECTED)  # the line's settings changed (a reload)
            link = None
        if link is None:
            link = self._links[key] = _Link(link=device.link)
        return link

    async def _connect(self, link: _Link, device: DevicePlan) -> None:
        if link.client.connected:
            return
        try:
            async with asyncio.timeout(device.timeout_ms / 1000):
                connected = await link.client.connect()
        except TimeoutError:
            connected = False
        except OSError as exc:  # a serial port that is not there
            raise_if_cancelled(exc)
            connected = False
        if not connected:
            link.state = LinkState.FAILED
            raise DeviceConnectionLost(device.device_id, f"cannot open {link.describe()}")
        link.state = LinkState.CONNECTED

    async def _read(self, link: _Link, device: DevicePlan, request: ReadRequest) -> list[int]:
        await self._connect(link, device)
        client = link.client
        readers = {
            RegisterType.COIL: client.read_coils,
            RegisterType.DISCRETE_INPUT: client.read_discrete_inputs,
            RegisterType.HOLDING: client.read_holding_registers,
            RegisterType.INPUT: client.read_input_registers,
        }
        what = f"{describe(request)} from {device.where}"
        try:
            async with asyncio.timeout(device.timeout_ms / 1000):
                response: Any = await readers[request.register_type](
                    request.address, count=request.count, device_id=device.unit_id)
        except TimeoutError as exc:
            link.drop(LinkState.DISCONNECTED)
            raise DeviceTimeout(device.device_id,
                                f"no answer within {device.timeout_ms} ms to {what}") from exc
        except ConnectionException as exc:
            raise_if_cancelled(exc)
            link.drop(LinkState.FAILED)
            raise DeviceConnectionLost(device.device_id, f"connection lost during {what}: {exc}") from exc
        except ModbusIOException as exc:
            raise_if_cancelled(exc)
            link.drop(LinkState.DISCONNECTED)
            raise DeviceTimeout(device.device_id, f"{what} failed: {exc}") from exc
        except ModbusException as exc:
            raise_if_cancelled(exc)
            link.drop(LinkState.FAILED)
            raise DeviceConnectionLost(device.device_id, f"{what}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            error = DeviceException(device.device_id, "", exception_code=code)
            raise DeviceException(
                device.device_id,
                f"exception {code} ({error.exception_name}) in answer to {what}",
                exception_code=code)
        words = ([int(bit) for bit in response.bits[:request.count]]
                 if request.register_type.is_bit else list(response.registers))
        if len(words) != request.count:
            raise DeviceException(device.device_id, f"{len(words)} values in answer to {what}",
                                  exception_code=0)
        return words

    async def poll(self, device: DevicePlan) -> PollOutcome:
        """Read every request of the device in turn. A failed request leaves None in its place
        and flags only its own points; after a lost connection, or two requests in a row without
        an answer, the rest of the poll is given up (the device is not there)."""
        link = self._link(device)
        outcome = PollOutcome(started_unix_ms=int(time.time() * 1000))
        async with link.lock:
            try:
                silent = 0
                given_up: DeviceError | None = None
                for request in device.requests:
                    if given_up is not None:
                        outcome.outcomes.append(RequestOutcome(request, None, given_up, 0.0))
                        continue
                    await link.gap()
                    started = time.monotonic()
                    try:
                        words = await self._read(link, device, request)
                    except DeviceError as exc:
                        elapsed = (time.monotonic() - started) * 1000
                        outcome.outcomes.append(
                            RequestOutcome(request, None, exc, elapsed, link.frames_hex()))
                        silent = 0 if isinstance(exc, DeviceException) else silent + 1
                        if isinstance(exc, DeviceConnectionLost) or silent >= TIMEOUTS_BEFORE_GIVING_UP:
                            # only timeouts and lost connections count towards `silent`
                            given_up = type(exc)(device.device_id, f"not asked after: {exc}")
                    else:
                        silent = 0
                        outcome.outcomes.append(
                            RequestOutcome(request, words, None, (time.monotonic() - started) * 1000))
                    finally:
                        link.last_io = time.monotonic()
            except asyncio.CancelledError:
                # cut off mid-request: a late answer must not meet the next request
                link.drop(LinkState.DISCONNECTED)
                raise
        return outcome

    async def close(self) -> None:
        """Close every link."""
        for link in self._links.values():
            link.drop(LinkState.DISCONNECTED)


def describe(request: ReadRequest) -> str:
    """A request, for messages."""
    unit = "bits" if request.register_type.is_bit else "registers"
    table = request.register_type.value.replace("_", " ")
    return f"read of {request.count} {table} {unit} at {request.address}"

