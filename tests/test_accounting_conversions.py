"""Flue-gas conversions (gateway/accounting/conversions.py) and the ETS fuel calculation
(gateway/accounting/ets.py): every worked number of REGULATION.md sections 2 and 3, to the decimals
stated there, mass conservation between flue and standard conditions, and the refusals.

Values a regulator sets are pinned as "default of methodology cn-mee-2022", so a correction is a
change to the data file, not to these tests' arithmetic.
"""

from __future__ import annotations

import math
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.accounting.conversions import (
    MOLAR_MASS_G_PER_MOL,
    actual_flow_m3_per_h,
    actual_to_standard_concentration,
    correct_to_reference_o2,
    hourly_emission_kg,
    nox_as_no2_mg_per_m3,
    ppm_to_mg_per_m3,
    standard_dry_flow_m3_per_h,
    wet_to_dry,
)
from gateway.accounting.ets import (
    MonthlyFuelRecord,
    annual_fuel_co2,
    carbon_content_from_ncv,
    fuel_co2_t,
    kcal_per_kg_to_gj_per_t,
    monthly_fuel_co2,
    purchased_electricity_co2_t,
)
from gateway.accounting.methodology import Methodology, load_methodology

# --- REGULATION.md section 2: HJ 212-2017 Appendix D conversions --------------------------------------


def test_wet_to_dry_worked_example() -> None:
    assert f"{wet_to_dry(25.0, moisture_fraction=0.086):.3f}" == "27.352"


def test_dry_gas_is_unchanged() -> None:
    assert wet_to_dry(25.0, moisture_fraction=0.0) == 25.0


def test_so2_ppm_to_mg_per_m3_worked_example() -> None:
    so2 = ppm_to_mg_per_m3(10.0, molar_mass_g_per_mol=MOLAR_MASS_G_PER_MOL["SO2"])
    assert f"{so2:.3f}" == "28.571"


def test_molar_masses_of_appendix_d() -> None:
    assert dict(MOLAR_MASS_G_PER_MOL) == {"SO2": 64, "NO": 30, "NO2": 46, "CO": 28, "CO2": 44}


def test_nox_as_no2_worked_example() -> None:
    assert f"{nox_as_no2_mg_per_m3(no_mg_per_m3=100.0, no2_mg_per_m3=5.0):.3f}" == "158.333"


def test_reference_o2_worked_example() -> None:
    methodology = load_methodology("cn-mee-2022")
    reference = methodology.number("reference_o2_percent.coal_boiler", date(2024, 1, 1))
    corrected = correct_to_reference_o2(25.3, o2_measured_percent=7.5, o2_reference_percent=reference)
    assert f"{corrected:.3f}" == "28.111"


def test_hourly_emission_worked_example() -> None:
    emitted = hourly_emission_kg(concentration_mg_per_m3=25.3, standard_dry_flow_m3_per_h=500_000.0)
    assert f"{emitted:.3f}" == "12.650"


def test_actual_flow_from_duct_area_and_velocity() -> None:
    assert actual_flow_m3_per_h(duct_area_m2=12.5, velocity_m_per_s=15.0) == 675_000.0


def test_standard_state_is_the_identity() -> None:
    standard = {"barometric_pressure_pa": 101_325.0, "static_pressure_pa": 0.0, "temperature_c": 0.0}
    assert actual_to_standard_concentration(25.3, **standard) == 25.3
    assert standard_dry_flow_m3_per_h(500_000.0, moisture_fraction=0.0, **standard) == 500_000.0


def test_hot_flue_gas_is_denser_at_standard_state() -> None:
    # 273 °C doubles the absolute temperature: a cubic metre at standard state holds twice the gas
    concentration = actual_to_standard_concentration(
        10.0, barometric_pressure_pa=101_325.0, static_pressure_pa=0.0, temperature_c=273.0)
    flow = standard_dry_flow_m3_per_h(
        1000.0, barometric_pressure_pa=101_325.0, static_pressure_pa=0.0, temperature_c=273.0,
        moisture_fraction=0.0)
    assert (concentration, flow) == (20.0, 500.0)


@settings(max_examples=500, deadline=None)
@given(
    concentration_actual=st.floats(min_value=1e-6, max_value=1e6),  # no subnormals
    duct_area_m2=st.floats(min_value=0.1, max_value=100.0),
    velocity_m_per_s=st.floats(min_value=0.1, max_value=40.0),
    temperature_c=st.floats(min_value=-40.0, max_value=400.0),
    barometric_pressure_pa=st.floats(min_value=60_000.0, max_value=110_000.0),
    static_pressure_pa=st.floats(min_value=-5_000.0, max_value=5_000.0),
    moisture_fraction=st.floats(min_value=0.0, max_value=0.4),
)
def test_standard_dry_conversion_conserves_mass(
    concentration_actual: float, duct_area_m2: float, velocity_m_per_s: float, temperature_c: float,
    barometric_pressure_pa: float, static_pressure_pa: float, moisture_fraction: float,
) -> None:
    """The mass leaving the stack in an hour is the same whether counted at flue conditions (wet)
    or as standard dry concentration times standard dry flow."""
    state = {"barometric_pressure_pa": barometric_pressure_pa, "static_pressure_pa": static_pressure_pa,
             "temperature_c": temperature_c}
    flow_actual = actual_flow_m3_per_h(duct_area_m2=duct_area_m2, velocity_m_per_s=velocity_m_per_s)
    concentration_dry = wet_to_dry(actual_to_standard_concentration(concentration_actual, **state),
                                   moisture_fraction=moisture_fraction)
    flow_dry = standard_dry_flow_m3_per_h(flow_actual, moisture_fraction=moisture_fraction, **state)
    at_flue_kg = concentration_actual * flow_actual * 1e-6
    at_standard_kg = hourly_emission_kg(concentration_mg_per_m3=concentration_dry,
                                        standard_dry_flow_m3_per_h=flow_dry)
    assert math.isclose(at_standard_kg, at_flue_kg, rel_tol=1e-12)


@pytest.mark.parametrize("moisture_fraction", [1.0, 1.5, -0.01, math.nan])
def test_impossible_moisture_is_refused(moisture_fraction: float) -> None:
    with pytest.raises(ValueError, match="moisture_fraction"):
        wet_to_dry(25.0, moisture_fraction=moisture_fraction)
    with pytest.raises(ValueError, match="moisture_fraction"):
        standard_dry_flow_m3_per_h(500_000.0, temperature_c=120.0, barometric_pressure_pa=101_325.0,
                                   static_pressure_pa=-200.0, moisture_fraction=moisture_fraction)


@pytest.mark.parametrize("o2_measured_percent", [21.0, 22.5, math.nan])
def test_air_is_not_corrected_to_reference_o2(o2_measured_percent: float) -> None:
    with pytest.raises(ValueError, match="o2_measured_percent"):
        correct_to_reference_o2(25.3, o2_measured_percent=o2_measured_percent, o2_reference_percent=6.0)


def test_reference_o2_of_21_is_refused() -> None:
    with pytest.raises(ValueError, match="o2_reference_percent"):
        correct_to_reference_o2(25.3, o2_measured_percent=7.5, o2_reference_percent=21.0)


def test_no_absolute_pressure_or_temperature_is_refused() -> None:
    with pytest.raises(ValueError, match="barometric_pressure_pa"):
        actual_to_standard_concentration(25.3, barometric_pressure_pa=1000.0, static_pressure_pa=-1000.0,
                                         temperature_c=120.0)
    with pytest.raises(ValueError, match="temperature_c"):
        standard_dry_flow_m3_per_h(500_000.0, temperature_c=-273.0, barometric_pressure_pa=101_325.0,
                                   static_pressure_pa=0.0, moisture_fraction=0.1)


# --- REGULATION.md section 3: national ETS, fuel combustion and purchased electricity -----------------


@pytest.fixture(scope="module")
def cn_mee_2022() -> Methodology:
    return load_methodology("cn-mee-2022")


def test_ncv_in_kcal_per_kg_to_gj_per_t() -> None:
    assert f"{kcal_per_kg_to_gj_per_t(5000.0):.3f}" == "20.934"


def test_default_carbon_content_worked_example(cn_mee_2022: Methodology) -> None:
    cc = cn_mee_2022.number("cc_coal_tc_per_gj", date(2023, 1, 1))
    assert cc == 0.03085  # default of methodology cn-mee-2022
    c_ar = carbon_content_from_ncv(kcal_per_kg_to_gj_per_t(5000.0), cc)
    assert f"{c_ar:.6f}" == "0.645814"


def test_fuel_co2_with_default_carbon_content_worked_example(cn_mee_2022: Methodology) -> None:
    on = date(2023, 1, 1)
    cc = cn_mee_2022.number("cc_coal_tc_per_gj", on)
    c_ar = carbon_content_from_ncv(kcal_per_kg_to_gj_per_t(5000.0), cc)
    oxidation_rate = cn_mee_2022.number("oxidation_rate_coal", on)
    assert oxidation_rate == 0.99  # default of methodology cn-mee-2022
    assert f"{fuel_co2_t(100_000.0, c_ar, oxidation_rate):.1f}" == "234430.4"


def test_fuel_co2_with_measured_carbon_content_worked_example(cn_mee_2022: Methodology) -> None:
    oxidation_rate = cn_mee_2022.number("oxidation_rate_coal", date(2023, 1, 1))
    assert f"{fuel_co2_t(100_000.0, 0.52, oxidation_rate):.1f}" == "188760.0"


def _year_of_coal(year: int, *, carbon_content_tc_per_t: float | None) -> list[MonthlyFuelRecord]:
    """The worked example's 100,000 t of coal spread over twelve unequal months."""
    shares = [9, 8, 9, 8, 7, 8, 10, 10, 8, 7, 8, 8]  # percent of the year's coal
    return [MonthlyFuelRecord(month=date(year, month, 1), fuel="coal", consumption_t=1000.0 * share,
                              ncv_gj_per_t=kcal_per_kg_to_gj_per_t(5000.0),
                              carbon_content_tc_per_t=carbon_content_tc_per_t)
            for month, share in enumerate(shares, start=1)]


def test_monthly_figures_sum_to_the_worked_example(cn_mee_2022: Methodology) -> None:
    default = annual_fuel_co2(_year_of_coal(2023, carbon_content_tc_per_t=None), year=2023,
                              methodology=cn_mee_2022)
    measured = annual_fuel_co2(_year_of_coal(2023, carbon_content_tc_per_t=0.52), year=2023,
                               methodology=cn_mee_2022)
    assert f"{default.co2_t:.1f}" == "234430.4"
    assert f"{measured.co2_t:.1f}" == "188760.0"
    assert {month.carbon_content_basis for month in default.months} == {"default"}
    assert {month.cc_tc_per_gj for month in default.months} == {0.03085}
    assert {month.carbon_content_basis for month in measured.months} == {"measured"}
    assert {month.cc_tc_per_gj for month in measured.months} == {None}
    assert (default.methodology, default.methodology_digest) == (cn_mee_2022.name, cn_mee_2022.digest)


def test_annual_sum_does_not_depend_on_record_order(cn_mee_2022: Methodology) -> None:
    records = _year_of_coal(2023, carbon_content_tc_per_t=None)
    forward = annual_fuel_co2(records, year=2023, methodology=cn_mee_2022)
    backward = annual_fuel_co2(reversed(records), year=2023, methodology=cn_mee_2022)
    assert forward == backward


def test_default_carbon_content_of_the_month_in_force_on_its_first_day(cn_mee_2022: Methodology) -> None:
    """The notice of 2022-06-08 changed the default mid-June: June 2022 still takes the earlier one."""
    by_month = {month.record.month.month: month.cc_tc_per_gj
                for month in annual_fuel_co2(_year_of_coal(2022, carbon_content_tc_per_t=None), year=2022,
                                             methodology=cn_mee_2022).months}
    assert by_month[5] == by_month[6] == 0.03356
    assert by_month[7] == 0.03085


def test_a_month_counted_twice_is_refused(cn_mee_2022: Methodology) -> None:
    records = _year_of_coal(2023, carbon_content_tc_per_t=None)
    with pytest.raises(ValueError, match="two records for coal in 2023-03"):
        annual_fuel_co2([*records, records[2]], year=2023, methodology=cn_mee_2022)


def test_a_month_of_another_year_is_refused(cn_mee_2022: Methodology) -> None:
    with pytest.raises(ValueError, match="2022-12-01 is not in 2023"):
        annual_fuel_co2(_year_of_coal(2022, carbon_content_tc_per_t=None)[-1:], year=2023,
                        methodology=cn_mee_2022)


def test_a_fuel_without_a_default_is_named(cn_mee_2022: Methodology) -> None:
    record = MonthlyFuelRecord(month=date(2023, 1, 1), fuel="diesel", consumption_t=10.0, ncv_gj_per_t=42.6)
    with pytest.raises(KeyError, match="oxidation_rate_diesel"):
        monthly_fuel_co2(record, cn_mee_2022)


def test_month_is_named_by_its_first_day() -> None:
    with pytest.raises(ValueError, match="first day of the month"):
        MonthlyFuelRecord(month=date(2023, 1, 15), fuel="coal", consumption_t=1.0, ncv_gj_per_t=20.0)


def test_oxidation_rate_in_percent_is_refused() -> None:
    with pytest.raises(ValueError, match="oxidation_rate"):
        fuel_co2_t(100_000.0, 0.52, 99.0)


@pytest.mark.parametrize(("on", "factor"), [(date(2021, 12, 31), 0.6101), (date(2022, 12, 31), 0.5810),
                                            (date(2024, 1, 1), 0.5703)])
def test_purchased_electricity_with_the_grid_factor_in_force(
    cn_mee_2022: Methodology, on: date, factor: float,
) -> None:
    grid_factor = cn_mee_2022.number("grid_emission_factor_t_per_mwh", on)
    assert grid_factor == factor  # default of methodology cn-mee-2022 (dates assumed)
    assert purchased_electricity_co2_t(1000.0, grid_factor) == pytest.approx(1000.0 * factor, rel=1e-15)
