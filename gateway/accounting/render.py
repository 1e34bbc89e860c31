"""Render a report document (stackline.report/v1) as canonical JSON, CSV tables or one HTML page.

Pure: each renderer takes the document (a mapping, as `json.loads` gives it) and returns text; none
reads a clock, a file or the environment, so equal documents give byte-identical output.

Numbers are written as the producer rounded them (Python's shortest round-trip form, the same text
`json.dumps` writes), never re-rounded: a verifier finds the same figure in all three formats. A
null is an empty CSV cell and a dash in HTML.

The HTML page is self-contained (inline CSS and SVG, no script, no external resource) and is meant
to be read by a verifier: header, totals with both CO2 figures, validity and substitution counts,
four charts drawn here as inline SVG (`data-chart` = concentrations, co2, flags, emissions), the
hourly and daily tables, and the provenance of every figure.

In the charts an hour counts as *measured* when its value is present and not substituted: lines
join consecutive measured hours only, so an invalid hour is a gap; a substituted value is drawn as
a hollow diamond (concentrations) or a pale dashed bar (emissions) in its place.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from html import escape
from typing import Any

from gateway.errors import GatewayError

__all__ = ["REPORT_FORMAT", "ReportFormatError", "render_csv", "render_html", "render_json"]

REPORT_FORMAT = "stackline.report/v1"

# the HJ 212-2017 data flags, in legend order, with a fill colour each (light enough for black text)
FLAG_MEANINGS: dict[str, str] = {
    "N": "normal",
    "C": "calibration",
    "M": "maintenance",
    "D": "fault",
    "F": "stopped",
    "B": "communication abnormal",
    "T": "over upper limit",
    "S": "manually entered",
}
_FLAG_COLOURS: dict[str, str] = {
    "N": "#9fd8a8", "C": "#56b4e9", "M": "#e7a3cf", "D": "#e8804d",
    "F": "#b0b0b0", "B": "#f2b84b", "T": "#f0e442", "S": "#b9a6e0",
}
_UNKNOWN_FLAG_COLOUR = "#ffffff"
# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies
_SERIES_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000")
_CO2 = "co2"
_NULL_HTML = "&ndash;"

_CHART_WIDTH = 1000.0
_PLOT_LEFT = 78.0
_PLOT_RIGHT = 16.0
_MAX_TIME_LABELS = 16
_MAX_HOURS_WITH_DOTS = 72
_LEGEND_CHAR_WIDTH = 6.4  # a generous average advance of an 11 px sans-serif character


class ReportFormatError(GatewayError):
    """A document that is not a stackline.report/v1 report (wrong format, a missing or malformed key)."""


# ---------------------------------------------------------------------------------------- JSON


def render_json(report: Mapping[str, Any]) -> str:
    """The document as canonical JSON: keys sorted, two-space indent, UTF-8 text, newline-terminated.

    Byte-identical for equal documents; NaN and infinities are refused (ValueError), as JSON has none.
    """
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ----------------------------------------------------------------------------------------- CSV


def render_csv(report: Mapping[str, Any]) -> str:
    """Three tables separated by a blank line: hourly, daily, then one row of period totals.

    Columns are in the document's `pollutants` order; a null is an empty cell. Lines end in `\\n`.
    """
    try:
        return _csv(report)
    except (KeyError, TypeError, IndexError) as exc:
        raise ReportFormatError(f"report document is malformed: {exc!r}") from exc


def _csv(report: Mapping[str, Any]) -> str:
    _check_format(report)
    pollutants = _pollutants(report)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    header = ["start"]
    for name in pollutants:
        header += [f"{name}_mean_mg_per_m3", f"{name}_corrected_mg_per_m3", f"{name}_flag",
                   f"{name}_substituted", f"{name}_mass_kg"]
    header += ["flow_std_dry_m3_per_h", "o2_percent", "fuel_t"]
    writer.writerow(header)
    for hour in report["hours"]:
        row = [_cell(hour["start"])]
        for name in pollutants:
            value = hour["pollutants"][name]
            row += [_cell(value[key]) for key in
                    ("mean_mg_per_m3", "corrected_mg_per_m3", "flag", "substituted", "mass_kg")]
        row += [_cell(hour["flow_std_dry_m3_per_h"]), _cell(hour["o2_percent"]), _cell(hour["fuel_t"])]
        writer.writerow(row)

    _csv_periods(writer, pollutants, report["days"], label="date")
    _csv_periods(writer, pollutants, report.get("months", []), label="month")

    writer.writerow([])
    writer.writerow(["year", *(f"{name}_mass_kg" for name in pollutants), "fuel_t", "co2_cems_t",
                     "co2_fuel_t"])
    for year in report.get("years", []):
        writer.writerow([_cell(year["year"]), *(_cell(year["mass_kg"][name]) for name in pollutants),
                         _cell(year["fuel_t"]), _cell(year["co2_cems_t"]), _cell(year["co2_fuel_t"])])

    writer.writerow([])
    totals = report["totals"]
    co2 = totals["co2"]
    header = ["period"]
    row = [f"{_cell(report['period']['from'])}/{_cell(report['period']['to'])}"]
    for name in pollutants:
        header += [f"{name}_mass_kg", f"{name}_valid_hours", f"{name}_invalid_hours",
                   f"{name}_substituted_hours"]
        row += [_cell(totals[key][name]) for key in
                ("mass_kg", "valid_hours", "invalid_hours", "substituted_hours")]
    header += ["fuel_t", "co2_cems_t", "co2_fuel_t", "co2_difference_t", "co2_difference_percent"]
    row += [_cell(totals["fuel_t"])] + [_cell(co2[key]) for key in
                                        ("cems_t", "fuel_t", "difference_t", "difference_percent")]
    writer.writerow(header)
    writer.writerow(row)
    return out.getvalue()


# ------------------------------------------------------------------------------------- helpers


_PERIOD_KEYS = ("valid_hours", "substituted_hours", "mean_mg_per_m3", "flag", "mass_kg")


def _csv_periods(writer: Any, pollutants: Sequence[str], periods: Sequence[Mapping[str, Any]], *,
                 label: str) -> None:
    """A blank line, then the daily or monthly table: the period, per pollutant its counts, mean,
    flag and mass, then fuel and CO2 by CEMS."""
    writer.writerow([])
    writer.writerow([label, *(f"{name}_{key}" for name in pollutants for key in _PERIOD_KEYS),
                     "fuel_t", "co2_cems_t"])
    for period in periods:
        writer.writerow([_cell(period[label]),
                         *(_cell(period[key][name]) for name in pollutants for key in _PERIOD_KEYS),
                         _cell(period["fuel_t"]), _cell(period["co2_cems_t"])])


def _check_format(report: Mapping[str, Any]) -> None:
    found = report.get("format")
    if found != REPORT_FORMAT:
        raise ReportFormatError(f"report format is {found!r}, expected {REPORT_FORMAT!r}")


def _pollutants(report: Mapping[str, Any]) -> list[str]:
    names = report["pollutants"]
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ReportFormatError(f"report 'pollutants' must be a list of names, not {names!r}")
    return list(names)


def _cell(value: object) -> str:
    """A scalar as text: JSON's spelling of numbers and booleans, "" for null."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ReportFormatError(f"a report figure is not finite: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return value
    raise ReportFormatError(f"a report cell holds {type(value).__name__} {value!r}, not a scalar")


def _text(value: object) -> str:
    """A scalar as escaped HTML text; a dash for null. Fractions show at most three decimals (a
    person reads the page; JSON and CSV keep every digit for a verifier)."""
    if isinstance(value, float) and math.isfinite(value) and value != int(value):
        shown = f"{value:.3f}".rstrip("0").rstrip(".")
        return escape(shown if shown not in {"-0", ""} else "0")
    return _NULL_HTML if value is None else escape(_cell(value))


def _number(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportFormatError(f"expected a number or null, not {value!r}")
    return float(value)


def _attrs(**values: object) -> str:
    """Escaped attributes; a trailing underscore is dropped and other underscores become dashes."""
    parts = []
    for key, value in values.items():
        name = key.rstrip("_").replace("_", "-")
        text = _fmt(value) if isinstance(value, float) else str(value)
        parts.append(f'{name}="{escape(text)}"')
    return " ".join(parts)


def _fmt(value: float) -> str:
    """A coordinate: two decimals at most, no trailing zeros, never "-0"."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in {"-0", ""} else text


# --------------------------------------------------------------------------------------- HTML


def render_html(report: Mapping[str, Any]) -> str:
    """One self-contained HTML5 page: header, totals, counts, four SVG charts, tables, provenance."""
    try:
        return _html(report)
    except (KeyError, TypeError, IndexError) as exc:
        raise ReportFormatError(f"report document is malformed: {exc!r}") from exc


@dataclass(frozen=True)
class _Hour:
    """The parts of an hour the charts need, parsed once."""

    index: int
    local: datetime
    label: str


def _hours(report: Mapping[str, Any]) -> list[_Hour]:
    hours = []
    for index, hour in enumerate(report["hours"]):
        try:
            local = datetime.fromisoformat(hour["start"])
        except ValueError as exc:
            raise ReportFormatError(f"hour {index}: start {hour['start']!r} is not an ISO time") from exc
        hours.append(_Hour(index, local, local.strftime("%Y-%m-%d %H:%M")))
    return hours


def _html(report: Mapping[str, Any]) -> str:
    _check_format(report)
    pollutants = _pollutants(report)
    hours = _hours(report)
    plant = report["plant"]
    title = (f"Emissions report: {_cell(plant['name'])}, {_cell(report['unit'])}, "
             f"{_cell(report['period']['from'])} to {_cell(report['period']['to'])}")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        _header(report),
        _totals_section(report, pollutants),
        _charts_section(report, pollutants, hours),
        _substitutions_section(report, pollutants, hours),
        _hourly_section(report, pollutants, hours),
        _daily_section(report, pollutants),
        _monthly_section(report, pollutants),
        _yearly_section(report, pollutants),
        _provenance_section(report, hours),
        "</body>",
        "</html>",
    ]
    return "\n".join(parts) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1120px;
padding:0 16px;color:#1d1d1f;line-height:1.4}
h1{font-size:1.5em;margin:0 0 8px}h2{font-size:1.2em;margin:28px 0 8px;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:16px 0 6px}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px;margin:0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
code{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.9em;word-break:break-all}
table{border-collapse:collapse;font-size:.85em;margin:4px 0 8px}
th,td{border:1px solid #d0d0d0;padding:2px 6px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.text,th.text{text-align:left}td.wrap{white-space:normal;min-width:300px}
td.num{font-variant-numeric:tabular-nums}
tr.substituted td{background:#fff7e0}
td.flag{text-align:center;font-weight:600}
.scroll{overflow-x:auto}
.co2{display:flex;gap:16px;flex-wrap:wrap}
.co2>div{border:1px solid #ccc;border-radius:6px;padding:8px 14px;min-width:220px}
.co2 .figure{font-size:1.5em;font-weight:600;font-variant-numeric:tabular-nums}
figure{margin:12px 0 20px}figcaption{font-size:.9em;color:#444;margin-top:2px}
svg{max-width:100%;height:auto;display:block}
""".strip()


def _header(report: Mapping[str, Any]) -> str:
    plant = report["plant"]
    period = report["period"]
    methodology = report["methodology"]
    rows = [
        ("Plant", f"{_text(plant['name'])} (<code>{_text(plant['id'])}</code>)"),
        ("Unit", f"<code>{_text(report['unit'])}</code>"),
        ("Period", f"from {_text(period['from'])} to {_text(period['to'])} (exclusive), "
                   f"local time {_text(plant['timezone'])}"),
        ("Methodology", f"{_text(methodology['name'])}, digest <code>{_text(methodology['digest'])}</code>"),
        ("Gateway", f"<code>{_text(report['gateway'])}</code>"),
        ("Document", f"<code>{_text(report['format'])}</code>"),
    ]
    items = "".join(f"<dt>{name}</dt><dd>{value}</dd>" for name, value in rows)
    return (f"<header><h1>Emissions report: {_text(plant['name'])}, {_text(report['unit'])}</h1>"
            f'<dl class="meta">{items}</dl></header>')


def _totals_section(report: Mapping[str, Any], pollutants: Sequence[str]) -> str:
    totals = report["totals"]
    co2 = totals["co2"]
    units = report["units"]
    co2_unit = _text(units["co2_mass"])
    percent = co2["difference_percent"]
    boxes = (
        f'<div><div>CO2 by CEMS</div><div class="figure" data-figure="co2-cems">{_text(co2["cems_t"])} '
        f"{co2_unit}</div><div>hourly concentration &times; standard dry flow, summed</div></div>"
        f'<div><div>CO2 by fuel calculation (ETS)</div><div class="figure" data-figure="co2-fuel">'
        f"{_text(co2['fuel_t'])} {co2_unit}</div>"
        "<div>consumption &times; carbon content &times; oxidation rate &times; 44/12</div></div>"
        f'<div><div>Difference (CEMS &minus; fuel)</div><div class="figure" data-figure="co2-difference">'
        f"{_text(co2['difference_t'])} {co2_unit}</div><div>{_text(percent)} %</div></div>"
    )
    rows = "".join(
        f'<tr><td class="text">{escape(name)}</td>'
        + "".join(f'<td class="num">{_text(totals[key][name])}</td>'
                  for key in ("mass_kg", "valid_hours", "invalid_hours", "substituted_hours"))
        + "</tr>"
        for name in pollutants
    )
    by_pollutant = (
        '<table data-table="totals"><thead><tr><th class="text">Pollutant</th>'
        f"<th>Mass ({_text(units['mass'])})</th><th>Valid hours</th><th>Invalid hours</th>"
        f"<th>Substituted hours</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    month_rows = "".join(
        f'<tr><td class="text">{_text(month["month"])}</td>'
        + "".join(f'<td class="num">{_text(month[key])}</td>' for key in
                  ("consumption_t", "ncv_gj_per_t", "carbon_content_tc_per_t"))
        + f'<td class="text">{"measured" if month["carbon_content_measured"] else "default (NCV &times; CC)"}'
        + f'</td><td class="num">{_text(month["oxidation_rate"])}</td>'
        + f'<td class="num">{_text(month["co2_t"])}</td></tr>'
        for month in co2["fuel_months"]
    )
    months = (
        '<table data-table="fuel-months"><thead><tr><th class="text">Month</th>'
        f"<th>Consumption ({_text(units['fuel'])})</th><th>NCV (GJ/t)</th><th>Carbon content (tC/t)</th>"
        f'<th class="text">Carbon content basis</th><th>Oxidation rate</th><th>CO2 ({co2_unit})</th></tr>'
        f"</thead><tbody>{month_rows}</tbody></table>"
    )
    return (
        '<section id="totals"><h2>Totals</h2>'
        f'<div class="co2">{boxes}</div>'
        f"<h3>Mass, validity and substitution by pollutant</h3>{by_pollutant}"
        f"<p>Fuel consumed: {_text(totals['fuel_t'])} {_text(units['fuel'])}.</p>"
        f"<h3>CO2 by fuel calculation, by month</h3>{months}</section>"
    )


def _substitutions_section(report: Mapping[str, Any], pollutants: Sequence[str],
                           hours: Sequence[_Hour]) -> str:
    rows = []
    for hour, data in zip(hours, report["hours"], strict=True):
        if data["flow_substituted"] is not None:
            rows.append((hour, "flow", data["flow_flag"], data["flow_substituted"], None,
                         data["flow_std_dry_m3_per_h"]))
        for name in pollutants:
            value = data["pollutants"][name]
            if value["substituted"] is not None:
                rows.append((hour, name, value["flag"], value["substituted"], value["substitution_basis"],
                             value["mean_mg_per_m3"]))
    if not rows:
        body = "<p>No hour was substituted.</p>"
    else:
        cells = "".join(
            f'<tr><td class="text"><time datetime="{escape(_cell(report["hours"][hour.index]["start"]))}">'
            f'{escape(hour.label)}</time></td><td class="text">{escape(name)}</td>'
            f'<td class="flag">{_text(flag)}</td><td class="text"><code>{_text(rule)}</code></td>'
            f'<td class="text wrap">{_text(basis)}</td><td class="num">{_text(value)}</td></tr>'
            for hour, name, flag, rule, basis, value in rows
        )
        body = ('<table data-table="substitutions"><thead><tr><th class="text">Hour</th>'
                '<th class="text">Series</th><th>Flag</th><th class="text">Rule</th>'
                '<th class="text">Basis</th><th>Substituted value</th></tr></thead>'
                f"<tbody>{cells}</tbody></table>")
    return f'<section id="substitutions"><h2>Substituted hours</h2>{body}</section>'


def _hourly_section(report: Mapping[str, Any], pollutants: Sequence[str], hours: Sequence[_Hour]) -> str:
    units = report["units"]
    concentration = _text(units["concentration"])
    top = "".join(f'<th colspan="5">{escape(name)}</th>' for name in pollutants)
    sub = "".join(
        f"<th>Mean ({concentration})</th><th>Corrected ({concentration})</th><th>Flag</th>"
        f'<th class="text">Substituted</th><th>Mass ({_text(units["mass"])})</th>'
        for _ in pollutants
    )
    rows = []
    for hour, data in zip(hours, report["hours"], strict=True):
        substituted = data["flow_substituted"] is not None or any(
            data["pollutants"][name]["substituted"] is not None for name in pollutants)
        cells = [f'<td class="text"><time datetime="{escape(_cell(data["start"]))}">'
                 f"{escape(hour.label)}</time></td>"]
        for name in pollutants:
            value = data["pollutants"][name]
            cells += [
                f'<td class="num">{_text(value["mean_mg_per_m3"])}</td>',
                f'<td class="num">{_text(value["corrected_mg_per_m3"])}</td>',
                _flag_cell(value["flag"]),
                f'<td class="text"><code>{_text(value["substituted"])}</code></td>',
                f'<td class="num">{_text(value["mass_kg"])}</td>',
            ]
        cells += [
            f'<td class="num">{_text(data["flow_std_dry_m3_per_h"])}</td>',
            _flag_cell(data["flow_flag"]),
            f'<td class="text"><code>{_text(data["flow_substituted"])}</code></td>',
            f'<td class="num">{_text(data["o2_percent"])}</td>',
            f'<td class="num">{_text(data["fuel_t"])}</td>',
        ]
        row_class = ' class="substituted"' if substituted else ""
        rows.append(f"<tr{row_class}>{''.join(cells)}</tr>")
    return (
        '<section id="hourly"><h2>Hourly values</h2>'
        "<p>Mean: standard state, dry, as measured (the basis of the mass). Corrected: to the reference O2 "
        "of the emission standard. Rows with a substituted value are shaded.</p>"
        '<div class="scroll"><table data-table="hourly"><thead>'
        f'<tr><th class="text" rowspan="2">Hour (local)</th>{top}<th colspan="3">flow</th>'
        f'<th rowspan="2">O2 (%)</th><th rowspan="2">Fuel ({_text(units["fuel"])})</th></tr>'
        f'<tr>{sub}<th>Std dry ({_text(units["flow"])})</th><th>Flag</th>'
        '<th class="text">Substituted</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _flag_cell(flag: object) -> str:
    colour = _FLAG_COLOURS.get(flag, _UNKNOWN_FLAG_COLOUR) if isinstance(flag, str) else _UNKNOWN_FLAG_COLOUR
    meaning = FLAG_MEANINGS.get(flag, "unknown flag") if isinstance(flag, str) else "no flag"
    return (f'<td class="flag" style="background:{colour}" title="{escape(meaning)}">'
            f"{_text(flag)}</td>")


def _daily_section(report: Mapping[str, Any], pollutants: Sequence[str]) -> str:
    return _periods_section(report, pollutants, key="days", label="date", title="Daily values",
                            heading="Date (local)",
                            note="The daily mean is over valid hours only; the daily mass includes "
                                 "substituted hours.")


def _monthly_section(report: Mapping[str, Any], pollutants: Sequence[str]) -> str:
    return _periods_section(report, pollutants, key="months", label="month", title="Monthly values",
                            heading="Month (local)",
                            note="A monthly mean needs 25 valid days (23 in February), so a month "
                                 "only partly in the report has none; masses are the sums of its "
                                 "hours in the report.")


def _yearly_section(report: Mapping[str, Any], pollutants: Sequence[str]) -> str:
    units = report["units"]
    head = "".join(f"<th>{escape(name)} mass ({_text(units['mass'])})</th>" for name in pollutants)
    rows = []
    for year in report.get("years", []):
        cells = [f'<td class="text">{_text(year["year"])}</td>']
        cells += [f'<td class="num">{_text(year["mass_kg"][name])}</td>' for name in pollutants]
        cells += [f'<td class="num">{_text(year[key])}</td>'
                  for key in ("fuel_t", "co2_cems_t", "co2_fuel_t")]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<section id="annual"><h2>Annual totals</h2>'
        "<p>Sums over the hours of each year inside the report's period.</p>"
        '<div class="scroll"><table data-table="annual"><thead>'
        f'<tr><th class="text">Year</th>{head}<th>Fuel ({_text(units["fuel"])})</th>'
        f'<th>CO2 by CEMS ({_text(units["co2_mass"])})</th>'
        f'<th>CO2 by fuel ({_text(units["co2_mass"])})</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _periods_section(report: Mapping[str, Any], pollutants: Sequence[str], *, key: str, label: str,
                     title: str, heading: str, note: str) -> str:
    units = report["units"]
    top = "".join(f'<th colspan="5">{escape(name)}</th>' for name in pollutants)
    sub = "".join(
        f"<th>Valid hours</th><th>Substituted hours</th><th>Mean ({_text(units['concentration'])})</th>"
        f"<th>Flag</th><th>Mass ({_text(units['mass'])})</th>"
        for _ in pollutants
    )
    rows = []
    for day in report.get(key, []):
        cells = [f'<td class="text">{_text(day[label])}</td>']
        for name in pollutants:
            cells += [
                f'<td class="num">{_text(day["valid_hours"][name])}</td>',
                f'<td class="num">{_text(day["substituted_hours"][name])}</td>',
                f'<td class="num">{_text(day["mean_mg_per_m3"][name])}</td>',
                _flag_cell(day["flag"][name]),
                f'<td class="num">{_text(day["mass_kg"][name])}</td>',
            ]
        cells += [f'<td class="num">{_text(day["fuel_t"])}</td>',
                  f'<td class="num">{_text(day["co2_cems_t"])}</td>']
        rows.append(f"<tr>{''.join(cells)}</tr>")
    section = "daily" if key == "days" else "monthly"
    return (
        f'<section id="{section}"><h2>{escape(title)}</h2>'
        f"<p>{escape(note)}</p>"
        f'<div class="scroll"><table data-table="{section}"><thead>'
        f'<tr><th class="text" rowspan="2">{escape(heading)}</th>{top}'
        f'<th rowspan="2">Fuel ({_text(units["fuel"])})</th>'
        f'<th rowspan="2">CO2 by CEMS ({_text(units["co2_mass"])})</th></tr>'
        f"<tr>{sub}</tr></thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _provenance_section(report: Mapping[str, Any], hours: Sequence[_Hour]) -> str:
    figures: list[tuple[str, object]] = [("totals", report["totals"]["provenance"])]
    figures += [(f"day {_cell(day['date'])}", day["provenance"]) for day in report["days"]]
    figures += [(f"hour {hour.label}", data["provenance"])
                for hour, data in zip(hours, report["hours"], strict=True)]
    rows = []
    for figure, provenance in figures:
        if provenance is None:
            rows.append(f'<tr><td class="text">{escape(figure)}</td>'
                        '<td class="text" colspan="4">no block: nothing was received for this figure</td>'
                        "</tr>")
            continue
        if not isinstance(provenance, Mapping):
            raise ReportFormatError(f"provenance of {figure} is {provenance!r}, not an object or null")
        first, last = provenance["sequences"]
        rows.append(
            f'<tr><td class="text">{escape(figure)}</td>'
            f'<td class="text"><code>{_text(provenance["collector"])}</code></td>'
            f'<td class="num">{_text(first)}&ndash;{_text(last)}</td>'
            f'<td class="num">{_text(provenance["blocks"])}</td>'
            f'<td class="text"><code>{_text(provenance["digest"])}</code></td></tr>'
        )
    return (
        '<section id="provenance"><h2>Provenance</h2>'
        f"<p>Every figure comes from the blocks of one collector relayed by gateway "
        f"<code>{_text(report['gateway'])}</code>: the sequence range (inclusive), the number of blocks "
        "and the SHA-256 digest over the block hashes in sequence order, so that a verifier can recompute "
        "the figure from the ledger.</p>"
        '<div class="scroll"><table data-table="provenance"><thead><tr><th class="text">Figure</th>'
        '<th class="text">Collector</th><th>Sequences</th><th>Blocks</th><th class="text">Digest</th></tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table></div></section>"
    )


# ------------------------------------------------------------------------------------- charts


@dataclass(frozen=True)
class _Plot:
    """A plot area in SVG coordinates with one slot per hour along x."""

    left: float
    top: float
    width: float
    height: float
    slots: int

    @property
    def slot(self) -> float:
        return self.width / max(self.slots, 1)

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def edge(self, index: int) -> float:
        """x of the start of an hour's slot."""
        return self.left + index * self.slot

    def centre(self, index: int) -> float:
        """x of an hour's value: the middle of its slot (a mean over the hour)."""
        return self.left + (index + 0.5) * self.slot


@dataclass(frozen=True)
class _Scale:
    """A linear y scale from `low`..`high` onto a plot's height, with its tick values."""

    low: float
    high: float
    ticks: tuple[float, ...]
    decimals: int

    def y(self, plot: _Plot, value: float) -> float:
        return plot.bottom - (value - self.low) / (self.high - self.low) * plot.height

    def label(self, value: float) -> str:
        text = f"{value:,.{self.decimals}f}"
        return text[1:] if text.startswith("-") and float(text.replace(",", "")) == 0 else text


def _scale(values: Iterable[float], tick_count: int) -> _Scale:
    """A scale from zero (or the lowest value, if negative) to a round number above the highest."""
    finite = [value for value in values if math.isfinite(value)]
    low = min([0.0, *finite])
    high = max([0.0, *finite])
    if high <= low:
        high = low + 1.0
    raw = (high - low) / tick_count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(factor * magnitude for factor in (1.0, 2.0, 2.5, 5.0, 10.0)
                if raw <= factor * magnitude * (1 + 1e-9))
    first = math.floor(low / step + 1e-9)
    last = math.ceil(high / step - 1e-9)
    ticks = tuple(k * step for k in range(first, last + 1))
    decimals = next((d for d in range(7) if abs(round(step, d) - step) <= step * 1e-9), 6)
    return _Scale(ticks[0], ticks[-1], ticks, decimals)


def _time_ticks(hours: Sequence[_Hour]) -> list[tuple[int, str, str]]:
    """(index, time label, date label) of the hours that get a labelled tick on a time axis."""
    if not hours:
        return []
    steps = (1, 2, 3, 4, 6, 12, 24, 48, 72, 168, 336, 720, 1440, 2160, 4320, 8784)
    step = next((s for s in steps if len(hours) / s <= _MAX_TIME_LABELS), steps[-1])
    first_date = hours[0].local.date()
    ticks = []
    for hour in hours:
        local = hour.local
        if local.minute != 0:
            continue
        if step < 24:
            if local.hour % step == 0:
                date_label = local.strftime("%m-%d") if local.hour == 0 else ""
                ticks.append((hour.index, local.strftime("%H:%M"), date_label))
        elif local.hour == 0 and (local.date() - first_date).days % (step // 24) == 0:
            ticks.append((hour.index, "", local.strftime("%m-%d")))
    return ticks


def _x_axis(plot: _Plot, hours: Sequence[_Hour], *, labels: bool) -> list[str]:
    out = [f'<line {_attrs(x1=plot.left, y1=plot.bottom, x2=plot.left + plot.width, y2=plot.bottom)} '
           'stroke="#333"/>']
    for index, time_label, date_label in _time_ticks(hours):
        x = plot.edge(index)
        out.append(f'<line {_attrs(x1=x, y1=plot.top, x2=x, y2=plot.bottom)} stroke="#e4e4e4"/>')
        out.append(f'<line {_attrs(x1=x, y1=plot.bottom, x2=x, y2=plot.bottom + 5)} stroke="#333"/>')
        if labels:
            if time_label:
                out.append(f'<text {_attrs(x=x, y=plot.bottom + 17)} text-anchor="middle">'
                           f"{escape(time_label)}</text>")
            if date_label:
                y = plot.bottom + (30 if time_label else 17)
                out.append(f'<text {_attrs(x=x, y=y)} text-anchor="middle" font-weight="600">'
                           f"{escape(date_label)}</text>")
    return out


def _y_axis(plot: _Plot, scale: _Scale, title: str) -> list[str]:
    out = [f'<line {_attrs(x1=plot.left, y1=plot.top, x2=plot.left, y2=plot.bottom)} stroke="#333"/>']
    for tick in scale.ticks:
        y = scale.y(plot, tick)
        out.append(f'<line {_attrs(x1=plot.left, y1=y, x2=plot.left + plot.width, y2=y)} stroke="#e4e4e4"/>')
        out.append(f'<line {_attrs(x1=plot.left - 5, y1=y, x2=plot.left, y2=y)} stroke="#333"/>')
        out.append(f'<text {_attrs(x=plot.left - 8, y=y + 4)} text-anchor="end">'
                   f"{escape(scale.label(tick))}</text>")
    middle = plot.top + plot.height / 2
    out.append(f'<text {_attrs(x=14, y=middle)} text-anchor="middle" '
               f'transform="rotate(-90 14 {_fmt(middle)})">{escape(title)}</text>')
    return out


def _svg(chart: str, label: str, height: float, body: Iterable[str]) -> str:
    return (
        f'<svg {_attrs(data_chart=chart, role="img", aria_label=label)} '
        f"{_attrs(width=_CHART_WIDTH, height=height, viewBox=f'0 0 {_fmt(_CHART_WIDTH)} {_fmt(height)}')} "
        'font-family="system-ui, sans-serif" font-size="11" fill="#1d1d1f">'
        f"<title>{escape(label)}</title>"
        + "".join(body)
        + "</svg>"
    )


def _colour(pollutants: Sequence[str], name: str) -> str:
    return _SERIES_COLOURS[pollutants.index(name) % len(_SERIES_COLOURS)]


def _series_value(data: Mapping[str, Any], name: str, key: str) -> tuple[float | None, bool]:
    """(value, substituted) of one pollutant's figure in an hour."""
    value = data["pollutants"][name]
    return _number(value[key]), value["substituted"] is not None


def _concentration_chart(report: Mapping[str, Any], pollutants: Sequence[str], series: Sequence[str],
                         hours: Sequence[_Hour], *, chart: str, label: str, height: float) -> str:
    plot = _Plot(_PLOT_LEFT, 40.0, _CHART_WIDTH - _PLOT_LEFT - _PLOT_RIGHT, height - 40.0 - 46.0, len(hours))
    unit = _cell(report["units"]["concentration"])
    points = {name: [_series_value(data, name, "mean_mg_per_m3") for data in report["hours"]]
              for name in series}
    scale = _scale((value for name in series for value, _ in points[name] if value is not None),
                   5 if height > 300 else 4)
    body = [*_y_axis(plot, scale, unit), *_x_axis(plot, hours, labels=True)]
    if not series:
        body.append(f'<text {_attrs(x=plot.left + plot.width / 2, y=plot.top + plot.height / 2)} '
                    'text-anchor="middle">no such pollutant in this report</text>')
    legend_x = plot.left
    for name in series:
        colour = _colour(pollutants, name)
        body.append(f'<g data-series="{escape(name)}" stroke="{colour}" fill="{colour}">')
        body += _lines(plot, scale, hours, name, points[name])
        body.append("</g>")
        body.append(f'<line {_attrs(x1=legend_x, y1=16, x2=legend_x + 22, y2=16)} stroke="{colour}" '
                    'stroke-width="2.5"/>')
        body.append(f'<text {_attrs(x=legend_x + 27, y=20)}>{escape(name)}</text>')
        legend_x += 40 + 7 * len(name)
    body.append(f'<path d="{_diamond(legend_x + 8, 16)}" fill="#fff" stroke="#333" stroke-width="1.5"/>')
    body.append(f'<text {_attrs(x=legend_x + 18, y=20)}>substituted hour (not measured); a gap is an '
                "invalid hour</text>")
    return _svg(chart, label, height, body)


def _diamond(x: float, y: float, r: float = 5.0) -> str:
    return (f"M{_fmt(x)} {_fmt(y - r)}L{_fmt(x + r)} {_fmt(y)}L{_fmt(x)} {_fmt(y + r)}"
            f"L{_fmt(x - r)} {_fmt(y)}Z")


def _lines(plot: _Plot, scale: _Scale, hours: Sequence[_Hour], name: str,
           points: Sequence[tuple[float | None, bool]]) -> list[str]:
    """A series: a polyline per run of measured hours, dots on them, diamonds on substituted hours."""
    out: list[str] = []
    run: list[int] = []

    def close_run() -> None:
        if len(run) >= 2:
            coordinates = " ".join(f"{_fmt(plot.centre(i))},{_fmt(scale.y(plot, _value(points, i)))}"
                                   for i in run)
            out.append(f'<polyline data-series="{escape(name)}" points="{coordinates}" fill="none" '
                       'stroke-width="2" stroke-linejoin="round"/>')
        run.clear()

    for index, (value, substituted) in enumerate(points):
        if value is None or substituted:
            close_run()
        else:
            run.append(index)
    close_run()
    for index, (value, substituted) in enumerate(points):
        if value is None:
            continue
        x, y = plot.centre(index), scale.y(plot, value)
        tip = f"<title>{escape(name)} {escape(hours[index].label)}: {escape(_cell(value))}"
        if substituted:
            out.append(f'<path data-series="{escape(name)}" data-substituted="true" d="{_diamond(x, y)}" '
                       f'fill="#fff" stroke-width="1.8">{tip} (substituted)</title></path>')
            continue
        isolated = (index == 0 or _measured_at(points, index - 1) is None) and (
            index + 1 >= len(points) or _measured_at(points, index + 1) is None)
        if isolated or len(points) <= _MAX_HOURS_WITH_DOTS:
            radius = 3.5 if isolated else 2.5
            out.append(f'<circle data-series="{escape(name)}" {_attrs(cx=x, cy=y, r=radius)} stroke="none">'
                       f"{tip}</title></circle>")
    return out


def _value(points: Sequence[tuple[float | None, bool]], index: int) -> float:
    value = points[index][0]
    if value is None:
        raise ReportFormatError(f"no value at hour {index}")  # close_run() only joins measured hours
    return value


def _measured_at(points: Sequence[tuple[float | None, bool]], index: int) -> float | None:
    value, substituted = points[index]
    return None if substituted else value


def _pollutant_flag(name: str) -> Callable[[Mapping[str, Any]], tuple[object, object]]:
    def read(data: Mapping[str, Any]) -> tuple[object, object]:
        value = data["pollutants"][name]
        return value["flag"], value["substituted"]
    return read


def _flow_flag(data: Mapping[str, Any]) -> tuple[object, object]:
    return data["flow_flag"], data["flow_substituted"]


def _flags_chart(report: Mapping[str, Any], pollutants: Sequence[str], hours: Sequence[_Hour]) -> str:
    row_height, row_gap = 24.0, 6.0
    rows: list[tuple[str, Callable[[Mapping[str, Any]], tuple[object, object]]]] = [
        (name, _pollutant_flag(name)) for name in pollutants]
    rows.append(("flow", _flow_flag))
    strips_height = len(rows) * (row_height + row_gap) - row_gap
    plot = _Plot(_PLOT_LEFT, 12.0, _CHART_WIDTH - _PLOT_LEFT - _PLOT_RIGHT, strips_height, len(hours))
    height = plot.bottom + 40.0 + 64.0
    body: list[str] = []
    for number, (name, read) in enumerate(rows):
        y = plot.top + number * (row_height + row_gap)
        body.append(f'<text {_attrs(x=plot.left - 8, y=y + row_height / 2 + 4)} text-anchor="end">'
                    f"{escape(name)}</text>")
        body.append(f'<g data-series="{escape(name)}">')
        for hour, data in zip(hours, report["hours"], strict=True):
            flag, substituted = read(data)
            letter = flag if isinstance(flag, str) else ""
            colour = _FLAG_COLOURS.get(letter, _UNKNOWN_FLAG_COLOUR)
            x = plot.edge(hour.index)
            outline = ('stroke="#1d1d1f" stroke-width="2"' if substituted is not None
                       else 'stroke="#fff" stroke-width="1"')
            meaning = FLAG_MEANINGS.get(letter, "unknown flag")
            tip = f"{name} {hour.label}: {letter or 'no flag'} ({meaning})"
            if substituted is not None:
                tip += f", substituted by {_cell(substituted)}"
            inset = 1.0 if substituted is not None else 0.0
            body.append(f'<rect data-series="{escape(name)}" data-flag="{escape(letter)}" '
                        f"{_attrs(x=x + inset, y=y + inset, width=plot.slot - 2 * inset)} "
                        f"{_attrs(height=row_height - 2 * inset)} "
                        f'fill="{colour}" {outline}><title>{escape(tip)}</title></rect>')
            if plot.slot >= 14:
                body.append(f'<text {_attrs(x=plot.centre(hour.index), y=y + row_height / 2 + 4)} '
                            f'text-anchor="middle" font-size="10">{escape(letter)}</text>')
        body.append("</g>")
    body += _x_axis(plot, hours, labels=True)
    legend_y = plot.bottom + 46.0
    x = plot.left
    items = [(f"{letter} {meaning}", f'fill="{_FLAG_COLOURS[letter]}"')
             for letter, meaning in FLAG_MEANINGS.items()]
    items.append(("substituted hour", 'fill="#fff" stroke="#1d1d1f" stroke-width="2"'))
    for text, style in items:
        width = 18 + _LEGEND_CHAR_WIDTH * len(text)
        if x + width > _CHART_WIDTH - _PLOT_RIGHT:  # wrap onto a second line rather than clip
            x, legend_y = plot.left, legend_y + 20
        body.append(f'<rect {_attrs(x=x + 1, y=legend_y + 1, width=12.0, height=12.0)} {style}/>')
        body.append(f'<text {_attrs(x=x + 18, y=legend_y + 11)}>{escape(text)}</text>')
        x += width + 16
    return _svg("flags", "Data flags per hour: one strip per pollutant and the flow, one cell per hour, "
                "coloured by HJ 212 flag", height, body)


def _emissions_chart(report: Mapping[str, Any], pollutants: Sequence[str], hours: Sequence[_Hour]) -> str:
    panel_height, panel_gap, top = 110.0, 22.0, 30.0
    unit = _cell(report["units"]["mass"])
    width = _CHART_WIDTH - _PLOT_LEFT - _PLOT_RIGHT
    height = top + len(pollutants) * (panel_height + panel_gap) + 24.0
    body = [
        f'<rect {_attrs(x=_PLOT_LEFT, y=8, width=14.0, height=12.0)} fill="#777"/>',
        f'<text {_attrs(x=_PLOT_LEFT + 18, y=18)}>measured hour</text>',
        f'<rect {_attrs(x=_PLOT_LEFT + 120, y=8, width=14.0, height=12.0)} fill="#777" fill-opacity="0.3" '
        'stroke="#777" stroke-dasharray="3 2"/>',
        f'<text {_attrs(x=_PLOT_LEFT + 138, y=18)}>substituted hour; each panel has its own scale '
        f"({escape(unit)})</text>",
    ]
    for number, name in enumerate(pollutants):
        plot = _Plot(_PLOT_LEFT, top + number * (panel_height + panel_gap), width, panel_height, len(hours))
        values = [_series_value(data, name, "mass_kg") for data in report["hours"]]
        scale = _scale((value for value, _ in values if value is not None), 2)
        colour = _colour(pollutants, name)
        body += _y_axis(plot, scale, f"{name} ({unit})")
        body += _x_axis(plot, hours, labels=number == len(pollutants) - 1)
        body.append(f'<g data-series="{escape(name)}" fill="{colour}">')
        bar = plot.slot * 0.72
        for index, (value, substituted) in enumerate(values):
            if value is None:
                continue
            y_zero, y_value = scale.y(plot, 0.0), scale.y(plot, value)
            style = (f'fill-opacity="0.3" stroke="{colour}" stroke-dasharray="3 2"' if substituted else "")
            tip = f"{name} {hours[index].label}: {_cell(value)} {unit}"
            if substituted:
                tip += " (substituted)"
            body.append(
                f'<rect data-series="{escape(name)}" '
                f"{_attrs(x=plot.centre(index) - bar / 2, y=min(y_zero, y_value), width=bar)} "
                f"{_attrs(height=abs(y_zero - y_value))}"
                f" {style}><title>{escape(tip)}</title></rect>"
            )
        body.append("</g>")
    return _svg("emissions", f"Hourly emissions ({unit}) per pollutant, one bar per hour", height, body)


def _charts_section(report: Mapping[str, Any], pollutants: Sequence[str], hours: Sequence[_Hour]) -> str:
    unit = _cell(report["units"]["concentration"])
    others = [name for name in pollutants if name != _CO2]
    co2 = [name for name in pollutants if name == _CO2]
    figures = [
        (_concentration_chart(report, pollutants, others, hours, chart="concentrations",
                              label=f"Hourly mean concentrations ({unit}) of "
                                    f"{', '.join(others) or 'no pollutant'}", height=330.0),
         "Hourly mean concentrations (standard state, dry, not O2-corrected). Lines join measured "
         "hours; a gap is an invalid hour; a hollow diamond is a substituted value."),
        (_concentration_chart(report, pollutants, co2, hours, chart="co2",
                              label=f"Hourly mean CO2 concentration ({unit})", height=240.0),
         "CO2 on its own scale."),
        (_flags_chart(report, pollutants, hours),
         "HJ 212 data flag of every hour; an outlined cell is a substituted hour."),
        (_emissions_chart(report, pollutants, hours),
         "Hourly mass emissions: concentration &times; standard dry flow, substituted hours included."),
    ]
    # the captions are this module's own HTML text, not the document's
    body = "".join(f"<figure>{svg}<figcaption>{caption}</figcaption></figure>" for svg, caption in figures)
    return f'<section id="charts"><h2>Charts</h2>{body}</section>'
