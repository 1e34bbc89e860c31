"""The collector process: devices polled on their own schedules → one signed block per tick →
buffer → uplink.

One TaskGroup holds the ticker and the uplinks; the ticker holds one polling task per link (a TCP
connection or a serial line), so a slow or silent device holds up only its own line, and only for
its timeout. Each polling task keeps its devices' timetables (`collector.schedule`) and adds their
readings to the tick's pending readings; at every tick boundary of the UTC clock
(`[k * tick, (k + 1) * tick)`) the ticker seals what is pending into one block. A reading is
stamped with the time its poll started and goes into the block of the window in which the poll
ended. A configuration whose digest differs from the chain's is recorded as a signed configuration
block before the first readings taken under it; SIGHUP reloads the configuration the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from collector.buffer import Buffer, SealedBlock, SqliteBuffer
from collector.config import DataType, LoadedPlant, TotalizerSpec, load_plant
from collector.decode import decode_device
from collector.errors import (
    BufferFullError,
    BufferUnavailable,
    CollectorError,
    ConfigError,
    DeviceConnectionLost,
    DeviceError,
    DeviceException,
    DeviceTimeout,
)
from collector.metrics import CONTENT_TYPE
from collector.metrics import render as render_metrics
from collector.modbus_source import DeviceSource, ModbusSource, PollOutcome, RequestOutcome
from collector.plan import DevicePlan, ReadPlan, compile_plan
from collector.receipts import ReceiptStore
from collector.schedule import DeviceSchedule
from collector.totalizer import TotalizerTracker
from collector.uplink import SOFTWARE_VERSION, Uplink
from collector.uplink_grpc import GrpcUplink
from collector.uplink_mqtt import MqttUplink
from proto.backoff import raise_if_cancelled
from proto.credentials import BrokerCredentials, read_secret
from proto.http_endpoint import HttpEndpoint, Response
from proto.keys import load_signing_key
from proto.stackline.v1 import stackline_pb2 as pb
from proto.tlog import leaf_hash
from proto.wire import BlockDraft, ReadingValue, Signer, block_hash, encode_block

__all__ = ["CollectorRuntime", "DeviceHealth", "Reload", "TickStats", "build_runtime", "seal"]

log = logging.getLogger(__name__)

UPLINK_RESTART_S = 5.0
POLL_DEADLINE_FRACTION = 0.8  # of the tick, for `tick()`: what is left seals, signs and stores
IDLE_CHECK_MS = 1000  # a polling task looks at the clock at least this often (clock steps)


def seal(buffer: Buffer, signer: Signer, draft: BlockDraft, created_unix_ms: int) -> SealedBlock:
    """Encode the draft as the block after the buffer's head, sign it, and return it sealed."""
    head = buffer.chain_state()
    payload = encode_block(draft, sequence=head.sequence + 1, previous_hash=head.hash)
    envelope = signer.envelope(payload).SerializeToString()
    return SealedBlock(head.sequence + 1, envelope, block_hash(payload), draft.config_digest,
                       created_unix_ms, leaf_hash(payload))


FAILURE_KINDS: dict[type[DeviceError], str] = {
    DeviceTimeout: "timeout",
    DeviceConnectionLost: "connection",
    DeviceException: "exception",
}


@dataclass(slots=True)
class DeviceHealth:
    """How one device has been answering."""

    polls: int = 0
    failures: int = 0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    exceptions_by_code: dict[int, int] = field(default_factory=dict)
    failed_requests: int = 0
    consecutive_failures: int = 0
    skipped_polls: int = 0  # slots passed over while backing off (recorded as flagged readings)
    backing_off: bool = False
    last_error: str = ""
    last_success_unix_ms: int = 0
    last_poll_ms: float = 0.0  # how long the last poll took

    @property
    def answering(self) -> bool:
        """The last poll succeeded (or none has been made yet)."""
        return self.consecutive_failures == 0

    def record(self, error: DeviceError | None, now_ms: int,
               outcomes: Sequence[RequestOutcome] = ()) -> None:
        """Count one poll."""
        self.polls += 1
        for outcome in outcomes:
            if outcome.error is None:
                continue
            self.failed_requests += 1
            if isinstance(outcome.error, DeviceException):
                code = outcome.error.exception_code
                self.exceptions_by_code[code] = self.exceptions_by_code.get(code, 0) + 1
        if error is None:
            self.consecutive_failures = 0
            self.last_success_unix_ms = now_ms
            return
        kind = FAILURE_KINDS.get(type(error), "error")
        self.failures += 1
        self.failures_by_kind[kind] = self.failures_by_kind.get(kind, 0) + 1
        self.consecutive_failures += 1
        self.last_error = str(error)


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
    config_reloads: int = 0
    refused_reloads: int = 0


@dataclass(frozen=True, slots=True)
class Reload:
    """A configuration loaded again for SIGHUP: what may change while running."""

    plan: ReadPlan
    tick_ms: int
    keep_raw_registers: bool


@dataclass(slots=True)
class _Polling:
    """One generation of polling tasks, for one read plan."""

    stop: asyncio.Event
    tasks: list[asyncio.Task[None]]


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
        reloader: Callable[[], Reload] | None = None,
        receipts: ReceiptStore | None = None,
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
        self.reloader = reloader
        self.receipts = receipts
        self.stats = TickStats()
        self.devices = {device.device_id: DeviceHealth() for device in plan.devices}
        self.schedules: dict[str, DeviceSchedule] = {}
        self.totalizers = _trackers(plan, {})
        self.http_listen = http_listen
        self.http_endpoint: HttpEndpoint | None = None
        for uplink in self.uplinks:
            uplink.status_source = self.status_message
            uplink.status_interval_s = status_interval_s
        self._buffer_full = False
        self._pending: list[ReadingValue] = []
        self._reload_requested = asyncio.Event()
        self._failing: dict[str, str] = {}  # device id → kind of its current failure

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

    # --- polling ----------------------------------------------------------------------------------

    def _log_outcome(self, device: DevicePlan, outcome: PollOutcome) -> None:
        """A device's first failure (or a change in how it fails) is logged loudly, with the
        request and the link's last raw frames; repeats quietly; recovery once."""
        failed = next((o for o in outcome.outcomes if o.error is not None), None)
        device_id = device.device_id
        if failed is None or failed.error is None:
            if self._failing.pop(device_id, None) is not None:
                log.warning("device %s (%s) answers again", device_id, device.where)
            return
        kind = FAILURE_KINDS.get(type(failed.error), "error")
        if self._failing.get(device_id) == kind:
            log.debug("%s (still failing)", failed.error)
            return
        self._failing[device_id] = kind
        letter = "D" if failed.failure_quality == pb.QUALITY_FAULT else "B"
        count = sum(1 for o in outcome.outcomes if o.error is not None)
        log.error("%s; %d of %d request(s) failed, their readings are flagged %s until it "
                  "recovers; last frames: %s", failed.error, count, len(outcome.outcomes), letter,
                  failed.frames or "none")

    async def _poll(self, device: DevicePlan) -> tuple[list[ReadingValue], PollOutcome]:
        """Poll one device once: readings (failed requests flagged), health counted."""
        started_ms = self._now_ms()
        began = time.monotonic()
        outcome = await self.source.poll(device)
        error = outcome.error
        if error is not None:
            self.stats.device_failures += 1
        health = self.devices[device.device_id]
        health.record(error, self._now_ms(), outcome.outcomes)
        health.last_poll_ms = (time.monotonic() - began) * 1000
        self._log_outcome(device, outcome)
        readings = decode_device(device, outcome.responses, started_ms,
                                 keep_raw=self.keep_raw_registers,
                                 failure_quality=outcome.failure_quality,
                                 totalizers={key[0]: t for key, t in self.totalizers.items()})
        return readings, outcome

    def _unexpected_failure(self, device: DevicePlan,
                            exc: Exception) -> tuple[list[ReadingValue], PollOutcome]:
        """A poll that failed in a way nothing handles (a bug): alarm with the traceback, record
        the device's readings as communication loss, and go on polling the line."""
        log.error("ALARM: polling device %s failed unexpectedly; its readings are flagged B and "
                  "the line goes on", device.device_id, exc_info=exc)
        started_ms = self._now_ms()
        error = DeviceConnectionLost(device.device_id, f"unexpected failure: {exc!r}")
        self.stats.device_failures += 1
        self.devices[device.device_id].record(error, started_ms)
        outcome = PollOutcome(started_ms, [RequestOutcome(request, None, error, 0.0)
                                           for request in device.requests])
        return decode_device(device, [None] * len(device.requests), started_ms), outcome

    def _record_skipped(self, device: DevicePlan, slots: list[int], last: PollOutcome | None) -> None:
        """Readings for the slots a backing-off device was not polled in: flagged as its last poll
        failed, so that its absence is on record at its usual rate."""
        quality = (last.failure_quality if last is not None
                   else [pb.QUALITY_COMM_LOSS] * len(device.requests))
        health = self.devices[device.device_id]
        for slot in slots:
            health.skipped_polls += 1
            self._pending.extend(decode_device(device, [None] * len(device.requests), slot,
                                               failure_quality=quality))

    async def _poll_link(self, devices: Sequence[DevicePlan], stop: asyncio.Event) -> None:
        """Poll the devices of one link, each on its own timetable, one at a time."""
        now = self._now_ms()
        schedules = {d.device_id: DeviceSchedule(device=d, now_ms=now) for d in devices}
        self.schedules.update(schedules)
        last: dict[str, PollOutcome] = {}
        while not stop.is_set():
            now = self._now_ms()
            for device in devices:
                schedule = schedules[device.device_id]
                if schedule.realign(now):
                    log.warning("device %s: the clock went back; polling restarts from now",
                                device.device_id)
                self._record_skipped(device, schedule.due_skipped(now), last.get(device.device_id))
            due = [d for d in devices if schedules[d.device_id].next_due_ms <= now]
            if due:
                # earliest slot first; at the same slot, devices that answer go before those
                # that do not, so a silent device's timeout delays nobody who answers
                device = min(due, key=lambda d: (schedules[d.device_id].next_due_ms,
                                                 schedules[d.device_id].silent_polls > 0))
                schedule = schedules[device.device_id]
                due_ms = schedule.next_due_ms
                try:
                    readings, outcome = await self._poll(device)
                except Exception as exc:  # a bug must not stop the line's polling
                    raise_if_cancelled(exc)
                    readings, outcome = self._unexpected_failure(device, exc)
                self._pending.extend(readings)
                last[device.device_id] = outcome
                schedule.polled(answered=outcome.answered, due_ms=due_ms, now_ms=self._now_ms())
                self.devices[device.device_id].backing_off = schedule.backing_off
                continue
            wake = min(s.next_event_ms() for s in schedules.values())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(1, min(wake - now, IDLE_CHECK_MS)) / 1000):
                    await stop.wait()

    def _start_polling(self) -> _Polling:
        links: dict[str, list[DevicePlan]] = {}
        for device in self.plan.devices:
            links.setdefault(device.link.key, []).append(device)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(self._poll_link(devices, stop), name=f"poll-{key}")
                 for key, devices in links.items()]
        return _Polling(stop, tasks)

    async def _stop_polling(self, polling: _Polling, *, grace_s: float) -> None:
        """Let each polling task finish the poll it is in (up to `grace_s`), then stop it."""
        polling.stop.set()
        if grace_s > 0 and polling.tasks:
            await asyncio.wait(polling.tasks, timeout=grace_s)
        for task in polling.tasks:
            task.cancel()
        for task in polling.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _grace_s(self) -> float:
        """The longest one poll can take: every request of the slowest device timing out."""
        return max((d.timeout_ms * len(d.requests) for d in self.plan.devices), default=0) / 1000 + 1

    # --- windows and blocks -----------------------------------------------------------------------

    def seal_window(self, start_ms: int, end_ms: int) -> bool:
        """Store the pending readings as the block of the window [start_ms, end_ms); False when
        there were none or they could not be stored (counted and alarmed)."""
        self.stats.ticks += 1
        if (self.buffer.chain_state().config_digest != self.plan.config_digest
                and not self.record_config_if_changed()):
            # readings are never stored under a configuration the chain has not recorded (the
            # failed configuration block was counted and alarmed)
            self._pending = []
            return False
        readings, self._pending = self._pending, []
        if not readings:
            return False
        self.stats.readings += len(readings)
        self.stats.flagged_readings += sum(1 for r in readings if r.quality != pb.QUALITY_NORMAL)
        return self._store(BlockDraft(
            collector_id=self.plan.collector_id,
            window_start_unix_ms=start_ms,
            window_end_unix_ms=end_ms,
            readings=readings,
            config_digest=self.plan.config_digest,
        ))

    async def tick(self, window_start_ms: int) -> bool:
        """Poll every device once now and store one block for the window starting here: devices
        on one link one after another, links at once, none past the tick's deadline."""
        links: dict[str, list[DevicePlan]] = {}
        for device in self.plan.devices:
            links.setdefault(device.link.key, []).append(device)
        deadline_s = self.tick_ms * POLL_DEADLINE_FRACTION / 1000

        async def poll_link(devices: list[DevicePlan]) -> list[ReadingValue]:
            readings: list[ReadingValue] = []
            for index, device in enumerate(devices):
                started_ms = self._now_ms()
                try:
                    async with asyncio.timeout(deadline_s):
                        readings += (await self._poll(device))[0]
                except TimeoutError:
                    # past the deadline, this device and those after it on the link are recorded
                    # as communication loss; the other links' readings go out on time
                    for late in devices[index:]:
                        error = DeviceTimeout(late.device_id,
                                              f"poll did not finish within {deadline_s * 1000:.0f} ms "
                                              f"of the {self.tick_ms} ms tick")
                        self.stats.device_failures += 1
                        self.devices[late.device_id].record(error, self._now_ms())
                        readings += decode_device(late, [None] * len(late.requests), started_ms)
                    break
            return readings

        results = await asyncio.gather(*(poll_link(devices) for devices in links.values()))
        self._pending.extend(reading for readings in results for reading in readings)
        return self.seal_window(window_start_ms, window_start_ms + self.tick_ms)

    def request_reload(self) -> None:
        """Ask for the configuration to be loaded again (SIGHUP); applied at the next moment the
        ticker can, after the new configuration has been checked."""
        self._reload_requested.set()

    def _load_reload(self) -> Reload | None:
        if self.reloader is None:
            log.warning("configuration reload asked for, but this collector has no configuration "
                        "file to reload")
            return None
        try:
            reload = self.reloader()
        except CollectorError as exc:
            self.stats.refused_reloads += 1
            log.error("configuration reload refused: %s; still running on configuration %s",  # noqa: TRY400 - the message is the whole story
                      exc, self.plan.config_digest.hex()[:16])
            return None
        if (reload.plan == self.plan and reload.tick_ms == self.tick_ms
                and reload.keep_raw_registers == self.keep_raw_registers):
            log.info("configuration reloaded: nothing changed (configuration %s)",
                     self.plan.config_digest.hex()[:16])
            return None
        return reload

    def _apply(self, reload: Reload) -> None:
        self.plan = reload.plan
        self.tick_ms = reload.tick_ms
        self.keep_raw_registers = reload.keep_raw_registers
        self.totalizers = _trackers(reload.plan, self.totalizers)
        self.devices = {d.device_id: self.devices.get(d.device_id, DeviceHealth())
                        for d in reload.plan.devices}
        self.schedules = {}
        self.stats.config_reloads += 1
        log.warning("configuration reloaded: now %s (%d device(s), %d reading(s) per poll of every "
                    "device)", reload.plan.config_digest.hex()[:16], len(reload.plan.devices),
                    reload.plan.reading_count)
        self.record_config_if_changed()

    async def _wait_until(self, end_ms: int, window_start_ms: int) -> str:
        """Sleep until `end_ms`; wake early for a reload request or a clock step back."""
        while True:
            now = self._now_ms()
            if now < window_start_ms - 2 * self.tick_ms:
                return "clock"
            if self._reload_requested.is_set():
                return "reload"
            if now >= end_ms:
                return "tick"
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(end_ms - now, self.tick_ms) / 1000):
                    await self._reload_requested.wait()

    async def _ticker(self) -> None:
        self.record_config_if_changed()
        window_start = self._now_ms() // self.tick_ms * self.tick_ms  # the window in progress
        polling = self._start_polling()
        try:
            while True:
                tick = self.tick_ms
                end = (window_start // tick + 1) * tick
                why = await self._wait_until(end, window_start)
                now = self._now_ms()
                if why == "clock":
                    # the wall clock stepped back (NTP, a box that booted with a wrong clock)
                    log.error("ALARM: the clock went back by %.1f s; windows restart from now and "
                              "may overlap earlier ones", (window_start - now) / 1000)
                    self.seal_window(window_start, end)  # what was read before the step
                    window_start = now // tick * tick
                    continue
                if why == "reload":
                    self._reload_requested.clear()
                    reload = self._load_reload()
                    if reload is None:
                        continue
                    await self._stop_polling(polling, grace_s=self._grace_s())
                    # links reopen with the new settings (a serial line's port or baud rate may
                    # have changed, a device may be gone) at the next poll
                    await self.source.close()
                    now = self._now_ms()
                    self.seal_window(window_start, max(now, window_start))  # under the old config
                    window_start = max(now, window_start)
                    self._apply(reload)
                    polling = self._start_polling()
                    continue
                if now >= end + tick:
                    skipped = (now - end) // tick
                    self.stats.missed_ticks += skipped
                    log.warning("collector fell %d tick(s) behind; their readings go into one block",
                                skipped)
                    end += skipped * tick
                self.seal_window(window_start, end)
                window_start = end
        finally:
            await self._stop_polling(polling, grace_s=0)
            if self._pending:
                # stopping: what was read in the window so far is sealed, not dropped
                self.seal_window(window_start, max(self._now_ms(), window_start))

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
                # the ticker seals the window in progress as it stops: wait for that block, so
                # that the drain below sends it too
                await asyncio.wait([ticker])
                if uplinks:
                    await self._drain(drain_timeout_s)
                for task in uplinks:
                    task.cancel()
        finally:
            if endpoint is not None:
                endpoint.stop()
            await self.source.close()
            if self.receipts is not None:
                self.receipts.close()
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


_TrackerKey = tuple[str, TotalizerSpec, DataType, float]
_Trackers = dict[_TrackerKey, TotalizerTracker]


def _trackers(plan: ReadPlan, old: _Trackers) -> _Trackers:
    """A tracker per totalizer point, keyed by what gives its counts their meaning: a point whose
    meaning did not change across a reload keeps counting from its last reading."""
    trackers: _Trackers = {}
    for device in plan.devices:
        for point in device.points:
            if point.totalizer is None:
                continue
            key = (point.point_id, point.totalizer, point.data_type, point.scale)
            trackers[key] = old.get(key) or TotalizerTracker(
                spec=point.totalizer, data_type=point.data_type, scale=point.scale)
    return trackers


# what SIGHUP may change; the rest of the collector section needs a restart
RELOADABLE_COLLECTOR_FIELDS = frozenset({"tick_ms", "keep_raw_registers"})


def reloader_for(plant: LoadedPlant) -> Callable[[], Reload]:
    """A function that loads the plant's configuration file again and checks it: the whole
    configuration, and that nothing changed that needs a restart."""
    running = plant.config.collector

    def reload() -> Reload:
        fresh = load_plant(plant.source)
        plan = compile_plan(fresh)
        collector = fresh.config.collector
        for name in type(collector).model_fields:
            if name not in RELOADABLE_COLLECTOR_FIELDS and getattr(collector, name) != getattr(running, name):
                raise ConfigError(str(plant.source), f"collector.{name}",
                                  "changed, which needs a restart of the collector (only the plant, "
                                  "serial_lines, devices, collector.tick_ms and "
                                  "collector.keep_raw_registers reload on SIGHUP)")
        return Reload(plan=plan, tick_ms=collector.tick_ms, keep_raw_registers=collector.keep_raw_registers)
    return reload


def build_runtime(plant: LoadedPlant) -> CollectorRuntime:
    """Wire a runtime from a loaded plant configuration: key, buffer, Modbus source, uplink."""
    plan = compile_plan(plant)
    section = plant.config.collector
    signer = Signer(signing_key=load_signing_key(plant.resolve(section.key_file)))
    buffer_path = Path(plant.resolve(section.buffer.path))
    buffer = SqliteBuffer(path=buffer_path, max_bytes=section.buffer.max_bytes)
    log_key = section.log_key()
    if log_key is None:
        log.warning("receipts from the gateway are kept but not verified: set "
                    "collector.gateway_log_key to the gateway's log key (the gateway logs it at "
                    "start: 'checkpoints verify with <name>+<hex>+<base64>')")
    receipts = ReceiptStore(path=buffer_path, leaves=buffer, key=log_key)
    wakeup, acked = asyncio.Event(), asyncio.Event()
    uplinks: list[Uplink] = []
    if section.uplink.grpc is not None:
        uplinks.append(GrpcUplink(config=section.uplink.grpc, collector_id=plan.collector_id,
                                  key_id=signer.key_id, buffer=buffer, wakeup=wakeup, acked=acked,
                                  receipts=receipts))
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
                                  buffer=buffer, wakeup=wakeup, acked=acked, receipts=receipts))
    return CollectorRuntime(
        plan=plan, signer=signer, buffer=buffer, source=ModbusSource(), reloader=reloader_for(plant),
        tick_ms=section.tick_ms, keep_raw_registers=section.keep_raw_registers,
        uplinks=uplinks, wakeup=wakeup, acked=acked, status_interval_s=section.status_interval_s,
        http_listen=section.http.listen if section.http else None, receipts=receipts,
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
