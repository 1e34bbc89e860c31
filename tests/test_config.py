"""Strict configuration (collector/config.py) and the compiled read plan (collector/plan.py).

Golden cases: a configuration goes in, and either a ConfigError comes out whose text names the
file and the dotted field a plant engineer has to fix, or a read plan with the expected requests.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.config import ByteOrder, DataType, RegisterType, load_plant, load_profile
from collector.errors import ConfigError
from collector.plan import ReadPlan, ReadRequest, SerialLink, TcpLink, compile_plan
from tests.conftest import DEMO_PLANT, FIRMWARE

CEMS_PROFILE = "cems-analyzer-rack.yaml"
FEEDER_PROFILE = "coal-feeder-belt-scale.yaml"

Doc = dict[str, Any]


class PlantFiles:
    """A writable copy of the demo plant and its profiles, laid out as in firmware-config/."""

    def __init__(self, root: Path) -> None:
        self.plants = root / "plants"
        self.profiles = root / "profiles"
        shutil.copytree(FIRMWARE / "plants", self.plants)
        shutil.copytree(FIRMWARE / "profiles", self.profiles)
        self.plant = self.plants / DEMO_PLANT.name

    def edit_plant(self, change: Callable[[Doc], None]) -> Path:
        document: Doc = yaml.safe_load(self.plant.read_text())
        change(document)
        self.plant.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.plant

    def edit_profile(self, name: str, change: Callable[[Doc], None]) -> Path:
        path = self.profiles / name
        document: Doc = yaml.safe_load(path.read_text())
        change(document)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def write_profile(self, name: str, document: Doc) -> Path:
        path = self.profiles / name
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def compile(self) -> ReadPlan:
        return compile_plan(load_plant(self.plant))


@pytest.fixture
def files(tmp_path: Path) -> PlantFiles:
    return PlantFiles(tmp_path)


def _refused(files: PlantFiles) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        files.compile()
    return caught.value


def _assert_names(error: ConfigError, path: Path, field: str) -> None:
    text = str(error)
    assert str(path) in text, text
    assert path.name in text
    assert error.source == str(path)
    assert error.field == field, text
    assert f": {field}: " in text, text


def _point(name: str, address: int, data_type: str = "float32", **extra: Any) -> Doc:
    return {"name": name, "address": address, "data_type": data_type, "quantity": "q", "unit": "u",
            **extra}


# --- the committed configuration ---------------------------------------------------------------


def test_the_demo_plant_loads_and_compiles() -> None:
    plant = load_plant(DEMO_PLANT)
    assert plant.config.plant.id == "demo-plant"
    assert plant.config.plant.timezone == "Asia/Shanghai"
    assert [d.config.id for d in plant.devices] == ["cems-1", "feeder-1a", "feeder-1b"]
    assert compile_plan(plant).collector_id == "demo-plant-c1"


@pytest.mark.parametrize("profile", sorted((FIRMWARE / "profiles").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_committed_profile_loads(profile: Path) -> None:
    assert load_profile(profile).points


# --- unknown keys --------------------------------------------------------------------------------


def test_unknown_key_at_the_top_level(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d.update(colector={"id": "x"}))
    error = _refused(files)
    _assert_names(error, path, "colector")
    assert "unknown key" in str(error)


def test_unknown_key_in_a_device(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["devices"][1].update(timeout=300))
    error = _refused(files)
    _assert_names(error, path, "devices[1].timeout")
    assert "unknown key" in str(error)


def test_unknown_key_in_a_nested_section(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["collector"]["buffer"].update(max_size=10))
    _assert_names(_refused(files), path, "collector.buffer.max_size")


def test_misspelt_key_in_a_profile_point(files: PlantFiles) -> None:
    def typo(document: Doc) -> None:
        point = document["points"][2]
        point["adress"] = point.pop("address")
    path = files.edit_profile(CEMS_PROFILE, typo)
    error = _refused(files)
    # the profile is named, not the plant file that refers to it, and the typo itself is named
    _assert_names(error, path, "points[2].adress")
    assert "unknown key" in str(error)
    assert DEMO_PLANT.name not in str(error)


def test_unknown_key_in_a_profile_point_that_has_a_default(files: PlantFiles) -> None:
    path = files.edit_profile(FEEDER_PROFILE, lambda d: d["points"][1].update(scael=0.1))
    _assert_names(_refused(files), path, "points[1].scael")


# --- impossible register maps ---------------------------------------------------------------------


def test_float32_declared_with_one_register(files: PlantFiles) -> None:
    path = files.edit_profile(CEMS_PROFILE, lambda d: d["points"][0].update(registers=1))
    error = _refused(files)
    _assert_names(error, path, "points[0].registers")
    assert "float32" in str(error)
    assert "2 registers" in str(error)


def test_matching_register_count_is_accepted(files: PlantFiles) -> None:
    files.edit_profile(CEMS_PROFILE, lambda d: d["points"][0].update(registers=2))
    assert files.compile().devices[0].requests[0].count == 19


def test_overlapping_points(files: PlantFiles) -> None:
    path = files.write_profile("overlap.yaml", {
        "name": "overlap", "points": [_point("first", 100), _point("second", 101, "uint16")]})
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/overlap.yaml"))
    error = _refused(files)
    _assert_names(error, path, "points[1]")
    assert "'second'" in str(error)
    assert "overlaps point 'first'" in str(error)
    assert "100..101" in str(error)


def test_point_overlapping_the_status_word(files: PlantFiles) -> None:
    path = files.edit_profile(CEMS_PROFILE, lambda d: d["status"].update(address=117))
    error = _refused(files)
    assert path.name in str(error)
    assert "overlaps" in str(error)


def test_same_address_in_different_tables_does_not_overlap(files: PlantFiles) -> None:
    files.write_profile("tables.yaml", {
        "name": "tables",
        "points": [_point("h", 0), _point("i", 0, register_type="input")]})
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/tables.yaml"))
    requests = files.compile().devices[0].requests
    assert set(requests) == {ReadRequest(RegisterType.HOLDING, 0, 2), ReadRequest(RegisterType.INPUT, 0, 2)}


def test_max_registers_per_request_over_the_modbus_limit(files: PlantFiles) -> None:
    path = files.edit_profile(CEMS_PROFILE, lambda d: d.update(max_registers_per_request=200))
    error = _refused(files)
    _assert_names(error, path, "max_registers_per_request")
    assert "125" in str(error)


def test_point_wider_than_one_request(files: PlantFiles) -> None:
    path = files.write_profile("narrow.yaml", {
        "name": "narrow", "max_registers_per_request": 2,
        "points": [_point("ok", 0), _point("wide", 2, "float64")]})
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/narrow.yaml"))
    error = _refused(files)
    _assert_names(error, path, "max_registers_per_request")
    assert "'wide'" in str(error)


def test_point_running_past_the_register_space(files: PlantFiles) -> None:
    path = files.edit_profile(FEEDER_PROFILE, lambda d: d["points"][1].update(address=65535))
    _assert_names(_refused(files), path, "points[1].address")


def test_two_status_meanings_on_one_bit(files: PlantFiles) -> None:
    path = files.edit_profile(CEMS_PROFILE, lambda d: d["status"]["bits"].update(fault=0))
    _assert_names(_refused(files), path, "status.bits")


def test_duplicate_point_name(files: PlantFiles) -> None:
    path = files.edit_profile(CEMS_PROFILE, lambda d: d["points"][3].update(name="so2"))
    error = _refused(files)
    _assert_names(error, path, "points[3].name")
    assert "'so2'" in str(error)


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["points"][0].update(data_type="float16"), "points[0].data_type"),
    (lambda d: d["points"][0].update(byte_order="middle"), "points[0].byte_order"),
    (lambda d: d["points"][0].update(address=-1), "points[0].address"),
    (lambda d: d["status"]["bits"].update(fault=16), "status.bits.fault"),
    (lambda d: d.update(points=[]), "points"),
], ids=["data-type", "byte-order", "negative-address", "status-bit-16", "no-points"])
def test_bad_profile_values(files: PlantFiles, change: Callable[[Doc], None], field: str) -> None:
    path = files.edit_profile(CEMS_PROFILE, change)
    _assert_names(_refused(files), path, field)


# --- plant file problems --------------------------------------------------------------------------


def test_bad_timezone(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["plant"].update(timezone="Asia/Beijing"))
    error = _refused(files)
    _assert_names(error, path, "plant.timezone")
    assert "Asia/Beijing" in str(error)


def test_duplicate_device_id(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["devices"][2].update(id="feeder-1a"))
    error = _refused(files)
    _assert_names(error, path, "devices[2].id")
    assert "'feeder-1a'" in str(error)
    assert "devices[1]" in str(error)


def test_two_devices_on_the_same_endpoint_and_unit(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["devices"][2].update(unit_id=1))
    error = _refused(files)
    _assert_names(error, path, "devices[2].unit_id")
    assert "127.0.0.1:15021 unit 1" in str(error)
    assert "'feeder-1a'" in str(error)


def test_missing_profile_file(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/nowhere.yaml"))
    error = _refused(files)
    _assert_names(error, path, "devices[0].profile")
    assert "nowhere.yaml" in str(error)


def test_invalid_yaml_in_the_plant(files: PlantFiles) -> None:
    files.plant.write_text("plant:\n  id: demo\n devices: [\n")
    error = _refused(files)
    assert str(files.plant) in str(error)
    assert "not valid YAML" in str(error)


def test_invalid_yaml_in_a_profile(files: PlantFiles) -> None:
    path = files.profiles / FEEDER_PROFILE
    path.write_text("name: x\npoints:\n  - {name: a, address: 0\n")
    error = _refused(files)
    assert str(path) in str(error)
    assert "not valid YAML" in str(error)


def test_a_plant_file_that_is_not_a_mapping(files: PlantFiles) -> None:
    files.plant.write_text("- just\n- a list\n")
    error = _refused(files)
    assert str(files.plant) in str(error)
    assert "mapping" in str(error)


def test_a_missing_plant_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_plant(missing)
    assert str(missing) in str(caught.value)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_port_out_of_range(files: PlantFiles, port: int) -> None:
    path = files.edit_plant(lambda d: d["devices"][1]["tcp"].update(port=port))
    _assert_names(_refused(files), path, "devices[1].tcp.port")


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["devices"][0].update(unit_id=248), "devices[0].unit_id"),
    (lambda d: d["devices"][0].update(id="has space"), "devices[0].id"),
    (lambda d: d["collector"].update(tick_ms=10), "collector.tick_ms"),
    (lambda d: d["collector"]["uplink"]["grpc"].update(insecure=False),
     "collector.uplink.grpc.insecure"),
    (lambda d: d.update(devices=[]), "devices"),
    (lambda d: d.pop("collector"), "collector"),
], ids=["unit-id", "device-id", "tick", "insecure-false", "no-devices", "no-collector"])
def test_bad_plant_values(files: PlantFiles, change: Callable[[Doc], None], field: str) -> None:
    path = files.edit_plant(change)
    _assert_names(_refused(files), path, field)


# --- golden plans --------------------------------------------------------------------------------


def test_demo_plant_plan_coalesces_each_device_into_one_request() -> None:
    plan = compile_plan(load_plant(DEMO_PLANT))
    requests = {device.device_id: device.requests for device in plan.devices}
    assert requests == {
        "cems-1": (ReadRequest(RegisterType.HOLDING, 100, 19),),  # 9 float32 at 100..117, status 118
        "feeder-1a": (ReadRequest(RegisterType.HOLDING, 0, 4),),
        "feeder-1b": (ReadRequest(RegisterType.HOLDING, 0, 4),),
    }
    cems = plan.devices[0]
    assert [(p.point_id, p.offset) for p in cems.points] == [
        ("demo-plant/cems-1/so2", 0), ("demo-plant/cems-1/nox", 2), ("demo-plant/cems-1/o2", 4),
        ("demo-plant/cems-1/co2", 6), ("demo-plant/cems-1/particulate", 8),
        ("demo-plant/cems-1/flow", 10), ("demo-plant/cems-1/temperature", 12),
        ("demo-plant/cems-1/static_pressure", 14), ("demo-plant/cems-1/moisture", 16),
    ]
    assert cems.status is not None
    assert (cems.status.offset, cems.status_point_id) == (18, "demo-plant/cems-1/status")
    feeder = plan.devices[1]
    assert [p.point_id for p in feeder.points] == ["demo-plant/feeder-1a/feed_rate",
                                                   "demo-plant/feeder-1a/total"]
    total = feeder.points[1]
    # word order little, byte order big: the low word first, each word high byte first
    assert (total.data_type, total.byte_order, total.scale) == (DataType.UINT32, ByteOrder.CDAB, 0.01)
    assert (feeder.link, feeder.unit_id, feeder.timeout_ms) == (TcpLink("127.0.0.1", 15021), 1, 300)
    assert plan.reading_count == 10 + 2 + 2


def test_a_gap_between_points_gives_two_requests(files: PlantFiles) -> None:
    files.write_profile("gap.yaml", {
        "name": "gap", "points": [_point("a", 0), _point("b", 2), _point("c", 10)]})
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/gap.yaml"))
    device = files.compile().devices[0]
    assert device.requests == (ReadRequest(RegisterType.HOLDING, 0, 4),
                               ReadRequest(RegisterType.HOLDING, 10, 2))
    assert [(p.name, p.request_index, p.offset) for p in device.points] == [
        ("a", 0, 0), ("b", 0, 2), ("c", 1, 0)]


def test_130_contiguous_registers_split_at_the_125_register_limit(files: PlantFiles) -> None:
    files.write_profile("wide.yaml", {
        "name": "wide", "points": [_point(f"r{i}", 1000 + i, "uint16") for i in range(130)]})
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/wide.yaml"))
    device = files.compile().devices[0]
    assert device.requests == (ReadRequest(RegisterType.HOLDING, 1000, 125),
                               ReadRequest(RegisterType.HOLDING, 1125, 5))
    assert (device.points[124].request_index, device.points[124].offset) == (0, 124)
    assert (device.points[125].request_index, device.points[125].offset) == (1, 0)


def test_a_smaller_device_limit_never_splits_a_point(files: PlantFiles) -> None:
    files.write_profile("small.yaml", {
        "name": "small", "max_registers_per_request": 5,
        "points": [_point(f"f{i}", 2 * i) for i in range(4)]})  # 8 contiguous registers
    files.edit_plant(lambda d: d["devices"][0].update(profile="../profiles/small.yaml"))
    device = files.compile().devices[0]
    assert device.requests == (ReadRequest(RegisterType.HOLDING, 0, 4),
                               ReadRequest(RegisterType.HOLDING, 4, 4))


def test_point_ids_are_plant_device_point(files: PlantFiles) -> None:
    files.edit_plant(lambda d: d["plant"].update(id="north-3"))
    plan = files.compile()
    ids = [p.point_id for device in plan.devices for p in device.points]
    assert "north-3/feeder-1b/total" in ids
    assert all(i.count("/") == 2 and i.startswith("north-3/") for i in ids)


def test_config_digest_is_sha256_of_the_config_document() -> None:
    plan = compile_plan(load_plant(DEMO_PLANT))
    assert plan.config_digest == hashlib.sha256(plan.config_document).digest()
    document = json.loads(plan.config_document)
    assert document["format"] == "stackline.config/v1"
    assert document["collector_id"] == "demo-plant-c1"
    assert [d["id"] for d in document["devices"]] == ["cems-1", "feeder-1a", "feeder-1b"]
    # canonical: sorted keys, no spaces, so the same configuration always has the same digest
    assert plan.config_document == json.dumps(document, sort_keys=True, separators=(",", ":"),
                                              ensure_ascii=False).encode()
    assert compile_plan(load_plant(DEMO_PLANT)).config_digest == plan.config_digest


def test_config_digest_changes_when_a_scale_changes(files: PlantFiles) -> None:
    before = files.compile()
    files.edit_profile(FEEDER_PROFILE, lambda d: d["points"][1].update(scale=0.001))
    after = files.compile()
    assert after.config_digest != before.config_digest
    assert after.devices[1].points[1].scale == 0.001
    assert after.config_digest == hashlib.sha256(after.config_document).digest()


def test_config_digest_ignores_formatting_but_not_meaning(files: PlantFiles) -> None:
    before = files.compile()
    path = files.profiles / CEMS_PROFILE
    path.write_text("# a new comment\n" + path.read_text())
    assert files.compile().config_digest == before.config_digest
    files.edit_plant(lambda d: d["devices"][0]["tcp"].update(port=15099))
    assert files.compile().config_digest != before.config_digest


# --- serial lines ----------------------------------------------------------------------------------

LINE_1 = {"id": "line-1", "port": "/dev/ttyUSB0", "baudrate": 19200, "parity": "E"}


def _feeders_on_line_1(document: Doc) -> None:
    """Both feeders moved from the TCP bridge onto RS-485 line line-1 (units 1 and 2)."""
    document["serial_lines"] = [dict(LINE_1)]
    for device in document["devices"][1:]:
        del device["tcp"]
        device["serial_line"] = "line-1"


def test_devices_on_a_serial_line_load_with_the_lines_settings(files: PlantFiles) -> None:
    files.edit_plant(_feeders_on_line_1)
    plan = files.compile()
    cems, feeder_a, feeder_b = plan.devices
    line = SerialLink(line_id="line-1", port="/dev/ttyUSB0", baudrate=19200, parity="E",
                      stop_bits=1, bytesize=8, request_gap_ms=10)
    assert (feeder_a.link, feeder_a.unit_id) == (line, 1)
    assert (feeder_b.link, feeder_b.unit_id) == (line, 2)
    assert feeder_a.link.key == feeder_b.link.key != cems.link.key  # polled one after the other
    assert cems.link == TcpLink("127.0.0.1", 15020)
    assert feeder_b.where == "unit 2 on serial line line-1 (/dev/ttyUSB0)"
    # the serial settings are part of what the chain records about the device
    document = json.loads(plan.config_document)
    assert document["devices"][1]["endpoint"] == "serial:line-1:/dev/ttyUSB0"


def test_the_committed_serial_example_plant_compiles() -> None:
    plan = compile_plan(load_plant(FIRMWARE / "plants" / "serial-example.yaml"))
    gas, fuel, cems = plan.devices
    assert isinstance(gas.link, SerialLink)
    assert gas.link == fuel.link
    assert (gas.unit_id, fuel.unit_id) == (1, 2)
    assert (gas.poll_interval_ms, fuel.poll_interval_ms) == (2000, 5000)
    assert (fuel.failures_before_backoff, fuel.backoff_max_ms) == (5, 60000)
    assert cems.link == TcpLink("127.0.0.1", 15030)


def _add_line(document: Doc, **line: Any) -> None:
    document.setdefault("serial_lines", []).append({**LINE_1, **line})


def _on_line_1_and(change: Callable[[Doc], None]) -> Callable[[Doc], None]:
    def both(document: Doc) -> None:
        _feeders_on_line_1(document)
        change(document)
    return both


@pytest.mark.parametrize(("change", "field", "words"), [
    (_on_line_1_and(lambda d: d["devices"][2].update(serial_line="line-2")),
     "devices[2].serial_line", ["'line-2'", "line-1"]),
    (_on_line_1_and(lambda d: d["devices"][1].update(unit_id=0)),
     "devices[1].unit_id", ["broadcast"]),
    (_on_line_1_and(lambda d: _add_line(d, port="/dev/ttyUSB1")),
     "serial_lines[1].id", ["'line-1'", "twice"]),
    (_on_line_1_and(lambda d: _add_line(d, id="line-2")),
     "serial_lines[1].port", ["/dev/ttyUSB0", "'line-1'"]),
    (_on_line_1_and(lambda d: d["devices"][2].update(unit_id=1)),
     "devices[2].unit_id", ["serial line line-1 unit 1", "'feeder-1a'"]),
    (_on_line_1_and(lambda d: d["devices"][1].update(tcp={"host": "10.0.0.5"})),
     "devices[1]", ["either tcp"]),
    (lambda d: d["devices"][0].pop("tcp"), "devices[0]", ["either tcp"]),
    (_on_line_1_and(lambda d: d["serial_lines"][0].update(baudrate=14400)),
     "serial_lines[0].baudrate", []),
], ids=["unknown-line", "unit-0-on-serial", "duplicate-line-id", "duplicate-port",
        "duplicate-serial-endpoint", "tcp-and-serial", "neither-tcp-nor-serial", "odd-baudrate"])
def test_bad_transports(files: PlantFiles, change: Callable[[Doc], None], field: str,
                        words: list[str]) -> None:
    path = files.edit_plant(change)
    error = _refused(files)
    _assert_names(error, path, field)
    for word in words:
        assert word in error.message, error.message


def test_unit_0_is_allowed_over_tcp(files: PlantFiles) -> None:
    # unit 0 is only the broadcast address on a serial line; TCP devices often answer to it
    files.edit_plant(lambda d: d["devices"][0].update(unit_id=0))
    assert files.compile().devices[0].unit_id == 0


def test_a_timeout_at_the_devices_own_poll_interval_is_refused(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["devices"][1].update(timeout_ms=2000, poll_interval_ms=2000))
    error = _refused(files)
    _assert_names(error, path, "devices[1].timeout_ms")
    assert "2000 ms" in error.message
    files.edit_plant(lambda d: d["devices"][1].update(timeout_ms=1999))
    device = files.compile().devices[1]
    assert (device.timeout_ms, device.poll_interval_ms) == (1999, 2000)


def test_a_timeout_at_the_tick_is_refused_naming_the_timeout(files: PlantFiles) -> None:
    path = files.edit_plant(lambda d: d["collector"].update(tick_ms=250))
    error = _refused(files)
    _assert_names(error, path, "devices[0].timeout_ms")
    assert "250 ms" in error.message


def test_a_timeout_below_the_tick_is_accepted(files: PlantFiles) -> None:
    files.edit_plant(lambda d: d["collector"].update(tick_ms=301))  # the demo devices wait 300 ms
    assert [device.poll_interval_ms for device in files.compile().devices] == [301, 301, 301]


# --- per-device overrides -------------------------------------------------------------------------


def _override(index: int, overrides: Doc) -> Callable[[Doc], None]:
    return lambda d: d["devices"][index].update(overrides=overrides)


def test_a_scale_override_changes_that_device_only(files: PlantFiles) -> None:
    files.edit_plant(_override(1, {"points": {"total": {"scale": 0.001}}}))
    _, feeder_a, feeder_b = files.compile().devices
    assert feeder_a.points[1].scale == 0.001
    assert feeder_b.points[1].scale == 0.01  # the same profile, loaded for the other device
    assert feeder_a.points[1].unit == "t"  # the rest of the point is the profile's


def test_profile_level_overrides_merge_key_by_key(files: PlantFiles) -> None:
    files.edit_plant(_override(0, {"max_registers_per_request": 8, "defaults": {"byte_order": "DCBA"}}))
    cems = files.compile().devices[0]
    # 19 registers 100..118, at most 8 per request without splitting a float32
    assert cems.requests == (ReadRequest(RegisterType.HOLDING, 100, 8),
                             ReadRequest(RegisterType.HOLDING, 108, 8),
                             ReadRequest(RegisterType.HOLDING, 116, 3))
    assert {point.byte_order for point in cems.points} == {ByteOrder.DCBA}
    assert cems.requests[0].register_type is RegisterType.HOLDING  # defaults.register_type kept


def test_overrides_change_the_config_digest(files: PlantFiles) -> None:
    before = files.compile()
    files.edit_plant(_override(2, {"points": {"feed_rate": {"scale": 2.0}}}))
    assert files.compile().config_digest != before.config_digest


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"points": {"totl": {"scale": 0.1}}}, "devices[1].overrides.points.totl", ["no point 'totl'"]),
    ({"points": {"total": {"scael": 0.1}}}, "devices[1].overrides.points.total.scael", ["unknown key"]),
    ({"max_registers_per_requests": 8}, "devices[1].overrides.max_registers_per_requests",
     ["unknown key"]),
    ({"points": {"total": {"scale": "tenth"}}}, "devices[1].overrides.points.total.scale", []),
    ({"max_registers_per_request": 200}, "devices[1].overrides.max_registers_per_request", ["125"]),
    ({"defaults": {"byte_order": "middle"}}, "devices[1].overrides.defaults.byte_order", []),
    ({"points": {"total": {"name": "sum"}}}, "devices[1].overrides.points.total.name", ["cannot"]),
    ({"points": ["total"]}, "devices[1].overrides.points", ["mapping"]),
], ids=["unknown-point", "misspelt-point-key", "misspelt-profile-key", "bad-scale", "too-many-registers",
        "bad-byte-order", "rename", "points-not-a-mapping"])
def test_bad_overrides_name_the_plant_field(files: PlantFiles, overrides: Doc, field: str,
                                            words: list[str]) -> None:
    path = files.edit_plant(_override(1, overrides))
    error = _refused(files)
    _assert_names(error, path, field)  # the plant file, where the override is, not the profile
    for word in words:
        assert word in error.message, error.message


def test_an_override_that_breaks_a_point_check_names_the_plant_field(files: PlantFiles) -> None:
    # so2 is a float32: as a totalizer it needs rollover_at, which the override does not give
    path = files.edit_plant(_override(0, {"points": {"so2": {"totalizer": {}}}}))
    error = _refused(files)
    assert error.source == str(path), str(error)
    assert error.field.startswith("devices[0].overrides.points.so2"), str(error)


def test_an_override_that_breaks_the_register_map_names_the_plant_field(files: PlantFiles) -> None:
    path = files.edit_plant(_override(0, {"points": {"so2": {"registers": 1}}}))
    error = _refused(files)
    assert error.source == str(path), str(error)
    assert error.field.startswith("devices[0].overrides.points.so2"), str(error)


# --- golden error text ------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["yaml", "json"])
def test_golden_error_text_for_a_misspelt_device_key(files: PlantFiles, form: str) -> None:
    document: Doc = yaml.safe_load(files.plant.read_text())
    document["devices"][1]["timout_ms"] = document["devices"][1].pop("timeout_ms")
    path = files.plants / f"plant.{form}"
    path.write_text(json.dumps(document, indent=2) if form == "json" else yaml.safe_dump(document))
    with pytest.raises(ConfigError) as caught:
        load_plant(path)
    assert str(caught.value) == (
        f"{path}: devices[1].timout_ms: unknown key (check its spelling and where it sits)")
