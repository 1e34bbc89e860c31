"""Flue-gas conversions of HJ 212-2017 Appendix D (equations 18-34) and HJ 75-2017: plain functions on
floats, no rounding (round only when a figure is shown).

Reporting basis: standard state 273 K and 101,325 Pa, dry gas; NOx as NO2. The equation numbers
below are the range the reference gives for the whole set (REGULATION.md section 2); it does not map
each formula to its own number, so none is claimed here.

The constants in this module are physical (molar masses, the molar volume at 273 K, the O2 share of
air, the standard state). Values a regulator sets (reference O2 per emission standard, validity
thresholds) are methodology parameters, looked up in `gateway.accounting.methodology`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "AMBIENT_O2_PERCENT",
    "MOLAR_MASS_G_PER_MOL",
    "MOLAR_VOLUME_L_PER_MOL",
    "STANDARD_PRESSURE_PA",
    "STANDARD_TEMPERATURE_K",
    "actual_flow_m3_per_h",
    "actual_to_standard_concentration",
    "correct_to_reference_o2",
    "hourly_emission_kg",
    "nox_as_no2_mg_per_m3",
    "ppm_to_mg_per_m3",
    "standard_dry_flow_m3_per_h",
    "wet_to_dry",
]

MOLAR_MASS_G_PER_MOL: Mapping[str, float] = MappingProxyType({
    "SO2": 64.0,
    "NO": 30.0,
    "NO2": 46.0,
    "CO": 28.0,
    "CO2": 44.0,
})
"""Molar masses (g/mol) as HJ 212-2017 Appendix D rounds them (whole grams)."""

MOLAR_VOLUME_L_PER_MOL = 22.4
"""Molar volume of an ideal gas at 273 K and 101,325 Pa (L/mol), as HJ 212-2017 Appendix D uses it."""

STANDARD_PRESSURE_PA = 101325.0
STANDARD_TEMPERATURE_K = 273.0
AMBIENT_O2_PERCENT = 21.0

_SECONDS_PER_HOUR = 3600.0
_KG_PER_MG = 1e-6


def wet_to_dry(concentration_wet: float, *, moisture_fraction: float) -> float:
    """Wet-basis concentration to dry basis: `C_dry = C_wet / (1 - X_sw)` (HJ 212-2017 App. D).

    `moisture_fraction` is X_sw as a fraction (8.6 % is 0.086), in [0, 1); anything else raises
    ValueError. The result is in the unit of `concentration_wet`.
    """
    if not 0.0 <= moisture_fraction < 1.0:
        raise ValueError(f"moisture_fraction must be a fraction in [0, 1), got {moisture_fraction!r}")
    return concentration_wet / (1.0 - moisture_fraction)


def ppm_to_mg_per_m3(concentration_ppm: float, *, molar_mass_g_per_mol: float) -> float:
    """Volume fraction (ppm) to mass concentration at 273 K, 101,325 Pa:
    `C = C_ppm * M / 22.4` (HJ 212-2017 App. D); M from `MOLAR_MASS_G_PER_MOL`, e.g. 64 for SO2."""
    if not molar_mass_g_per_mol > 0.0:
        raise ValueError(f"molar_mass_g_per_mol must be positive, got {molar_mass_g_per_mol!r}")
    return concentration_ppm * molar_mass_g_per_mol / MOLAR_VOLUME_L_PER_MOL


def nox_as_no2_mg_per_m3(*, no_mg_per_m3: float, no2_mg_per_m3: float) -> float:
    """NOx reported as NO2 (mass): `C_NOx = C_NO * 46/30 + C_NO2` (HJ 212-2017 App. D; HJ 75-2017).

    Both inputs are mass concentrations; convert ppm readings with `ppm_to_mg_per_m3` first.
    """
    ratio = MOLAR_MASS_G_PER_MOL["NO2"] / MOLAR_MASS_G_PER_MOL["NO"]
    return no_mg_per_m3 * ratio + no2_mg_per_m3


def correct_to_reference_o2(
    concentration: float, *, o2_measured_percent: float, o2_reference_percent: float
) -> float:
    """Concentration at the reference O2 of an emission standard:
    `C_ref = C * (21 - O2_ref) / (21 - O2_meas)` (HJ 212-2017 App. D; GB 13223 for the references).

    O2 in percent by volume, dry. `o2_measured_percent` of 21 or more is air, not flue gas, and raises
    ValueError, as does a reference outside [0, 21). Take `o2_reference_percent` from the
    methodology (`reference_o2_percent.<standard>`). Mass emissions use the uncorrected value.
    """
    if not o2_measured_percent < AMBIENT_O2_PERCENT:
        raise ValueError(f"o2_measured_percent must be below {AMBIENT_O2_PERCENT:g}, "
                         f"got {o2_measured_percent!r}")
    if not 0.0 <= o2_reference_percent < AMBIENT_O2_PERCENT:
        raise ValueError(f"o2_reference_percent must be in [0, {AMBIENT_O2_PERCENT:g}), "
                         f"got {o2_reference_percent!r}")
    return (concentration * (AMBIENT_O2_PERCENT - o2_reference_percent)
            / (AMBIENT_O2_PERCENT - o2_measured_percent))


def _absolute_pressure_pa(barometric_pressure_pa: float, static_pressure_pa: float) -> float:
    absolute = barometric_pressure_pa + static_pressure_pa
    if not absolute > 0.0:
        raise ValueError("barometric_pressure_pa + static_pressure_pa must be positive (pressures in Pa), "
                         f"got {barometric_pressure_pa!r} + {static_pressure_pa!r}")
    return absolute


def _absolute_temperature_k(temperature_c: float) -> float:
    absolute = STANDARD_TEMPERATURE_K + temperature_c
    if not absolute > 0.0:
        raise ValueError(f"temperature_c must be above -273 °C, got {temperature_c!r}")
    return absolute


def actual_to_standard_concentration(
    concentration_actual: float, *, barometric_pressure_pa: float, static_pressure_pa: float,
    temperature_c: float,
) -> float:
    """Concentration at flue conditions to standard state (273 K, 101,325 Pa):
    `C_sn = C_s * 101325 / (B_a + P_s) * (273 + t_s) / 273` (HJ 212-2017 App. D).

    Pressures in Pa (HJ 212 reports static pressure a01013 in kPa: multiply by 1000), temperature in
    °C. The moisture basis is unchanged: follow with `wet_to_dry` for a wet reading.
    """
    absolute_pa = _absolute_pressure_pa(barometric_pressure_pa, static_pressure_pa)
    absolute_k = _absolute_temperature_k(temperature_c)
    return concentration_actual * STANDARD_PRESSURE_PA / absolute_pa * absolute_k / STANDARD_TEMPERATURE_K


def actual_flow_m3_per_h(*, duct_area_m2: float, velocity_m_per_s: float) -> float:
    """Flue-gas flow at flue conditions: `Q_s = 3600 * F * V_s` (HJ 212-2017 App. D), m3/h."""
    return _SECONDS_PER_HOUR * duct_area_m2 * velocity_m_per_s


def standard_dry_flow_m3_per_h(
    flow_m3_per_h: float, *, temperature_c: float, barometric_pressure_pa: float,
    static_pressure_pa: float, moisture_fraction: float,
) -> float:
    """Actual flow to standard dry flow:
    `Q_sn = Q_s * 273 / (273 + t_s) * (B_a + P_s) / 101325 * (1 - X_sw)` (HJ 212-2017 App. D).

    `flow_m3_per_h` is Q_s at flue conditions (see `actual_flow_m3_per_h`); pressures in Pa,
    temperature in °C, `moisture_fraction` in [0, 1) (ValueError otherwise).
    """
    if not 0.0 <= moisture_fraction < 1.0:
        raise ValueError(f"moisture_fraction must be a fraction in [0, 1), got {moisture_fraction!r}")
    absolute_pa = _absolute_pressure_pa(barometric_pressure_pa, static_pressure_pa)
    absolute_k = _absolute_temperature_k(temperature_c)
    return (flow_m3_per_h * STANDARD_TEMPERATURE_K / absolute_k * absolute_pa / STANDARD_PRESSURE_PA
            * (1.0 - moisture_fraction))


def hourly_emission_kg(*, concentration_mg_per_m3: float, standard_dry_flow_m3_per_h: float) -> float:
    """Mass emitted in one hour: `G_h = C_avg * Q_sn * 1e-6` kg (HJ 212-2017 App. D; HJ 75-2017).

    `concentration_mg_per_m3` is the hourly mean at standard state, dry, and NOT corrected to
    reference O2; `standard_dry_flow_m3_per_h` is Q_sn. A day is the sum of its hours.
    """
    return concentration_mg_per_m3 * standard_dry_flow_m3_per_h * _KG_PER_MG
