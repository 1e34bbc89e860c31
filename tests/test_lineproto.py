"""Line protocol from blocks (gateway/lineproto.py): escaping, NaN handling, the measurement rule,
tags from the configuration document. Pure; influxdb_client's `Point` is the reference."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from collector.config import load_plant
from collector.plan import compile_plan
from gateway.lineproto import (
    LineFormatter,
    PointMeta,
    escape_key,
    escape_measurement,
    escape_tag_value,
    format_line,
    measurement_for,
    meta_from_point_id,
    points_of_config,
)
from gateway.tsdb import point_helper_line
from proto.stackline.v1 import stackline_pb2 as pb
from tests.conftest import DEMO_PLANT

T0 = 1_700_000_000_000


def block(readings: list[tuple[str, float, int]], *, collector_id: str = "demo-plant-c1",
          digest: bytes = b"\x01" * 32) -> pb.Block:
    result = pb.Block(collector_id=collector_id, sequence=2, previous_hash=bytes(32),
                      config_digest=digest, kind=pb.BLOCK_KIND_READINGS)
    for point_id, value, quality in readings:
        result.readings.add(point_id=point_id, time_unix_ms=T0, value=value,
                            quality=quality)
    return result


def lines_of(formatter: LineFormatter, source: pb.Block) -> list[str]:
    out: list[str] = []
    assert formatter.block_lines(source, out) == len(source.readings)
    return out


# --- escaping -------------------------------------------------------------------------------------


def test_escaping_of_each_element() -> None:
    assert escape_measurement("flue gas,x=1") == r"flue\ gas\,x=1"  # = needs no escape here
    assert escape_key("eng unit,a=b") == r"eng\ unit\,a\=b"
    assert escape_tag_value("m3/h, wet = 1") == r"m3/h\,\ wet\ \=\ 1"
    assert escape_tag_value("C:\\stack\\") == "C:\\\\stack\\\\"  # a trailing \ cannot eat the ,
    assert escape_tag_value("a\nb\rc\td") == r"a\nb\rc\td"  # no raw line breaks or tabs


def test_a_line_with_odd_tags_and_both_fields() -> None:
    line = format_line("flue_gas", {"unit": "stack 1", "point": "so2", "empty": "", "none": None},
                       {"value": 35.25, "quality": 1}, T0)
    assert line == r"flue_gas,point=so2,unit=stack\ 1 quality=1i,value=35.25 1700000000000"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_value_that_is_not_finite_is_left_out_and_quality_stays(value: float) -> None:
    assert format_line("fuel", {"point": "total"}, {"value": value, "quality": 5}, T0) == (
        "fuel,point=total quality=5i 1700000000000")


def test_a_line_without_any_finite_field_is_refused() -> None:
    with pytest.raises(ValueError, match="finite field"):
        format_line("fuel", {"point": "total"}, {"value": math.nan}, T0)


@pytest.mark.parametrize("value", [0.0, -0.0, 35.0, 1e16, 1.5e-07, 412000.5, 2.0 ** 63, -7.25,
                                   0.1 + 0.2, 5e-324, 1.7976931348623157e308])
def test_floats_are_written_as_the_point_helper_writes_them(value: float) -> None:
    tags = {"point": "p"}
    fields: dict[str, float | int] = {"value": value, "quality": 1}
    assert format_line("m", tags, fields, T0) == point_helper_line("m", tags, fields, T0)


# Point does not double backslashes (it cannot write a value ending in one); everything else must
# come out byte for byte the same
_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\\"),
                min_size=1, max_size=12).filter(lambda s: not s.startswith("#"))


@given(measurement=_TEXT, tags=st.dictionaries(_TEXT, _TEXT, max_size=4),
       value=st.floats(allow_nan=True, allow_infinity=True), quality=st.integers(0, 8))
def test_any_line_matches_influxdb_clients_point_helper(
        measurement: str, tags: dict[str, str], value: float, quality: int) -> None:
    fields: dict[str, float | int] = {"value": value, "quality": quality}
    assert format_line(measurement, tags, fields, T0) == point_helper_line(
        measurement, tags, fields, T0)


# --- the measurement rule and the tags ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "quantity", "measurement"), [
    ("so2", "a21026", "flue_gas"),
    ("flow", "a00000", "flue_gas"),
    ("cod", "w01018", "water"),
    ("feed_rate", "fuel.coal.feed_rate", "fuel"),
    ("steam", "steam.main.flow", "steam"),
    ("status", None, "device"),
    ("power", "MW gross", "other"),
    ("x", "a2102", "other"),       # not an HJ 212 code: five digits
    ("x", "Fuel.coal", "other"),   # families are lower case
])
def test_measurement_rule(name: str, quantity: str | None, measurement: str) -> None:
    assert measurement_for(name, quantity) == measurement


def test_the_demo_plants_config_document_gives_every_points_tags() -> None:
    plan = compile_plan(load_plant(DEMO_PLANT))

    points = points_of_config(plan.config_document)

    assert set(points) == {p.point_id for d in plan.devices for p in d.points} | {
        d.status_point_id for d in plan.devices if d.status_point_id}
    assert len(points) == plan.reading_count == 14
    assert points["demo-plant/cems-1/so2"] == PointMeta(
        "flue_gas", "demo-plant", "cems-1", "so2", "unit-1", "a21026", "mg/m3")
    assert points["demo-plant/cems-1/status"] == PointMeta(
        "device", "demo-plant", "cems-1", "status", "unit-1")
    assert points["demo-plant/feeder-1b/total"] == PointMeta(
        "fuel", "demo-plant", "feeder-1b", "total", "unit-1", "fuel.coal.total", "t")


@pytest.mark.parametrize("document", [b"not json", b"[]", b'{"devices": 3}', b"\xff\xfe"])
def test_a_document_that_is_not_a_config_is_refused(document: bytes) -> None:
    with pytest.raises(ValueError, match="configuration document"):
        points_of_config(document)


def test_a_point_id_alone_gives_plant_device_and_point() -> None:
    assert meta_from_point_id("p/dev/so2") == PointMeta("unknown", "p", "dev", "so2")
    assert meta_from_point_id("p/dev/status") == PointMeta("device", "p", "dev", "status")
    assert meta_from_point_id("stack.so2_mg_m3") == PointMeta("unknown", None, None,
                                                              "stack.so2_mg_m3")


# --- blocks to lines -------------------------------------------------------------------------------


def demo_formatter() -> tuple[LineFormatter, bytes]:
    plan = compile_plan(load_plant(DEMO_PLANT))
    formatter = LineFormatter()
    assert formatter.add_config("demo-plant-c1", plan.config_digest, plan.config_document)
    return formatter, plan.config_digest


def test_readings_become_lines_with_the_tags_of_their_config() -> None:
    formatter, digest = demo_formatter()
    source = block([("demo-plant/cems-1/so2", 35.0, pb.QUALITY_NORMAL),
                    ("demo-plant/cems-1/nox", 44.8125, pb.QUALITY_CALIBRATION),
                    ("demo-plant/feeder-1a/total", math.nan, pb.QUALITY_COMM_LOSS),
                    ("demo-plant/cems-1/status", 1.0, pb.QUALITY_NORMAL)], digest=digest)

    assert lines_of(formatter, source) == [
        "flue_gas,collector=demo-plant-c1,device=cems-1,eng_unit=mg/m3,flag=N,plant=demo-plant,"
        "point=so2,quantity=a21026,unit=unit-1 quality=1i,value=35 1700000000000",
        "flue_gas,collector=demo-plant-c1,device=cems-1,eng_unit=mg/m3,flag=C,plant=demo-plant,"
        "point=nox,quantity=a21002,unit=unit-1 quality=2i,value=44.8125 1700000000000",
        "fuel,collector=demo-plant-c1,device=feeder-1a,eng_unit=t,flag=B,plant=demo-plant,"
        "point=total,quantity=fuel.coal.total,unit=unit-1 quality=5i 1700000000000",
        "device,collector=demo-plant-c1,device=cems-1,flag=N,plant=demo-plant,point=status,"
        "unit=unit-1 quality=1i,value=1 1700000000000",
    ]


def test_a_totalizer_reading_carries_its_increment_when_it_has_one() -> None:
    formatter, digest = demo_formatter()
    source = block([], digest=digest)
    total = "demo-plant/feeder-1a/total"
    source.readings.add(point_id=total, time_unix_ms=T0, value=3277.5, quality=pb.QUALITY_NORMAL,
                        counter_event=pb.COUNTER_EVENT_FIRST)
    source.readings.add(point_id=total, time_unix_ms=T0 + 1000, value=3277.51,
                        quality=pb.QUALITY_NORMAL, increment=0.01,
                        counter_event=pb.COUNTER_EVENT_CONTINUED)
    source.readings.add(point_id=total, time_unix_ms=T0 + 2000, value=0.02,
                        quality=pb.QUALITY_NORMAL, increment=0.02, counter_event=pb.COUNTER_EVENT_RESET)
    prefix = ("fuel,collector=demo-plant-c1,device=feeder-1a,eng_unit=t,flag=N,plant=demo-plant,"
              "point=total,quantity=fuel.coal.total,unit=unit-1 quality=1i")
    assert lines_of(formatter, source) == [
        f"{prefix},value=3277.5 {T0}",  # the first of a run: no increment to write
        f"{prefix},increment=0.01,value=3277.51 {T0 + 1000}",
        f"{prefix},increment=0.02,value=0.02 {T0 + 2000}",
    ]


def test_block_lines_match_the_point_helper() -> None:
    formatter, digest = demo_formatter()
    source = block([("demo-plant/cems-1/o2", 7.4912109375, pb.QUALITY_MAINTENANCE),
                    ("demo-plant/cems-1/co2", 240187.25, pb.QUALITY_FAULT)], digest=digest)
    meta = points_of_config(compile_plan(load_plant(DEMO_PLANT)).config_document)

    expected = []
    for reading in source.readings:
        point = meta[reading.point_id]
        tags = point.tags("demo-plant-c1")
        tags["flag"] = {3: "M", 4: "D"}[reading.quality]
        expected.append(point_helper_line(point.measurement, tags,
                                          {"value": reading.value, "quality": reading.quality},
                                          reading.time_unix_ms))
    assert lines_of(formatter, source) == expected


def test_a_block_whose_config_is_unknown_is_written_with_point_id_tags() -> None:
    formatter = LineFormatter()
    formatter.add_config("c1", b"\x07" * 32, None)
    source = block([("plant x/dev,1/so2", 1.5, pb.QUALITY_NORMAL)], collector_id="c1",
                   digest=b"\x07" * 32)

    assert lines_of(formatter, source) == [
        r"unknown,collector=c1,device=dev\,1,flag=N,plant=plant\ x,point=so2 quality=1i,value=1.5 "
        "1700000000000"]
    assert formatter.knows("c1", b"\x07" * 32)
    assert not formatter.found("c1", b"\x07" * 32)


def test_an_unusable_document_counts_as_not_found() -> None:
    formatter = LineFormatter()
    assert not formatter.add_config("c1", b"\x07" * 32, b"{}")
    assert formatter.knows("c1", b"\x07" * 32)
    assert not formatter.found("c1", b"\x07" * 32)


def test_an_unspecified_quality_has_no_flag_tag() -> None:
    formatter, digest = demo_formatter()
    (line,) = lines_of(formatter, block([("demo-plant/cems-1/so2", 1.0, 0)], digest=digest))
    assert ",flag=" not in line
    assert " quality=0i,value=1 " in line


def test_the_same_point_with_another_flag_is_another_line_prefix() -> None:
    formatter, digest = demo_formatter()
    source = block([("demo-plant/cems-1/so2", 1.0, q) for q in (1, 2, 1, 5)], digest=digest)
    flags = [line.split(",flag=")[1][0] for line in lines_of(formatter, source)]
    assert flags == ["N", "C", "N", "B"]


def test_config_documents_with_odd_text_are_escaped() -> None:
    document = json.dumps({"plant": {"id": "p"}, "devices": [{
        "id": "d", "emission_unit": "unit 1", "profile": {"points": [
            {"name": "x", "quantity": "a21026", "unit": "mg/m3, dry"}]}}]}).encode()
    formatter = LineFormatter()
    formatter.add_config("c", b"\x02" * 32, document)
    (line,) = lines_of(formatter, block([("p/d/x", 2.5, 1)], collector_id="c", digest=b"\x02" * 32))
    assert line == (r"flue_gas,collector=c,device=d,eng_unit=mg/m3\,\ dry,flag=N,plant=p,point=x,"
                    r"quantity=a21026,unit=unit\ 1 quality=1i,value=2.5 1700000000000")


def test_the_formatter_keeps_a_bounded_number_of_configs() -> None:
    formatter = LineFormatter(max_configs=2)
    for n in range(3):
        formatter.add_config("c", bytes([n]) * 32, None)
    assert not formatter.knows("c", bytes([0]) * 32)
    assert formatter.knows("c", bytes([1]) * 32)
    assert formatter.knows("c", bytes([2]) * 32)
