"""`stackline collector check`: the commissioning table for the demo plant, and a non-zero exit
naming the device when one is unreachable. The simulator runs as its own process."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import DEMO_PLANT, wait_for_sync
from tests.support import run_stackline, stackline, stop, write_plant

DEMO_POINTS = {
    "cems-1": ["status", "so2", "nox", "o2", "co2", "particulate", "flow", "temperature",
               "static_pressure", "moisture"],
    "feeder-1a": ["feed_rate", "total"],
    "feeder-1b": ["feed_rate", "total"],
}


@pytest.fixture
def simulated_plant(tmp_path: Path) -> Iterator[Path]:
    """The demo plant (plus one device where nothing listens), served by `stackline simulate`."""
    path = write_plant(tmp_path, grpc_port=1, dead_device=True)
    live = write_plant(tmp_path / "live", grpc_port=1,
                       modbus_ports=_ports_of(path))  # the same simulated devices, none dead
    simulator = stackline("simulate", "--config", str(live), log=tmp_path / "simulator.log")
    try:
        wait_for_sync(lambda: (tmp_path / "simulator.log").read_text().count("serving") >= 2,
                      timeout_s=20, what="the simulator to serve both endpoints")
        yield path
    finally:
        stop(simulator)


def _ports_of(path: Path) -> dict[int, int]:
    plant = yaml.safe_load(path.read_text())
    demo = yaml.safe_load(DEMO_PLANT.read_text())
    return {d["tcp"]["port"]: p["tcp"]["port"]
            for d, p in zip(demo["devices"], plant["devices"], strict=False)}


def _without_dead(path: Path) -> Path:
    plant = yaml.safe_load(path.read_text())
    plant["devices"] = [d for d in plant["devices"] if d["id"] != "cems-dead"]
    out = path.with_name("plant-live.yaml")
    out.write_text(yaml.safe_dump(plant, sort_keys=False))
    return out


def test_check_prints_every_point_of_the_demo_plant(simulated_plant: Path) -> None:
    result = run_stackline("collector", "check", "--config", str(_without_dead(simulated_plant)))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = lines[0]
    assert re.match(r"DEVICE\s+POINT\s+RAW REGISTERS\s+VALUE\s+UNIT\s+FLAG\s+REQUEST$", header)
    rows = [line.split() for line in lines[2:] if line and not line.startswith("all ")]
    seen = {(row[0], row[1]) for row in rows}
    assert seen == {(device, point) for device, points in DEMO_POINTS.items() for point in points}
    so2 = next(row for row in rows if row[:2] == ["cems-1", "so2"])
    # two raw registers, a decoded value, the unit, flag N or C (a calibration window), a time
    assert re.fullmatch(r"[0-9a-f]{4}", so2[2]) and re.fullmatch(r"[0-9a-f]{4}", so2[3])
    assert 20 < float(so2[4]) < 50 and so2[5] == "mg/m3" and so2[6] in {"N", "C"}
    assert so2[-1] == "ms" and float(so2[-2]) > 0
    # columns line up: in every row the flag letter sits under the header's FLAG
    flag_at = header.index("FLAG")
    table = [line for line in lines[2:] if line and not line.startswith("all ")]
    assert all(line[flag_at] in "NCMDB" and line[flag_at + 1] == " " for line in table)
    assert "[3/3]" in result.stderr  # progress, one line per device, on stderr


def test_check_exits_non_zero_naming_the_unreachable_device(simulated_plant: Path) -> None:
    result = run_stackline("collector", "check", "--config", str(simulated_plant))
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("cems-dead:")]
    assert len(failed) == 1, result.stdout
    assert "FAILED" in failed[0] and "did not answer" in failed[0] and "cannot open" in failed[0]
    assert "FAILED: cems-dead." in result.stdout  # the summary names it
    # the devices that answered are still all in the table
    assert sum(line.startswith("cems-1 ") for line in result.stdout.splitlines()) == 10


def test_check_refuses_a_broken_configuration_naming_the_field(tmp_path: Path) -> None:
    path = write_plant(tmp_path, grpc_port=1)
    path.write_text(path.read_text().replace("unit_id: 2", "unit_id: 999"))
    result = run_stackline("collector", "check", "--config", str(path))
    assert result.returncode == 2
    assert "devices[2].unit_id" in result.stderr

