"""The commissioning table (collector/check.py): what `stackline collector check` prints for
devices that answered, answered in part, or not at all. Pure: the poll outcomes are built by hand
as collector/modbus_source.py builds them, and decoded as `check_plan` decodes them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence

from collector.check import DeviceCheck, check_plan, render_json, render_table
from collector.config import load_plant
from collector.decode import decode_device
from collector.errors import DeviceConnectionLost, DeviceError, DeviceException, DeviceTimeout
from collector.modbus_source import PollOutcome, RequestOutcome, describe
from collector.plan import DevicePlan, compile_plan
from tests.conftest import FIRMWARE

T_MS = 1_700_000_000_000
PLAN = compile_plan(load_plant(FIRMWARE / "plants" / "serial-example.yaml"))
GAS, FUEL, CEMS = PLAN.devices  # gas-1: 2 requests, fuel-gas-1: 3, cems-1: 1
HEADERS = ["DEVICE", "POINT", "RAW REGISTERS", "VALUE", "UNIT", "FLAG", "REQUEST"]

# gas-1's first request, input registers 0..11 (the manual's 1..12): so2 35.5, nox 45.2, o2 7.5,
# co -1.2 (0xFFF4), co2 12.2, temperature 120.5 (0x42F10000, bytes swapped), 2 reserved, the
# status word, the alarm word with bit 0 set, the range selector 2
GAS_WORDS = [355, 452, 750, 0xFFF4, 1220, 0xF142, 0x0000, 0, 0, 0, 0x0001, 0x0002]

Result = tuple[list[int] | None, DeviceError | None, float]


def check(device: DevicePlan, results: Sequence[Result]) -> DeviceCheck:
    """A device's check as `check_plan` makes it from the source's outcome."""
    outcome = PollOutcome(started_unix_ms=T_MS)
    for request, (words, error, elapsed_ms) in zip(device.requests, results, strict=True):
        outcome.outcomes.append(RequestOutcome(request, words, error, elapsed_ms))
    return DeviceCheck(device, outcome, decode_device(device, outcome.responses, T_MS,
                                                      failure_quality=outcome.failure_quality))


def what(device: DevicePlan, index: int) -> str:
    return f"{describe(device.requests[index])} from {device.where}"


def gas_partly() -> DeviceCheck:
    """gas-1 answers its measurements, but refuses the serial number's request."""
    refusal = DeviceException(GAS.device_id, f"exception 2 (illegal data address) in answer to "
                                             f"{what(GAS, 1)}", exception_code=2)
    return check(GAS, [(GAS_WORDS, None, 12.5), (None, refusal, 8.0)])


def fuel_ok() -> DeviceCheck:
    return check(FUEL, [([1, 0], None, 3.25), ([0, 1], None, 3.5), ([0] * 14, None, 9.75)])


def cems_silent() -> DeviceCheck:
    timeout = DeviceTimeout(CEMS.device_id, f"no answer within 300 ms to {what(CEMS, 0)}")
    return check(CEMS, [(None, timeout, 300.0)])


def columns(table: str) -> list[tuple[int, int]]:
    """(start, end) of each column, from the dashes under the headers."""
    dashes = table.splitlines()[1]
    spans, start = [], 0
    for run in dashes.split("  "):
        spans.append((start, start + len(run)))
        start += len(run) + 2
    return spans


def cells(line: str, spans: list[tuple[int, int]]) -> list[str]:
    """A row cut at the column offsets; the two spaces between columns must be blank."""
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert line[end:start].strip() == "", f"text between columns at {end}: {line!r}"
    return [line[start:end].strip() for start, end in spans]


def rows(table: str) -> dict[tuple[str, str], list[str]]:
    """(device, point): the row's cells, for every point row of the table."""
    spans = columns(table)
    found = {}
    body = table.split("\n\n", 1)[0].splitlines()[2:]  # the summary follows a blank line
    for line in body:
        if ": FAILED" in line:
            continue
        row = cells(line, spans)
        found[(row[0], row[1])] = row
    return found


# --- the table --------------------------------------------------------------------------------------


def test_every_row_starts_its_columns_at_the_same_offsets() -> None:
    table = render_table([gas_partly(), fuel_ok(), cems_silent()])
    spans = columns(table)
    assert len(spans) == 7
    assert cells(table.splitlines()[0], spans) == HEADERS
    found = rows(table)
    assert len(found) == 10 + 9  # gas-1: status and 9 points; fuel-gas-1: 9 points
    for row in found.values():
        assert len(row) == 7
        assert all(row[index] for index in (0, 1, 2, 3, 5, 6)), row
    # numbers and times right-aligned: every value ends at the column's end
    value_end = spans[3][1]
    for line in table.splitlines()[2:]:
        if line.startswith(("gas-1 ", "fuel-gas-1 ")):
            assert line[value_end - 1] != " ", line


def test_the_rows_show_raw_registers_value_unit_flag_and_request_time() -> None:
    found = rows(render_table([gas_partly()]))
    assert found[("gas-1", "so2")] == ["gas-1", "so2", "0163", "35.5", "mg/m3", "N", "12.5 ms"]
    assert found[("gas-1", "co")] == ["gas-1", "co", "fff4", "-1.2", "mg/m3", "N", "12.5 ms"]
    assert found[("gas-1", "temperature")] == ["gas-1", "temperature", "f142 0000", "120.5", "degC",
                                               "N", "12.5 ms"]
    assert found[("gas-1", "status")] == ["gas-1", "status", "0000", "0", "bits", "N", "12.5 ms"]
    assert found[("gas-1", "so2_range")][2:4] == ["0002", "2"]


def test_an_unreachable_device_is_one_failed_line_naming_it_and_why() -> None:
    table = render_table([fuel_ok(), cems_silent()])
    lines = [line for line in table.splitlines() if "cems-1" in line]
    assert len(lines) == 2  # its FAILED line and the summary
    failed = lines[0]
    assert failed.startswith("cems-1: FAILED")
    assert "unit 1 at 127.0.0.1:15030" in failed
    assert "did not answer" in failed
    assert "no answer within 300 ms" in failed
    assert not any(device == "cems-1" for device, _ in rows(table))  # no rows of its points


def test_a_lost_connection_is_named_as_such() -> None:
    lost = DeviceConnectionLost(CEMS.device_id, "cannot open 127.0.0.1:15030")
    table = render_table([check(CEMS, [(None, lost, 0.4)])])
    failed, = (line for line in table.splitlines() if line.startswith("cems-1"))
    assert failed.endswith("failed: cannot open 127.0.0.1:15030")


def test_a_partial_failure_shows_the_request_that_failed_and_flags_only_its_points() -> None:
    table = render_table([gas_partly()])
    failed = [line for line in table.splitlines() if line.startswith("gas-1: FAILED")]
    assert len(failed) == 1
    assert failed[0].startswith("gas-1: FAILED request 2 of 2 (read of 8 input registers at 100) "
                                "failed: exception 2 (illegal data address)")
    found = rows(table)
    serial = found[("gas-1", "serial_number")]
    assert (serial[2], serial[3], serial[5], serial[6]) == ("-", "-", "D", "failed")
    assert {row[5] for key, row in found.items() if key[1] != "serial_number"} == {"N"}
    assert {row[6] for key, row in found.items() if key[1] != "serial_number"} == {"12.5 ms"}


def test_the_summary_names_the_failed_devices() -> None:
    table = render_table([gas_partly(), fuel_ok(), cems_silent()])
    summary = table.splitlines()[-1]
    assert summary.startswith("1 of 3 device(s) read cleanly; FAILED: gas-1, cems-1.")
    assert "fuel-gas-1" not in summary


def test_the_summary_when_everything_answered() -> None:
    table = render_table([fuel_ok()])
    assert "FAILED" not in table
    assert table.splitlines()[-1] == "all 1 device(s) answered: 9 readings, every request answered"


def test_a_string_point_shows_its_text_quoted() -> None:
    serial = [0x534C, 0x4741, 0x2D32, 0x3032, 0x342D, 0x3030, 0x3031, 0x3733]  # SLGA-2024-000173
    table = render_table([check(GAS, [(GAS_WORDS, None, 1.0), (serial, None, 1.0)])])
    assert rows(table)[("gas-1", "serial_number")][3] == '"SLGA-2024-000173"'


def test_a_float_register_holding_nan_is_not_shown_as_text() -> None:
    words = [0x7FC0, 0x0000, *[0] * 17]  # so2 is a quiet NaN: the analyzer has no value
    so2 = rows(render_table([check(CEMS, [(words, None, 5.0)])]))[("cems-1", "so2")]
    assert (so2[2], so2[5]) == ("7fc0 0000", "D")
    assert so2[3] in ("-", "nan", "NaN")


# --- JSON ---------------------------------------------------------------------------------------------


def test_render_json_has_the_same_content_for_scripts() -> None:
    document = json.loads(render_json([gas_partly(), fuel_ok(), cems_silent()]))
    assert document["ok"] is False
    by_device = {entry["device"]: entry for entry in document["devices"]}
    assert list(by_device) == ["gas-1", "fuel-gas-1", "cems-1"]
    assert [by_device[d]["ok"] for d in by_device] == [False, True, False]
    assert by_device["cems-1"]["where"] == "unit 1 at 127.0.0.1:15030"
    assert by_device["cems-1"]["points"] == []
    assert len(by_device["cems-1"]["problems"]) == 1
    assert "no answer within 300 ms" in by_device["cems-1"]["problems"][0]
    assert by_device["gas-1"]["problems"][0].startswith("request 2 of 2 (read of 8 input registers")
    so2 = next(p for p in by_device["gas-1"]["points"] if p["point"] == "so2")
    assert so2 == {"device": "gas-1", "point": "so2", "raw": "0163", "value": "35.5",
                   "unit": "mg/m3", "flag": "N", "request": "12.5 ms"}
    assert by_device["fuel-gas-1"]["problems"] == []
    assert len(by_device["fuel-gas-1"]["points"]) == 9


def test_render_json_ok_when_everything_answered() -> None:
    assert json.loads(render_json([fuel_ok()]))["ok"] is True


# --- check_plan over a source that answers from memory -----------------------------------------------


class _Answers:
    """A DeviceSource with prepared outcomes; records the order it was asked in."""

    def __init__(self, checks: Sequence[DeviceCheck]) -> None:
        self.outcomes = {c.device.device_id: c.outcome for c in checks}
        self.asked: list[str] = []

    async def poll(self, device: DevicePlan) -> PollOutcome:
        self.asked.append(device.device_id)
        return self.outcomes[device.device_id]

    async def close(self) -> None:
        return None


async def test_check_plan_reads_every_device_once_and_keeps_the_plan_order() -> None:
    source = _Answers([gas_partly(), fuel_ok(), cems_silent()])
    seen: list[str] = []
    checks = await check_plan(PLAN, source, progress=lambda c: seen.append(c.device.device_id))
    assert [c.device.device_id for c in checks] == ["gas-1", "fuel-gas-1", "cems-1"]
    assert sorted(source.asked) == sorted(seen) == ["cems-1", "fuel-gas-1", "gas-1"]
    # the two devices of serial line line-1 are asked one after the other, in plan order
    assert [d for d in source.asked if d != "cems-1"] == ["gas-1", "fuel-gas-1"]
    assert [c.failed for c in checks] == [True, False, True]
    assert [c.unreachable for c in checks] == [False, False, True]
    assert render_table(checks) == render_table([gas_partly(), fuel_ok(), cems_silent()])
