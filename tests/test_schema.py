"""The generated JSON Schema (collector/schema.py): committed, current, and true to the committed files.

jsonschema is not a dependency, so the committed profiles and plants are checked with a small
walker that follows the schema's `$ref`, `anyOf`, `properties`, `additionalProperties`, `items`
and `required`: every key a file uses must be one the schema names, and every required key must
be there. Values are the loader's business (tests/test_config.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import schema as schema_module
from collector.config import load_plant, load_profile
from collector.schema import SCHEMA_DIR, SCHEMAS, SchemaFile, main, render, stale_files
from tests.conftest import FIRMWARE, REPO

PROFILES = sorted((FIRMWARE / "profiles").glob("*.yaml"))
PLANTS = sorted((FIRMWARE / "plants").glob("*.yaml"))
PROFILE_SCHEMA = next(s for s in SCHEMAS if s.name == "profile.schema.json")
PLANT_SCHEMA = next(s for s in SCHEMAS if s.name == "plant.schema.json")


def _committed(schema_file: SchemaFile) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((REPO / SCHEMA_DIR / schema_file.name).read_text("utf-8"))
    return document


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), f"unexpected reference {ref}"
        node = root["$defs"][ref.removeprefix("#/$defs/")]
    return node


def _branch(root: dict[str, Any], node: dict[str, Any], value: Any) -> dict[str, Any] | None:
    """The schema a value is checked against: the anyOf branch of the value's JSON type."""
    node = _resolve(root, node)
    if "anyOf" not in node:
        return node
    wanted = "object" if isinstance(value, dict) else "array" if isinstance(value, list) else None
    for option in node["anyOf"]:
        resolved = _resolve(root, option)
        if wanted is not None and resolved.get("type") == wanted:
            return resolved
    return None  # a scalar: nothing below it to check


def _key_problems(root: dict[str, Any], node: dict[str, Any], value: Any, where: str) -> list[str]:
    """Keys `value` uses that the schema does not name, and required keys it lacks, by path."""
    branch = _branch(root, node, value)
    if branch is None:
        return []
    problems: list[str] = []
    if isinstance(value, dict):
        properties: dict[str, Any] = branch.get("properties", {})
        extra = branch.get("additionalProperties", True)
        problems += [f"{where}: missing required key {key!r}"
                     for key in branch.get("required", []) if key not in value]
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if key in properties:
                problems += _key_problems(root, properties[key], item, path)
            elif extra is False:
                problems.append(f"{path}: not in the schema")
            elif isinstance(extra, dict):
                problems += _key_problems(root, extra, item, path)
    elif isinstance(value, list) and "items" in branch:
        for index, item in enumerate(value):
            problems += _key_problems(root, branch["items"], item, f"{where}[{index}]")
    return problems


def _problems(schema_file: SchemaFile, document: Any) -> list[str]:
    root = _committed(schema_file)
    return _key_problems(root, root, document, "")


# --- drift ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema_file", SCHEMAS, ids=lambda s: s.name)
def test_committed_schema_is_what_the_models_generate(schema_file: SchemaFile) -> None:
    committed = (REPO / SCHEMA_DIR / schema_file.name).read_text("utf-8")
    assert committed == render(schema_file), (
        f"{SCHEMA_DIR / schema_file.name} is stale: run `python -m collector.schema` and commit it")


def test_check_passes_on_the_committed_files() -> None:
    assert main(["--check"]) == 0


def test_check_names_a_stale_file_and_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(schema_module, "ROOT", tmp_path)
    assert main([]) == 0
    plant_file = tmp_path / SCHEMA_DIR / PLANT_SCHEMA.name
    plant_file.write_text(plant_file.read_text("utf-8").replace('"tick_ms"', '"tick_s"'), "utf-8")
    capsys.readouterr()

    assert main(["--check"]) == 1
    out = capsys.readouterr().out
    assert f"drift: {SCHEMA_DIR / PLANT_SCHEMA.name} differs" in out
    assert str(SCHEMA_DIR / PROFILE_SCHEMA.name) not in out
    assert "run `python -m collector.schema`" in out


def test_check_reports_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / PROFILE_SCHEMA.name).write_text(render(PROFILE_SCHEMA), "utf-8")
    assert stale_files(tmp_path) == [tmp_path / PLANT_SCHEMA.name]


def test_rendering_is_stable_and_pretty() -> None:
    text = render(PLANT_SCHEMA)
    assert text == render(PLANT_SCHEMA)
    assert text.endswith("}\n")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("schema_file", SCHEMAS, ids=lambda s: s.name)
def test_schema_names_its_dialect_id_and_title(schema_file: SchemaFile) -> None:
    document = _committed(schema_file)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == schema_file.schema_id
    assert document["title"].startswith("Stackline ")


@pytest.mark.parametrize("schema_file", SCHEMAS, ids=lambda s: s.name)
def test_every_section_refuses_unknown_keys(schema_file: SchemaFile) -> None:
    # The loader refuses unknown keys everywhere (extra="forbid"); an editor should underline them.
    document = _committed(schema_file)
    open_sections = [name for name, node in [("(top)", document), *document["$defs"].items()]
                     if node.get("type") == "object" and node.get("additionalProperties") is not False]
    assert open_sections == []


# --- the committed configuration files -----------------------------------------------------------


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_every_committed_profile_fits_the_schema(profile: Path) -> None:
    load_profile(profile)
    assert _problems(PROFILE_SCHEMA, yaml.safe_load(profile.read_text("utf-8"))) == []


@pytest.mark.parametrize("plant", PLANTS, ids=lambda p: p.name)
def test_every_committed_plant_fits_the_schema(plant: Path) -> None:
    load_plant(plant)
    assert _problems(PLANT_SCHEMA, yaml.safe_load(plant.read_text("utf-8"))) == []


def test_the_new_kinds_are_committed() -> None:
    # The checks above walk these files; without them the schema's new sections go unexercised.
    names = {p.name for p in PROFILES} | {p.name for p in PLANTS}
    assert {"generic-gas-analyzer.yaml", "generic-flow-computer.yaml", "serial-example.yaml"} <= names


def test_the_key_check_finds_misspelt_and_missing_keys() -> None:
    profile = yaml.safe_load((FIRMWARE / "profiles" / "generic-gas-analyzer.yaml").read_text("utf-8"))
    profile["points"][1]["scael"] = 0.1
    profile["status"]["bits"]["falut"] = 3
    del profile["points"][2]["unit"]
    profile["points"][0]["totalizer"] = {"rollover": 65536}
    assert _problems(PROFILE_SCHEMA, profile) == [
        "status.bits.falut: not in the schema",
        "points[0].totalizer.rollover: not in the schema",
        "points[1].scael: not in the schema",
        "points[2]: missing required key 'unit'",
    ]


def test_the_key_check_follows_device_overrides() -> None:
    plant = yaml.safe_load((FIRMWARE / "plants" / "serial-example.yaml").read_text("utf-8"))
    overrides = plant["devices"][2]["overrides"]
    overrides["points"]["so2"]["sacle"] = 2.0
    overrides["points"]["nox"] = {"name": "nox2"}
    overrides["max_registers"] = 40
    assert _problems(PLANT_SCHEMA, plant) == [
        "devices[2].overrides.points.so2.sacle: not in the schema",
        "devices[2].overrides.points.nox.name: not in the schema",
        "devices[2].overrides.max_registers: not in the schema",
    ]
