"""The collector process: tick → poll every device → one signed block → buffer → uplink.

One TaskGroup holds the ticker and the uplink. The ticker aligns windows to the UTC clock
(`[k * tick, (k + 1) * tick)`), polls all devices at once, and seals one block per tick; a device
that fails still yields readings, flagged. A configuration whose digest differs from the chain's
is recorded as a signed configuration block before the first readings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from collector.buffer import Buffer, SealedBlock, SqliteBuffer
from collector.config import LoadedPlant
from collector.decode import decode_device
from collector.errors import (
    BufferFullError,
    BufferUnavailable,
    ConfigError,
    DeviceConnectionLost,
    DeviceError,
    DeviceException,
    DeviceTimeout,
)
from collector.metrics import CONTENT_TYPE
from collector.metrics import render as render_metrics
from collector.modbus_source import DeviceSource, ModbusTcpSource
from collector.plan import DevicePlan, ReadPlan, compile_plan
from collector.uplink import SOFTWARE_VERSION, Uplink
from collector.uplink_grpc import GrpcUplink
from collector.uplink_mqtt import MqttUplink
from proto.backoff import raise_if_cancelled
from proto.credentials import BrokerCredentials, read_secret
from proto.http_endpoint import HttpEndpoint, Response
from proto.keys import load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.wire import BlockDraft, ReadingValue, Signer, block_hash, encode_block

__all__ = ["CollectorRuntime", "DeviceHealth", "TickStats", "build_runtime", "seal"]

log = logging.getLogger(__name__)

UPLINK_RESTART_S = 5.0
POLL_DEADLINE_FRACTION = 0.8  # of the tick: what is left seals, signs and stores the block


def seal(buffer: Buffer, signer: Signer, draft: BlockDraft, created_unix_ms: int) -> SealedBlock:
    """Encode the draft as the block after the buffer's head, sign it, and return it sealed."""
    head = buffer.chain_state()
    payload = encode_block(draft, sequence=head.sequence + 1, previous_hash=head.hash)
    envelope = signer.envelope(payload).SerializeToString()
    return SealedBlock(head.sequence + 1, envelope, block_hash(payload), draft.config_digest,
                       created_unix_ms)


@dataclass(slots=True)
class DeviceHealth:
    """How one device has been answering."""

    polls: int = 0
    failures: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_error: str = ""
    last_success_unix_ms: int = 0

    @property
    def answering(self) -> bool:
        """The last poll succeeded (or none has been made yet)."""
        return self.consecutive_failures == 0

    def record(self, error: DeviceError | None, now_ms: int) -> None:
        """Count one poll."""
        self.polls += 1
        if error is None:
            self.consecutive_failures = 0
            self.last_success_unix_ms = now_ms
            return
        kind = FAILURE_KINDS.get(type(error), "error")
        self.failures += 1
        self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1
        self.consecutive_failures += 1
        self.last_error = str(error)


FAILURE_KINDS: dict[type[DeviceError], str] = {
    DeviceTimeout: "timeout",
    DeviceConnectionLost: "connection",
    DeviceException: "exception",
}


@dataclass(slots=True)
class TickStats:
    """What the ticker has done."""

    ticks: int = 0
    blocks: int = 0
    readings: int = 0
    flagged_readings: int = 0
    missed_ticks: int = 0
    unbuffered_ticks: int = 0
    device_failures: int = 0


class CollectorRuntime:
    """Runs one plant's collector until cancelled."""

    def __init__(
        self,
        *,
        plan: ReadPlan,
        signer: Signer,
        buffer: Buffer,
        source: DeviceSource,
        tick_ms: int,
        keep_raw_registers: bool = True,
        uplinks: list[Uplink] | None = None,
        wakeup: asyncio.Event | None = None,
        acked: asyncio.Event | None = None,
        status_interval_s: float = 5.0,
        http_listen: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.plan = plan
        self.signer = signer
        self.buffer = buffer
        self.source = source
        self.tick_ms = tick_ms
        self.keep_raw_registers = keep_raw_registers
        self.uplinks = uplinks or []
        self.wakeup = wakeup or asyncio.Event()
        self.acked = acked or asyncio.Event()
        self.clock = clock
        self.stats = TickStats()
        self.devices = {device.device_id: DeviceHealth() for device in plan.devices}
        self.http_listen = http_listen
        self.http_endpoint: HttpEndpoint | None = None
        for uplink in self.uplinks:
            uplink.status_source = self.status_message
            uplink.status_interval_s = status_interval_s
        self._buffer_full = False

    def __repr__(self) -> str:
        return (f"CollectorRuntime(collector={self.plan.collector_id!r}, "
                f"head={self.buffer.chain_state().sequence}, uplinks={self.uplinks!r})")

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)

    def _store(self, draft: BlockDraft) -> bool:
        full: BufferFullError | BufferUnavailable | None = None
        try:
            self.buffer.append(seal(self.buffer, self.signer, draft, self._now_ms()))
        except (BufferFullError, BufferUnavailable) as exc:
            full = exc
        if full is not None:
            self.stats.unbuffered_ticks += 1
            if not self._buffer_full:
                remedy = ("until the gateway acknowledges older blocks"
                          if isinstance(full, BufferFullError)
                          else "until the buffer's disk can be written again")
                log.error("ALARM: %s; new readings are not being recorded %s (nothing buffered "
                          "is dropped)", full, remedy)
            self._buffer_full = True
            return False
        if self._buffer_full:
            log.warning("buffer has room again after %d unrecorded ticks",
                        self.stats.unbuffered_ticks)
        self._buffer_full = False
        self.stats.blocks += 1
        self.wakeup.set()
        return True

    def record_config_if_changed(self) -> bool:
        """Append a configuration block when the chain does not already carry this config."""
        if self.buffer.chain_state().config_digest == self.plan.config_digest:
            return False
        now = self._now_ms()
        draft = BlockDraft(
            collector_id=self.plan.collector_id, window_start_unix_ms=now,
            window_end_unix_ms=now, readings=(), config_digest=self.plan.config_digest,
            kind=pb.BLOCK_KIND_CONFIG, config_document=self.plan.config_document,
        )
        stored = self._store(draft)
        if stored:
            log.info("recorded configuration %s in block %d",
                     self.plan.config_digest.hex()[:16], self.buffer.chain_state().sequence)
        return stored

    async def _poll_device(self, device: DevicePlan) -> list[ReadingValue]:
        started_ms = self._now_ms()
        # No device may hold up the block of the tick: past the deadline its readings are
        # recorded as communication loss and the other devices' readings go out on time.
        deadline_s = self.tick_ms * POLL_DEADLINE_FRACTION / 1000
        try:
            async with asyncio.timeout(deadline_s):
                responses, error = await self.source.poll(device)
        except TimeoutError:
            responses = [None] * len(device.requests)
            error = DeviceTimeout(device.device_id,
                                  f"poll did not finish within {deadline_s * 1000:.0f} ms of the "
                                  f"{self.tick_ms} ms tick")
        if error is not None:
            self.stats.device_failures += 1
        self.devices[device.device_id].record(error, self._now_ms())
        return decode_device(device, responses, started_ms, keep_raw=self.keep_raw_registers)

    async def tick(self, window_start_ms: int) -> bool:
        """Poll every device once and store one block for the window starting here."""
        if (self.buffer.chain_state().config_digest != self.plan.config_digest
                and not self.record_config_if_changed()):
            # readings are never stored under a configuration the chain has not recorded
            self.stats.ticks += 1
            return False
        results = await asyncio.gather(*(self._poll_device(d) for d in self.plan.devices))
        readings = [reading for device_readings in results for reading in device_readings]
        self.stats.ticks += 1
        self.stats.readings += len(readings)
        self.stats.flagged_readings += sum(1 for r in readings if r.quality != pb.QUALITY_NORMAL)
        draft = BlockDraft(
            collector_id=self.plan.collector_id,
            window_start_unix_ms=window_start_ms,
            window_end_unix_ms=window_start_ms + self.tick_ms,
            readings=readings,
            config_digest=self.plan.config_digest,
        )
        return self._store(draft)

    async def _ticker(self) -> None:
        self.record_config_if_changed()
        tick = self.tick_ms
        next_start = (self._now_ms() // tick + 1) * tick
        while True:
            now = self._now_ms()
            if now < next_start - 2 * tick:
                # the wall clock stepped back (NTP, a box that booted with a wrong clock)
                log.error("ALARM: the clock went back by %.1f s; windows restart from now and "
                          "may overlap earlier ones", (next_start - now) / 1000)
                next_start = (now // tick + 1) * tick
                continue
            if now < next_start:
                # sleep in short steps so that a clock step is noticed within a tick
                await asyncio.sleep(min(next_start - now, tick) / 1000)
                continue
            await self.tick(next_start)
            following = next_start + tick
            now = self._now_ms()
            if now >= following + tick:
                skipped = (now - following) // tick
                self.stats.missed_ticks += skipped
                log.warning("collector fell %d tick(s) behind; the windows in between are empty",
                            skipped)
                following += skipped * tick
            next_start = following

    async def run_until(self, stop: asyncio.Event, *, drain_timeout_s: float = 5.0) -> None:
        """Tick and stream until `stop` is set; then stop ticking and give the uplinks up to
        `drain_timeout_s` to have the gateway acknowledge what is buffered. What is still
        unacknowledged stays in the buffer for the next run."""
        endpoint = self._start_http()
        try:
            async with asyncio.TaskGroup() as group:
                ticker = group.create_task(self._ticker(), name="ticker")
                uplinks = [group.create_task(self._supervise(uplink), name=f"uplink-{index}")
                           for index, uplink in enumerate(self.uplinks)]
                await stop.wait()
                ticker.cancel()
                if uplinks:
                    await self._drain(drain_timeout_s)
                for task in uplinks:
                    task.cancel()
        finally:
            if endpoint is not None:
                endpoint.stop()
            await self.source.close()
            self.buffer.close()

    def _start_http(self) -> HttpEndpoint | None:
        if self.http_listen is None:
            return None

        async def metrics() -> Response:
            return Response(200, CONTENT_TYPE, render_metrics(self))

        async def healthz() -> Response:
            healthy = self.stats.ticks > 0 or self.buffer.chain_state().sequence > 0
            body = json.dumps({"ok": healthy, "collector_id": self.plan.collector_id,
                               "chain_head": self.buffer.chain_state().sequence,
                               "uplinks": [u.state.value for u in self.uplinks]})
            return Response(200 if healthy else 503, "application/json", body.encode())

        endpoint = HttpEndpoint(address=self.http_listen,
                                routes={"/metrics": metrics, "/healthz": healthz})
        endpoint.start(asyncio.get_running_loop())
        self.http_endpoint = endpoint
        return endpoint

    def status_message(self) -> pb.CollectorStatus:
        """This collector's health, as the uplinks report it to the gateway."""
        depth = self.buffer.depth()
        chain = self.buffer.chain_state()
        return pb.CollectorStatus(
            collector_id=self.plan.collector_id,
            plant_id=self.plan.plant_id,
            time_unix_ms=self._now_ms(),
            chain_head=chain.sequence,
            acknowledged_through=depth.acknowledged_through,
            buffer_blocks=depth.blocks,
            buffer_bytes=depth.bytes,
            oldest_unacknowledged_unix_ms=depth.oldest_created_unix_ms or 0,
            unrecorded_ticks=self.stats.missed_ticks + self.stats.unbuffered_ticks,
            devices=[pb.DeviceStatus(
                device_id=device_id, answering=health.answering, polls=health.polls,
                failures=health.failures, consecutive_failures=health.consecutive_failures,
                last_error=health.last_error, last_success_unix_ms=health.last_success_unix_ms,
            ) for device_id, health in self.devices.items()],
            software_version=SOFTWARE_VERSION,
        )

    @staticmethod
    async def _supervise(uplink: Uplink) -> None:
        """Run an uplink; if it fails in a way it does not handle itself, log it and start it
        again: the ticker must go on recording, and the buffer keeps every block meanwhile."""
        while True:
            try:
                await uplink.run()
            except Exception as exc:
                raise_if_cancelled(exc)
                log.exception("ALARM: uplink %r failed unexpectedly; restarting it in %.0f s",
                              uplink, UPLINK_RESTART_S)
            await asyncio.sleep(UPLINK_RESTART_S)

    async def _drain(self, timeout_s: float) -> None:
        head = self.buffer.chain_state().sequence
        try:
            async with asyncio.timeout(timeout_s):
                while self.buffer.acknowledged_through() < head:
                    self.acked.clear()
                    if self.buffer.acknowledged_through() >= head:
                        break
                    await self.acked.wait()
        except TimeoutError:
            depth = self.buffer.depth()
            log.warning("stopping with %d block(s) unacknowledged; they stay buffered and are "
                        "sent on the next run", depth.blocks)
        else:
            log.info("stopped with every block acknowledged (through sequence %d)", head)


def build_runtime(plant: LoadedPlant) -> CollectorRuntime:
    """Wire a runtime from a loaded plant configuration: key, buffer, Modbus source, uplink."""
    plan = compile_plan(plant)
    section = plant.config.collector
    signer = Signer(signing_key=load_signing_key(plant.resolve(section.key_file)))
    buffer = SqliteBuffer(path=Path(plant.resolve(section.buffer.path)),
                          max_bytes=section.buffer.max_bytes)
    wakeup, acked = asyncio.Event(), asyncio.Event()
    uplinks: list[Uplink] = []
    if section.uplink.grpc is not None:
        uplinks.append(GrpcUplink(config=section.uplink.grpc, collector_id=plan.collector_id,
                                  key_id=signer.key_id, buffer=buffer, wakeup=wakeup, acked=acked))
    if section.uplink.mqtt is not None:
        mqtt = section.uplink.mqtt
        field = "collector.uplink.mqtt"
        credentials = BrokerCredentials(
            password=_first_line(plant.resolve(mqtt.password_file)) if mqtt.password_file else None,
            ca_file=_existing(plant, mqtt.tls.ca_file if mqtt.tls else None, f"{field}.tls.ca_file"),
            cert_file=_existing(plant, mqtt.tls.cert_file if mqtt.tls else None,
                                f"{field}.tls.cert_file"),
            key_file=_existing(plant, mqtt.tls.key_file if mqtt.tls else None,
                               f"{field}.tls.key_file"),
        )
        try:
            credentials.tls_context()
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(str(plant.source), f"{field}.tls",
                              f"the TLS files do not load: {exc}") from exc
        uplinks.append(MqttUplink(config=mqtt, credentials=credentials,
                                  collector_id=plan.collector_id, key_id=signer.key_id,
                                  buffer=buffer, wakeup=wakeup, acked=acked))
    return CollectorRuntime(
        plan=plan, signer=signer, buffer=buffer, source=ModbusTcpSource(),
        tick_ms=section.tick_ms, keep_raw_registers=section.keep_raw_registers,
        uplinks=uplinks, wakeup=wakeup, acked=acked, status_interval_s=section.status_interval_s,
        http_listen=section.http.listen if section.http else None,
    )


def _existing(plant: LoadedPlant, relative: str | None, field: str) -> str | None:
    if relative is None:
        return None
    path = plant.resolve(relative)
    if not path.is_file():
        raise ConfigError(str(plant.source), field, f"no such file: {path}")
    return str(path)


def _first_line(path: Path) -> str:
    try:
        return read_secret(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(path), "", f"cannot read a password from this file: {exc}") from exc
