"""Effective-dated methodology parameters (gateway/accounting/methodology.py) and the bundled
cn-mee-2022 data file: values in force on either side of a change, the defaults REGULATION.md gives,
refusals that name the file and the field, and a digest that follows the values and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.accounting.methodology import (
    Methodology,
    MethodologyError,
    MethodologyFileError,
    NoValueInForceError,
    UnknownParameterError,
    bundled_methodologies,
    load_methodology,
)
from gateway.errors import ConfigError

BUNDLED = Path(__file__).resolve().parent.parent / "gateway/accounting/methodology/cn-mee-2022.yaml"
Doc = dict[str, Any]


@pytest.fixture(scope="module")
def cn_mee_2022() -> Methodology:
    return load_methodology("cn-mee-2022")


def _edited_copy(tmp_path: Path, change: Callable[[Doc], None], *, name: str = "cn-mee-2022") -> Path:
    document: Doc = yaml.safe_load(BUNDLED.read_text(encoding="utf-8"))
    change(document)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# --- the bundled data ---------------------------------------------------------------------------------


def test_bundled_methodologies_are_found_by_name(cn_mee_2022: Methodology) -> None:
    assert "cn-mee-2022" in bundled_methodologies()
    assert cn_mee_2022.name == "cn-mee-2022"
    assert Path(cn_mee_2022.source) == BUNDLED


@pytest.mark.parametrize(("on", "expected"), [
    (date(2022, 6, 7), 0.03356),
    (date(2022, 6, 8), 0.03085),
    (date(2019, 1, 1), 0.03356),
    (date(2030, 1, 1), 0.03085),
])
def test_default_carbon_content_on_either_side_of_the_2022_notice(
    cn_mee_2022: Methodology, on: date, expected: float,
) -> None:
    assert cn_mee_2022.value("cc_coal_tc_per_gj", on) == expected


# Every default REGULATION.md sections 2 and 3 give, with the status it gives them.
DEFAULTS_2024: list[tuple[str, object, str]] = [
    ("cc_coal_tc_per_gj", 0.03085, "confirmed"),
    ("oxidation_rate_coal", 0.99, "secondary"),
    ("grid_emission_factor_t_per_mwh", 0.5703, "unconfirmed"),
    ("reference_o2_percent.coal_boiler", 6, "unconfirmed"),
    ("reference_o2_percent.oil_gas_boiler", 3, "unconfirmed"),
    ("reference_o2_percent.gas_turbine", 15, "unconfirmed"),
    ("min_samples_per_minute", 12, "confirmed"),
    ("min_valid_minutes_per_hour", 45, "confirmed"),
    ("min_valid_hours_per_day", 20, "confirmed"),
    ("min_valid_days_per_month", 25, "secondary"),
    ("min_valid_days_february", 23, "secondary"),
    ("normal_share_for_n_flag", 0.75, "unconfirmed"),
    ("substitution.capture_rate_high", 0.90, "unconfirmed"),
    ("substitution.capture_rate_low", 0.75, "unconfirmed"),
    ("substitution.short_gap_hours", 24, "unconfirmed"),
    ("substitution.lookback_hours_long_gap", 720, "unconfirmed"),
    ("substitution.lookback_hours_low_capture", 2160, "unconfirmed"),
    ("substitution.out_of_control_lookbacks", (180, 720, 2160), "unconfirmed"),
]


@pytest.mark.parametrize(("name", "expected", "status"), DEFAULTS_2024)
def test_defaults_of_cn_mee_2022(cn_mee_2022: Methodology, name: str, expected: object, status: str) -> None:
    version = cn_mee_2022.version(name, date(2024, 1, 1))
    assert (version.value, version.status) == (expected, status)
    assert type(version.value) is type(expected)


def test_every_bundled_parameter_is_pinned(cn_mee_2022: Methodology) -> None:
    assert set(cn_mee_2022.parameters) == {name for name, _, _ in DEFAULTS_2024}


def test_grid_factor_versions_are_unconfirmed_with_dates_labelled_assumed(cn_mee_2022: Methodology) -> None:
    versions = cn_mee_2022.parameters["grid_emission_factor_t_per_mwh"]
    assert [version.value for version in versions] == [0.6101, 0.5810, 0.5703]
    assert all(version.status == "unconfirmed" and "ASSUMED" in version.source for version in versions)


def test_typed_accessors(cn_mee_2022: Methodology) -> None:
    on = date(2024, 1, 1)
    assert cn_mee_2022.integer("min_valid_minutes_per_hour", on) == 45
    assert cn_mee_2022.number("reference_o2_percent.coal_boiler", on) == 6.0
    assert cn_mee_2022.integers("substitution.out_of_control_lookbacks", on) == (180, 720, 2160)
    with pytest.raises(TypeError, match="not a whole number"):
        cn_mee_2022.integer("oxidation_rate_coal", on)
    with pytest.raises(TypeError, match="is a list"):
        cn_mee_2022.number("substitution.out_of_control_lookbacks", on)


def test_unknown_parameter_is_a_key_error_naming_it(cn_mee_2022: Methodology) -> None:
    with pytest.raises(UnknownParameterError, match="no parameter 'oxidation_rate_lignite'") as caught:
        cn_mee_2022.value("oxidation_rate_lignite", date(2024, 1, 1))
    assert isinstance(caught.value, KeyError)


def test_a_day_before_any_version_is_a_value_error_naming_it(cn_mee_2022: Methodology) -> None:
    with pytest.raises(NoValueInForceError, match=r"min_valid_minutes_per_hour has no value in force on "
                                                  r"2018-02-28 \(in force: 2018-03-01\.\.open\)") as caught:
        cn_mee_2022.value("min_valid_minutes_per_hour", date(2018, 2, 28))
    assert isinstance(caught.value, ValueError)


def test_a_datetime_is_not_a_day(cn_mee_2022: Methodology) -> None:
    with pytest.raises(TypeError, match="plant-local day"):
        cn_mee_2022.value("cc_coal_tc_per_gj", datetime(2022, 6, 8, tzinfo=UTC))


def test_an_unknown_bundled_name_lists_the_bundled_ones() -> None:
    with pytest.raises(MethodologyError,
                       match=r"no bundled methodology 'cn-mee-2099' \(bundled: .*cn-mee-2022"):
        load_methodology("cn-mee-2099")


# --- refusals, naming the file and the field ----------------------------------------------------------


def test_overlapping_ranges_are_refused_naming_the_parameter(tmp_path: Path) -> None:
    def overlap(document: Doc) -> None:
        document["parameters"]["cc_coal_tc_per_gj"][0]["effective_to"] = date(2022, 6, 8)

    path = _edited_copy(tmp_path, overlap)
    with pytest.raises(MethodologyFileError) as caught:
        load_methodology(path)
    assert str(caught.value) == (
        f"{path}: parameters.cc_coal_tc_per_gj: overlapping effective ranges: 2019-01-01..2022-06-08 and "
        "2022-06-08..open are both in force on 2022-06-08")
    assert isinstance(caught.value, ConfigError)
    assert caught.value.field == "parameters.cc_coal_tc_per_gj"


def test_an_open_ended_version_followed_by_another_is_refused(tmp_path: Path) -> None:
    def reopen(document: Doc) -> None:
        document["parameters"]["grid_emission_factor_t_per_mwh"][1]["effective_to"] = None

    with pytest.raises(MethodologyFileError, match=r"parameters\.grid_emission_factor_t_per_mwh: overlapping "
                                                   r"effective ranges: 2022-06-08\.\.open and 2023-02-07"):
        load_methodology(_edited_copy(tmp_path, reopen))


def test_versions_out_of_order_are_refused(tmp_path: Path) -> None:
    def swap(document: Doc) -> None:
        versions = document["parameters"]["cc_coal_tc_per_gj"]
        versions.reverse()

    with pytest.raises(MethodologyFileError, match=r"parameters\.cc_coal_tc_per_gj: versions must be listed "
                                                   r"oldest first"):
        load_methodology(_edited_copy(tmp_path, swap))


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d["parameters"]["cc_coal_tc_per_gj"][1].update(unit="tC/GJ"),
     "parameters.cc_coal_tc_per_gj[1].unit", "unknown key"),
    (lambda d: d.update(version=2), "version", "unknown key"),
    (lambda d: d["parameters"]["oxidation_rate_coal"][0].update(value="0.99"),
     "parameters.oxidation_rate_coal[0].value", "must be a finite number or a non-empty list of them"),
    (lambda d: d["parameters"]["substitution.out_of_control_lookbacks"][0].update(value=[180, float("nan")]),
     "parameters.substitution.out_of_control_lookbacks[0].value", "must be a finite number"),
    (lambda d: d["parameters"]["oxidation_rate_coal"][0].update(status="likely"),
     "parameters.oxidation_rate_coal[0].status", "Input should be 'confirmed', 'secondary' or 'unconfirmed'"),
    (lambda d: d["parameters"]["oxidation_rate_coal"][0].pop("effective_to"),
     "parameters.oxidation_rate_coal[0].effective_to", "Field required"),
    (lambda d: d["parameters"]["oxidation_rate_coal"][0].update(effective_to=date(2018, 1, 1)),
     "parameters.oxidation_rate_coal[0]", "effective_to 2018-01-01 is before effective_from 2019-01-01"),
    (lambda d: d["parameters"].update({"Oxidation Rate": d["parameters"]["oxidation_rate_coal"]}),
     "parameters.Oxidation Rate (the name)", "String should match pattern"),
])
def test_bad_files_are_refused_naming_the_file_and_field(
    tmp_path: Path, change: Callable[[Doc], None], field: str, message: str,
) -> None:
    path = _edited_copy(tmp_path, change)
    with pytest.raises(MethodologyFileError) as caught:
        load_methodology(path)
    assert caught.value.source == str(path)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{path}: {field}: {message}")


def test_a_file_named_after_another_methodology_is_refused(tmp_path: Path) -> None:
    path = _edited_copy(tmp_path, lambda document: None, name="cn-mee-2023")
    with pytest.raises(MethodologyFileError, match=r"methodology: 'cn-mee-2022' does not match the file's "
                                                   r"name 'cn-mee-2023'"):
        load_methodology(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cn-mee-2022.yaml"
    with pytest.raises(MethodologyFileError, match=f"{path}: cannot read the file"):
        load_methodology(path)


# --- digest -------------------------------------------------------------------------------------------


def test_digest_is_stable_across_loads_and_layouts(tmp_path: Path, cn_mee_2022: Methodology) -> None:
    again = load_methodology("cn-mee-2022")
    # the same values without the comments and in another layout: a copy at another path
    relaid = load_methodology(_edited_copy(tmp_path, lambda document: None))
    assert len(cn_mee_2022.digest) == 64
    assert again.digest == relaid.digest == cn_mee_2022.digest
    assert load_methodology(str(BUNDLED)).digest == cn_mee_2022.digest


def test_digest_changes_with_an_edited_value(tmp_path: Path, cn_mee_2022: Methodology) -> None:
    def correct(document: Doc) -> None:
        document["parameters"]["oxidation_rate_coal"][0]["value"] = 0.98

    edited = load_methodology(_edited_copy(tmp_path, correct))
    assert edited.digest != cn_mee_2022.digest
    assert edited.value("oxidation_rate_coal", date(2024, 1, 1)) == 0.98


def test_digest_changes_with_an_edited_date(tmp_path: Path, cn_mee_2022: Methodology) -> None:
    def redate(document: Doc) -> None:
        versions = document["parameters"]["cc_coal_tc_per_gj"]
        versions[0]["effective_to"] = date(2021, 12, 31)
        versions[1]["effective_from"] = date(2022, 1, 1)

    assert load_methodology(_edited_copy(tmp_path, redate)).digest != cn_mee_2022.digest
