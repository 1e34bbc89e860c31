"""Commissioning: read every point of every device once and show what came back.

`stackline collector check --config PLANT.yaml` prints one row per point (device, point, raw
registers, decoded value, unit, flag, request time) and a line for each device or request that
failed and why. Devices on one link are read one after another, links at once, exactly as the
running collector reads them; nothing is signed or stored.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from collector.config import DataType
from collector.decode import decode_device
from collector.modbus_source import DeviceSource, PollOutcome, describe
from collector.plan import DevicePlan, ReadPlan
from proto.wire import FLAG_LETTERS, ReadingValue

__all__ = ["DeviceCheck", "check_plan", "render_json", "render_table"]

HEADERS = ("DEVICE", "POINT", "RAW REGISTERS", "VALUE", "UNIT", "FLAG", "REQUEST")


@dataclass(slots=True)
class DeviceCheck:
    """One device's single read: its readings and what failed."""

    device: DevicePlan
    outcome: PollOutcome
    readings: list[ReadingValue] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Any request failed."""
        return self.outcome.error is not None

    @property
    def unreachable(self) -> bool:
        """No request got an answer at all."""
        return not self.outcome.answered

    def problems(self) -> list[str]:
        """One line per failed request, saying why."""
        lines = []
        total = len(self.outcome.outcomes)
        for index, outcome in enumerate(self.outcome.outcomes):
            if outcome.error is None:
                continue
            reason = str(outcome.error).removeprefix(f"device {self.device.device_id}: ")
            lines.append(f"request {index + 1} of {total} ({describe(outcome.request)}) failed: {reason}")
        return lines


async def check_plan(plan: ReadPlan, source: DeviceSource, *,
                     progress: Callable[[DeviceCheck], None] | None = None) -> list[DeviceCheck]:
    """Read every device once, in plan order in the result."""
    links: dict[str, list[DevicePlan]] = {}
    for device in plan.devices:
        links.setdefault(device.link.key, []).append(device)
    results: dict[str, DeviceCheck] = {}

    async def read_link(devices: list[DevicePlan]) -> None:
        for device in devices:
            outcome = await source.poll(device)
            readings = decode_device(device, outcome.responses, outcome.started_unix_ms,
                                     failure_quality=outcome.failure_quality)
            check = DeviceCheck(device, outcome, readings)
            results[device.device_id] = check
            if progress is not None:
                progress(check)

    await asyncio.gather(*(read_link(devices) for devices in links.values()))
    return [results[device.device_id] for device in plan.devices]


def _value(reading: ReadingValue, is_text: bool) -> str:
    if is_text and reading.raw_registers:
        return json.dumps(reading.text, ensure_ascii=False)
    if math.isnan(reading.value):
        return "-"
    return f"{reading.value:.6g}"


def _rows(check: DeviceCheck) -> list[tuple[str, ...]]:
    device = check.device
    units = {point.point_id: point.unit for point in device.points}
    texts = {point.point_id for point in device.points if point.data_type is DataType.STRING}
    request_of = {point.point_id: point.request_index for point in device.points}
    if device.status is not None and device.status_point_id is not None:
        request_of[device.status_point_id] = device.status.request_index
        units[device.status_point_id] = "bits"
    rows: list[tuple[str, ...]] = []
    for reading in check.readings:
        outcome = check.outcome.outcomes[request_of[reading.point_id]]
        raw = " ".join(f"{word:04x}" for word in reading.raw_registers) or "-"
        value = _value(reading, reading.point_id in texts)
        rows.append((device.device_id, reading.point_id.rsplit("/", 1)[-1], raw, value,
                     units.get(reading.point_id, ""), FLAG_LETTERS.get(reading.quality, "?"),
                     f"{outcome.elapsed_ms:.1f} ms" if outcome.error is None else "failed"))
    return rows


def render_table(checks: Sequence[DeviceCheck]) -> str:
    """The commissioning table, columns aligned; failed devices and requests on lines of their own."""
    body: list[tuple[str, ...] | str] = []
    for check in checks:
        if check.unreachable:
            reason = check.problems()[0] if check.problems() else "no answer"
            body.append(f"{check.device.device_id}: FAILED, {check.device.where} did not answer: {reason}")
            continue
        body.extend(_rows(check))
        body.extend(f"{check.device.device_id}: FAILED {line}" for line in check.problems())
    widths = [len(h) for h in HEADERS]
    for row in body:
        if isinstance(row, tuple):
            widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        # numbers and times right-aligned, text left-aligned
        parts = [cell.rjust(w) if i in (3, 6) else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    out = [line(HEADERS), line(["-" * w for w in widths])]
    out += [row if isinstance(row, str) else line(row) for row in body]
    failed = [c.device.device_id for c in checks if c.failed]
    points = sum(len(c.readings) for c in checks)
    if failed:
        out.append(f"\n{len(checks) - len(failed)} of {len(checks)} device(s) read cleanly; FAILED: "
                   f"{', '.join(failed)}. Check the wiring, the address (unit id, host:port or serial "
                   f"settings) and the register map of each, then run the check again.")
    else:
        out.append(f"\nall {len(checks)} device(s) answered: {points} readings, every request "
                   f"answered")
    return "\n".join(out)


def render_json(checks: Sequence[DeviceCheck]) -> str:
    """The same as a JSON document, for scripts."""
    devices: list[dict[str, Any]] = []
    for check in checks:
        rows: list[tuple[str, ...]] = [] if check.unreachable else _rows(check)
        devices.append({
            "device": check.device.device_id,
            "where": check.device.where,
            "ok": not check.failed,
            "problems": check.problems(),
            "points": [dict(zip(("device", "point", "raw", "value", "unit", "flag", "request"), row,
                                strict=True)) for row in rows],
        })
    return json.dumps({"ok": not any(c.failed for c in checks), "devices": devices}, indent=2)

