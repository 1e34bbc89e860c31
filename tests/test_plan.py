"""The read planner (collector/plan.py): which Modbus requests a device's register map becomes.

Golden cases: a register map goes in, and out come the requests (table, wire address, count) and
where each point sits in them, or a ConfigError naming the field to fix. A property checks the
planner against an independent brute-force minimum over random layouts: the fewest requests is what
the issue asks for, and a point outside its request would decode someone else's registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.config import (
    DataType,
    DeviceProfile,
    LoadedDevice,
    LoadedPlant,
    PlantConfig,
    RegisterType,
    load_plant,
)
from collector.errors import ConfigError
from collector.plan import DevicePlan, ReadRequest, compile_plan
from tests.conftest import DEMO_PLANT

COIL, DISCRETE, HOLDING, INPUT = (RegisterType.COIL, RegisterType.DISCRETE_INPUT,
                                  RegisterType.HOLDING, RegisterType.INPUT)
PROFILE_PATH = Path("/plant/profiles/test-profile.yaml")
PLANT = {
    "plant": {"id": "p"},
    "collector": {"id": "c", "key_file": "c.key", "uplink": {"grpc": {"target": "127.0.0.1:1"}}},
    "devices": [{"id": "d", "profile": str(PROFILE_PATH), "emission_unit": "u",
                 "tcp": {"host": "127.0.0.1"}}],
}


def point(name: str, address: int, data_type: str = "uint16", **extra: Any) -> dict[str, Any]:
    return {"name": name, "address": address, "data_type": data_type, "quantity": "q", "unit": "u",
            **extra}


def plan_of(points: list[dict[str, Any]], **profile: Any) -> DevicePlan:
    """The plan of one device with this register map, built in memory."""
    config = PlantConfig.model_validate(PLANT)
    loaded = LoadedDevice(config=config.devices[0], profile_path=PROFILE_PATH, poll_interval_ms=1000,
                          profile=DeviceProfile.model_validate({"name": "t", **profile, "points": points}))
    return compile_plan(LoadedPlant(source=Path("/plant/plant.yaml"), config=config,
                                    devices=(loaded,))).devices[0]


def refused(points: list[dict[str, Any]], **profile: Any) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        plan_of(points, **profile)
    assert caught.value.source == str(PROFILE_PATH)
    return caught.value


def where(device: DevicePlan) -> dict[str, tuple[int, int]]:
    """Point name: (request index, offset in the request's response)."""
    return {p.name: (p.request_index, p.offset) for p in device.points}


# --- tables ---------------------------------------------------------------------------------------------


def test_coils_and_discrete_inputs_are_read_in_bit_requests_of_their_own() -> None:
    device = plan_of([
        point("r0", 0), point("r1", 1),
        *(point(f"c{i}", i, "bool", register_type="coil") for i in range(10)),
        point("d0", 0, "bool", register_type="discrete_input"),
        point("d1", 1, "bool", register_type="discrete_input"),
        point("i0", 0, register_type="input"),
    ])
    # same addresses, four tables: four requests; coils counted in bits
    assert device.requests == (ReadRequest(COIL, 0, 10), ReadRequest(DISCRETE, 0, 2),
                               ReadRequest(HOLDING, 0, 2), ReadRequest(INPUT, 0, 1))
    located = where(device)
    assert [located[f"c{i}"] for i in range(10)] == [(0, i) for i in range(10)]
    assert (located["d1"], located["r1"], located["i0"]) == ((1, 1), (2, 1), (3, 0))
    assert all(p.register_count == 1 for p in device.points)


def test_bit_requests_split_at_2000_bits() -> None:
    device = plan_of([point(f"c{i}", i, "bool", register_type="coil") for i in range(2001)])
    assert device.requests == (ReadRequest(COIL, 0, 2000), ReadRequest(COIL, 2000, 1))
    assert (device.points[1999].request_index, device.points[1999].offset) == (0, 1999)
    assert (device.points[2000].request_index, device.points[2000].offset) == (1, 0)


def test_bits_are_not_read_across_unused_coils() -> None:
    device = plan_of([point("a", 0, "bool", register_type="coil"),
                      point("b", 2, "bool", register_type="coil")], max_gap_registers=5)
    assert device.requests == (ReadRequest(COIL, 0, 1), ReadRequest(COIL, 2, 1))


# --- coalescing registers -------------------------------------------------------------------------------


def test_contiguous_registers_of_every_width_join_one_request() -> None:
    device = plan_of([
        point("u", 10), point("f", 11, "float32"), point("d", 13, "float64"),
        point("tag", 17, "string", registers=3), point("i", 20, "int64"),
    ])
    assert device.requests == (ReadRequest(HOLDING, 10, 14),)
    assert where(device) == {"u": (0, 0), "f": (0, 1), "d": (0, 3), "tag": (0, 7), "i": (0, 10)}
    assert [p.register_count for p in device.points] == [1, 2, 4, 3, 4]


def test_points_listed_out_of_order_are_planned_in_address_order() -> None:
    device = plan_of([point("c", 4), point("a", 0, "float32"), point("b", 2, "float32")])
    assert device.requests == (ReadRequest(HOLDING, 0, 5),)
    assert [p.name for p in device.points] == ["c", "a", "b"]  # the profile's order is kept
    assert where(device) == {"a": (0, 0), "b": (0, 2), "c": (0, 4)}


@pytest.mark.parametrize(("max_gap", "requests", "located"), [
    (0, [(0, 1), (3, 1), (7, 2)], {"a": (0, 0), "b": (1, 0), "c": (2, 0)}),
    (2, [(0, 4), (7, 2)], {"a": (0, 0), "b": (0, 3), "c": (1, 0)}),
    (3, [(0, 9)], {"a": (0, 0), "b": (0, 3), "c": (0, 7)}),
], ids=["no-gap", "gap-2-joins-the-first-only", "gap-3-joins-all"])
def test_gaps_are_read_across_up_to_max_gap_registers(
        max_gap: int, requests: list[tuple[int, int]], located: dict[str, tuple[int, int]]) -> None:
    # a at 0, two unused registers, b at 3, three unused registers, c at 7..8
    device = plan_of([point("a", 0), point("b", 3), point("c", 7, "float32")],
                     max_gap_registers=max_gap)
    assert device.requests == tuple(ReadRequest(HOLDING, a, n) for a, n in requests)
    assert where(device) == located


def test_max_registers_per_request_splits_without_splitting_a_point() -> None:
    # 3 float64 back to back = 12 registers; 10 per request
    device = plan_of([point(f"d{i}", 4 * i, "float64") for i in range(3)], max_registers_per_request=10)
    assert device.requests == (ReadRequest(HOLDING, 0, 8), ReadRequest(HOLDING, 8, 4))


def test_the_size_limit_counts_the_gap_that_is_read_across() -> None:
    device = plan_of([point("a", 0), point("b", 4), point("c", 8)],
                     max_registers_per_request=6, max_gap_registers=3)
    assert device.requests == (ReadRequest(HOLDING, 0, 5), ReadRequest(HOLDING, 8, 1))


def test_max_registers_per_request_per_device_through_overrides(tmp_path: Path) -> None:
    profile = {"name": "t", "points": [point(f"f{i}", 2 * i, "float32") for i in range(10)]}
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(profile))
    document: dict[str, Any] = yaml.safe_load(yaml.safe_dump(PLANT))
    device = document["devices"][0]
    device["profile"] = "t.yaml"
    document["devices"].append({**device, "id": "old", "unit_id": 2,
                                "overrides": {"max_registers_per_request": 6}})
    (tmp_path / "plant.yaml").write_text(yaml.safe_dump(document))
    modern, old = compile_plan(load_plant(tmp_path / "plant.yaml")).devices
    assert modern.requests == (ReadRequest(HOLDING, 0, 20),)
    assert old.requests == (ReadRequest(HOLDING, 0, 6), ReadRequest(HOLDING, 6, 6),
                            ReadRequest(HOLDING, 12, 6), ReadRequest(HOLDING, 18, 2))


def test_a_string_spans_its_registers() -> None:
    device = plan_of([point("tag", 20, "string", registers=10), point("after", 30)])
    assert device.requests == (ReadRequest(HOLDING, 20, 11),)
    assert where(device) == {"tag": (0, 0), "after": (0, 10)}
    assert device.points[0].register_count == 10


def test_a_point_inside_a_string_is_refused() -> None:
    error = refused([point("tag", 20, "string", registers=10), point("inside", 29)])
    assert error.field == "points[1]"
    assert "overlaps point 'tag'" in error.message
    assert "20..29" in error.message


# --- address base ---------------------------------------------------------------------------------------


def test_address_base_1_sends_address_1_as_0() -> None:
    device = plan_of([point("a", 1, "float32"), point("b", 3),
                      point("c", 1, "bool", register_type="coil")],
                     address_base=1, status={"address": 4, "bits": {"fault": 0}})
    assert device.requests == (ReadRequest(COIL, 0, 1), ReadRequest(HOLDING, 0, 4))
    assert where(device) == {"a": (1, 0), "b": (1, 2), "c": (0, 0)}
    assert device.status is not None
    assert (device.status.request_index, device.status.offset) == (1, 3)


def test_address_0_is_refused_when_the_manual_counts_from_1() -> None:
    error = refused([point("a", 1), point("b", 0)], address_base=1)
    assert error.field == "points[1].address"
    assert "'b'" in error.message
    assert "address_base 1" in error.message


def test_the_last_register_is_addressable_in_either_base() -> None:
    assert plan_of([point("top", 65535)]).requests == (ReadRequest(HOLDING, 65535, 1),)
    assert plan_of([point("top", 65536)], address_base=1).requests == (ReadRequest(HOLDING, 65535, 1),)
    assert refused([point("top", 65535, "float32")]).field == "points[0].address"


# --- bits of a register ----------------------------------------------------------------------------------


def test_bit_points_share_a_register_on_distinct_bits() -> None:
    device = plan_of([
        point("ready", 7, "bool", bit=0), point("mode", 7, "bits", bit=1, bit_count=3),
        point("alarm", 7, "bool", bit=15), point("next", 8),
    ], status={"address": 7, "bits": {"fault": 14}})
    assert device.requests == (ReadRequest(HOLDING, 7, 2),)  # one read of the shared register
    assert where(device) == {"ready": (0, 0), "mode": (0, 0), "alarm": (0, 0), "next": (0, 1)}
    assert [(p.bit, p.bit_count) for p in device.points[:3]] == [(0, 1), (1, 3), (15, 1)]


@pytest.mark.parametrize(("second", "field"), [
    (point("b", 7, "bool", bit=2), "points[1]"),
    (point("b", 7, "bits", bit=3, bit_count=2), "points[1]"),
    (point("b", 7, "bits", bit=0, bit_count=16), "points[1]"),
], ids=["bool-inside-a-field", "field-overlapping-a-field", "field-of-the-whole-word"])
def test_bit_points_on_overlapping_bits_are_refused(second: dict[str, Any], field: str) -> None:
    error = refused([point("a", 7, "bits", bit=2, bit_count=2), second])
    assert error.field == field
    assert "'b'" in error.message
    assert "overlaps point 'a'" in error.message


def test_a_bit_point_cannot_share_a_register_with_a_number() -> None:
    error = refused([point("n", 7), point("b", 7, "bool", bit=0)])
    assert error.field == "points[1]"
    assert "overlaps point 'n'" in error.message


def test_a_bool_in_a_register_must_say_which_bit() -> None:
    error = refused([point("ok", 0), point("flag", 1, "bool")])
    assert error.field == "points[1].bit"
    assert "'flag'" in error.message


def test_a_coil_that_names_a_bit_is_refused() -> None:
    assert refused([point("c", 0, "bool", register_type="coil", bit=1)]).field == "points[0].bit"


def test_a_number_in_the_coil_table_is_refused() -> None:
    # the table given by the point itself is checked as the point loads
    with pytest.raises(ValueError, match="data_type must be bool"):
        plan_of([point("n", 0, "uint16", register_type="coil")])
    # the table given by the profile's defaults is checked by the planner, naming the field
    error = refused([point("n", 0, "uint16")], defaults={"register_type": "discrete_input"})
    assert error.field == "points[0].data_type"
    assert "'n'" in error.message
    assert "discrete_input" in error.message


# --- the demo plant --------------------------------------------------------------------------------------


def test_the_demo_plant_needs_three_requests_per_cycle() -> None:
    """The fewest its layout allows: each device's registers are contiguous."""
    plan = compile_plan(load_plant(DEMO_PLANT))
    assert {d.device_id: d.requests for d in plan.devices} == {
        "cems-1": (ReadRequest(HOLDING, 100, 19),),
        "feeder-1a": (ReadRequest(HOLDING, 0, 4),),
        "feeder-1b": (ReadRequest(HOLDING, 0, 4),),
    }
    assert sum(len(d.requests) for d in plan.devices) == 3


# --- property: the fewest requests, and every point inside its own ------------------------------------

_WIDTHS = {"uint16": 1, "float32": 2, "float64": 4}
_TABLES = ["holding", "input", "coil"]


@st.composite
def layouts(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int, int]:
    """Non-overlapping points in up to three tables, a request size limit and a gap allowance."""
    points: list[dict[str, Any]] = []
    for table in _TABLES:
        address = draw(st.integers(0, 20))
        for _ in range(draw(st.integers(0, 12))):
            address += draw(st.integers(0, 6))  # unused registers before the point
            if table == "coil":
                kind, width, extra = "bool", 1, {}
            else:
                kind = draw(st.sampled_from([*_WIDTHS, "string"]))
                width = _WIDTHS.get(kind) or draw(st.integers(1, 5))
                extra = {"registers": width} if kind == "string" else {}
            points.append(point(f"p{len(points)}", address, kind, register_type=table, **extra))
            address += width
    if not points:
        points.append(point("only", 0, register_type="holding"))
    draw(st.randoms()).shuffle(points)  # the profile's order does not matter
    return points, draw(st.integers(5, 20)), draw(st.integers(0, 5))


def _width(spec: dict[str, Any]) -> int:
    return int(spec.get("registers") or _WIDTHS.get(spec["data_type"], 1))


def fewest_requests(spans: list[tuple[int, int]], limit: int, max_gap: int) -> int:
    """By dynamic programming over the spans in address order: the fewest runs of consecutive spans
    in which no run is longer than `limit` and no gap inside a run exceeds `max_gap`."""
    spans = sorted(spans)
    best = [0] + [len(spans) + 1] * len(spans)  # best[j]: fewest requests for the first j spans
    for j in range(1, len(spans) + 1):
        for i in range(j, 0, -1):  # the last request reads spans i-1 .. j-1
            start, end = spans[i - 1][0], spans[j - 1][0] + spans[j - 1][1]
            if end - start > limit:
                break
            if i < j and spans[i][0] - (spans[i - 1][0] + spans[i - 1][1]) > max_gap:
                break
            best[j] = min(best[j], best[i - 1] + 1)
    return best[-1]


@settings(max_examples=300, deadline=None)
@given(layout=layouts())
def test_the_planner_finds_the_fewest_requests_and_keeps_each_point_inside_its_own(
        layout: tuple[list[dict[str, Any]], int, int]) -> None:
    points, limit, max_gap = layout
    device = plan_of(points, max_registers_per_request=limit, max_gap_registers=max_gap)
    expected = 0
    for table in _TABLES:
        spans = [(p["address"], _width(p)) for p in points if p["register_type"] == table]
        if table == "coil":
            expected += fewest_requests(spans, 2000, 0)
        else:
            expected += fewest_requests(spans, limit, max_gap)
    assert len(device.requests) == expected
    by_name = {p["name"]: p for p in points}
    covered: dict[int, set[int]] = {}
    for planned in device.points:
        spec = by_name[planned.name]
        request = device.requests[planned.request_index]
        assert request.register_type == RegisterType(spec["register_type"])
        assert request.address + planned.offset == spec["address"]
        assert planned.offset >= 0
        assert planned.offset + _width(spec) <= request.count
        assert planned.register_count == _width(spec)
        assert planned.data_type == DataType(spec["data_type"])
        covered.setdefault(planned.request_index, set()).update(
            range(planned.offset, planned.offset + _width(spec)))
    for index, request in enumerate(device.requests):
        assert request.count <= (2000 if request.register_type.is_bit else limit)
        used = covered[index]  # every request carries a point, and starts and ends on one
        assert min(used) == 0
        assert max(used) == request.count - 1
        allowance = 0 if request.register_type.is_bit else max_gap
        assert _longest_unused_run(used, request.count) <= allowance, (request, sorted(used))


def _longest_unused_run(used: set[int], count: int) -> int:
    longest = run = 0
    for offset in range(count):
        run = 0 if offset in used else run + 1
        longest = max(longest, run)
    return longest
