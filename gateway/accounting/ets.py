"""China national ETS CO2 of power generation facilities by the calculation method (MEE Guidelines for
enterprise GHG emissions accounting and reporting, power generation facilities, 2022 revision):
fuel combustion `E = Σ FC * C_ar * OF * 44/12`, computed monthly and summed over the year, plus
purchased electricity `E = MWh * EF_grid`.

Pure functions; the regulator's values (default carbon content per calorific value, oxidation rate,
grid emission factor) come from an effective-dated `Methodology`, never from constants here. The
constants below are physical: 44/12 (molar masses of CO2 and C) and 1 kcal = 4.1868 kJ (the
international-table calorie).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Literal

from gateway.accounting.methodology import Methodology

__all__ = [
    "CO2_PER_CARBON",
    "KJ_PER_KCAL",
    "AnnualFuelCo2",
    "MonthlyFuelCo2",
    "MonthlyFuelRecord",
    "annual_fuel_co2",
    "carbon_content_from_ncv",
    "default_cc_parameter",
    "fuel_co2_t",
    "kcal_per_kg_to_gj_per_t",
    "monthly_fuel_co2",
    "oxidation_rate_parameter",
    "purchased_electricity_co2_t",
]

CO2_PER_CARBON = 44.0 / 12.0
"""t CO2 per t C: the ratio of the molar masses of CO2 and C."""

KJ_PER_KCAL = 4.1868


def kcal_per_kg_to_gj_per_t(ncv_kcal_per_kg: float) -> float:
    """Net calorific value in kcal/kg to GJ/t: * 4.1868 kJ/kcal (kJ/kg = MJ/t), / 1000.

    5,000 kcal/kg = 20.934 GJ/t.
    """
    return ncv_kcal_per_kg * KJ_PER_KCAL / 1000.0


def carbon_content_from_ncv(ncv_gj_per_t: float, cc_tc_per_gj: float) -> float:
    """Received-basis carbon content where element carbon was not measured: `C_ar = NCV_ar * CC`
    (MEE guideline 2022), tC/t. CC is the methodology's default (`cc_<fuel>_tc_per_gj`)."""
    return ncv_gj_per_t * cc_tc_per_gj


def fuel_co2_t(consumption_t: float, carbon_content_tc_per_t: float, oxidation_rate: float) -> float:
    """CO2 from burning one fuel: `E = FC * C_ar * OF * 44/12` t CO2 (MEE guideline 2022).

    For gas, consumption is in 10^4 Nm3 and carbon content in tC per 10^4 Nm3; the product is the
    same. `oxidation_rate` is a fraction (0.99, not 99).
    """
    if not 0.0 < oxidation_rate <= 1.0:
        raise ValueError(f"oxidation_rate must be a fraction in (0, 1], got {oxidation_rate!r}")
    return consumption_t * carbon_content_tc_per_t * oxidation_rate * CO2_PER_CARBON


def purchased_electricity_co2_t(electricity_mwh: float, grid_emission_factor_t_per_mwh: float) -> float:
    """CO2 of purchased electricity: `E = MWh * EF_grid` t CO2 (MEE guideline 2022).

    Take EF_grid from the methodology (`grid_emission_factor_t_per_mwh`, unconfirmed values).
    """
    return electricity_mwh * grid_emission_factor_t_per_mwh


def default_cc_parameter(fuel: str) -> str:
    """The methodology parameter holding a fuel's default carbon content per calorific value."""
    return f"cc_{fuel}_tc_per_gj"


def oxidation_rate_parameter(fuel: str) -> str:
    """The methodology parameter holding a fuel's oxidation rate."""
    return f"oxidation_rate_{fuel}"


@dataclass(frozen=True, kw_only=True)
class MonthlyFuelRecord:
    """One fuel's figures for one month, as the plant enters them.

    `month` is the first day of the month (plant-local). `carbon_content_tc_per_t` is the measured
    received-basis carbon content, or None when element carbon was not measured (or the measurement
    does not meet the guideline): then `NCV * CC` with the methodology's default CC is used.
    """

    month: date
    fuel: str
    consumption_t: float
    ncv_gj_per_t: float
    carbon_content_tc_per_t: float | None = None

    def __post_init__(self) -> None:
        if self.month.day != 1:
            raise ValueError(f"month must be the first day of the month, got {self.month.isoformat()}")
        if not self.consumption_t >= 0.0:
            raise ValueError(f"consumption_t must not be negative, got {self.consumption_t!r}")
        if not self.ncv_gj_per_t > 0.0:
            raise ValueError(f"ncv_gj_per_t must be positive, got {self.ncv_gj_per_t!r}")
        if self.carbon_content_tc_per_t is not None and not 0.0 <= self.carbon_content_tc_per_t <= 1.0:
            raise ValueError("carbon_content_tc_per_t must be a mass fraction in [0, 1] (tC/t), "
                             f"got {self.carbon_content_tc_per_t!r}")


@dataclass(frozen=True, kw_only=True)
class MonthlyFuelCo2:
    """One month's CO2 from one fuel, with every factor that produced it."""

    record: MonthlyFuelRecord
    carbon_content_tc_per_t: float
    carbon_content_basis: Literal["measured", "default"]
    cc_tc_per_gj: float | None
    """The default CC used, or None when carbon content was measured."""
    oxidation_rate: float
    co2_t: float


@dataclass(frozen=True, kw_only=True)
class AnnualFuelCo2:
    """A year's fuel-combustion CO2: the monthly figures and their sum, with the methodology used."""

    year: int
    months: tuple[MonthlyFuelCo2, ...]
    co2_t: float
    methodology: str
    methodology_digest: str


def monthly_fuel_co2(record: MonthlyFuelRecord, methodology: Methodology) -> MonthlyFuelCo2:
    """CO2 of one fuel in one month (MEE guideline 2022), with parameters in force on the first day
    of the month: measured C_ar, or `NCV * CC` with the default CC; then `FC * C_ar * OF * 44/12`."""
    on = record.month
    oxidation_rate = methodology.number(oxidation_rate_parameter(record.fuel), on)
    if record.carbon_content_tc_per_t is not None:
        carbon_content = record.carbon_content_tc_per_t
        cc: float | None = None
    else:
        cc = methodology.number(default_cc_parameter(record.fuel), on)
        carbon_content = carbon_content_from_ncv(record.ncv_gj_per_t, cc)
    return MonthlyFuelCo2(
        record=record,
        carbon_content_tc_per_t=carbon_content,
        carbon_content_basis="default" if cc is not None else "measured",
        cc_tc_per_gj=cc,
        oxidation_rate=oxidation_rate,
        co2_t=fuel_co2_t(record.consumption_t, carbon_content, oxidation_rate),
    )


def annual_fuel_co2(records: Iterable[MonthlyFuelRecord], *, year: int,
                    methodology: Methodology) -> AnnualFuelCo2:
    """A year's fuel-combustion CO2: `E = Σ_months Σ_fuels FC * C_ar * OF * 44/12` (MEE guideline
    2022).

    Every record must fall in `year`, with at most one record per fuel and month (ValueError
    otherwise: a duplicate would count twice). The sum is `math.fsum`, correctly rounded and so
    independent of the records' order; the months are returned sorted by month, then fuel.
    """
    ordered = sorted(records, key=lambda record: (record.month, record.fuel))
    seen: set[tuple[date, str]] = set()
    for record in ordered:
        if record.month.year != year:
            raise ValueError(f"a record for {record.month.isoformat()} is not in {year}")
        key = (record.month, record.fuel)
        if key in seen:
            raise ValueError(f"two records for {record.fuel} in {record.month:%Y-%m}")
        seen.add(key)
    months = tuple(monthly_fuel_co2(record, methodology) for record in ordered)
    return AnnualFuelCo2(
        year=year,
        months=months,
        co2_t=math.fsum(month.co2_t for month in months),
        methodology=methodology.name,
        methodology_digest=methodology.digest,
    )
