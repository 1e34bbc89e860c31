"""The report renderers (gateway/accounting/render.py) over a hand-built document (tests/report_sample.py):
canonical JSON, the CSV tables, the HTML page's structure, and the page as headless Chromium renders it.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from gateway.accounting.render import ReportFormatError, render_csv, render_html, render_json
from tests.report_sample import POLLUTANTS, sample_report

CHARTS = ("concentrations", "co2", "flags", "emissions")
SHAPES = {"polyline", "rect", "circle", "path", "line"}
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")


class Chart:
    """One `<svg data-chart=...>` as parsed: its attributes, its first child and its data series' shapes."""

    def __init__(self, attrs: dict[str, str | None]) -> None:
        self.attrs = attrs
        self.first_child: str | None = None
        self.title = ""
        self.shapes: list[tuple[str, dict[str, str | None]]] = []

    def series(self, tag: str, **match: str) -> Counter[str]:
        """How many `tag` shapes each data series has (those with every `match` attribute)."""
        return Counter(
            str(attrs["data-series"]) for shape, attrs in self.shapes
            if shape == tag and attrs.get("data-series") is not None
            and all(attrs.get(key.replace("_", "-")) == value for key, value in match.items())
        )


class ChartParser(HTMLParser):
    """Collects the charts of a page; the page's own <title> too."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, list[Chart]] = {}
        self.current: Chart | None = None
        self.in_svg_title = False
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "svg":
            self.current = Chart(values)
            self.charts.setdefault(str(values.get("data-chart")), []).append(self.current)
            self.depth = 0
            return
        if self.current is None:
            return
        if self.current.first_child is None:
            self.current.first_child = tag
            self.in_svg_title = tag == "title"
        if tag in SHAPES:
            self.current.shapes.append((tag, values))

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self.current = None
        if tag == "title":
            self.in_svg_title = False

    def handle_data(self, data: str) -> None:
        if self.current is not None and self.in_svg_title:
            self.current.title += data


def charts_of(page: str) -> dict[str, Chart]:
    parser = ChartParser()
    parser.feed(page)
    parser.close()
    assert sorted(parser.charts) == sorted(CHARTS), parser.charts.keys()
    assert all(len(found) == 1 for found in parser.charts.values())
    return {name: found[0] for name, found in parser.charts.items()}


def sections(text: str) -> list[list[list[str]]]:
    """The CSV's tables: rows split at blank lines."""
    tables: list[list[list[str]]] = [[]]
    for row in csv.reader(io.StringIO(text)):
        if row:
            tables[-1].append(row)
        else:
            tables.append([])
    return tables


def cell(value: Any) -> str:
    return "" if value is None else json.dumps(value)


# ---------------------------------------------------------------------------------------- JSON


def test_json_is_canonical_byte_identical_and_round_trips() -> None:
    report = sample_report()
    first = render_json(report)
    assert first == render_json(sample_report())
    assert first.endswith("}\n")
    assert json.loads(first) == report
    # key order in the input does not matter: the same document in reverse order gives the same bytes
    reordered = json.loads(first, object_pairs_hook=lambda pairs: dict(reversed(pairs)))
    assert list(reordered) != list(report)
    assert render_json(reordered) == first
    lines = first.splitlines()
    assert lines[1] == '  "days": ['  # sorted keys, two-space indent
    assert render_json({"name": "电厂"}) == '{\n  "name": "电厂"\n}\n'  # UTF-8 text, not \u escapes


def test_json_refuses_nan() -> None:
    report = sample_report()
    report["hours"][0]["o2_percent"] = float("nan")
    with pytest.raises(ValueError, match="JSON compliant"):
        render_json(report)


# ----------------------------------------------------------------------------------------- CSV


def test_csv_hourly_table_has_a_row_per_hour_in_column_order() -> None:
    report = sample_report()
    hourly, daily, monthly, yearly, totals = sections(render_csv(report))
    expected_header = ["start"]
    for name in POLLUTANTS:
        expected_header += [f"{name}_mean_mg_per_m3", f"{name}_corrected_mg_per_m3", f"{name}_flag",
                            f"{name}_substituted", f"{name}_mass_kg"]
    expected_header += ["flow_std_dry_m3_per_h", "o2_percent", "fuel_t"]
    assert hourly[0] == expected_header
    assert len(hourly) == 1 + 24
    rows = [dict(zip(hourly[0], row, strict=True)) for row in hourly[1:]]
    for row, hour in zip(rows, report["hours"], strict=True):
        assert row["start"] == hour["start"]
        assert row["flow_std_dry_m3_per_h"] == cell(hour["flow_std_dry_m3_per_h"])
        assert row["fuel_t"] == cell(hour["fuel_t"])
        for name in POLLUTANTS:
            value = hour["pollutants"][name]
            assert row[f"{name}_mean_mg_per_m3"] == cell(value["mean_mg_per_m3"])
            assert row[f"{name}_mass_kg"] == cell(value["mass_kg"])
    calibration, gap = rows[3], rows[9]
    assert (calibration["so2_flag"], calibration["so2_substituted"]) == ("C", "hj75-2017/12.short-gap-mean")
    assert (calibration["particulate_flag"], calibration["particulate_substituted"]) == ("N", "")
    assert gap["o2_percent"] == "" and gap["so2_corrected_mg_per_m3"] == ""  # null is an empty cell
    assert rows[14]["o2_percent"] == "12.8"
    assert rows[0]["so2_mean_mg_per_m3"] == "31.2" and rows[0]["co2_mean_mg_per_m3"] == "228300.0"
    assert len(daily) == 2 and daily[1][0] == "2026-11-28"
    assert dict(zip(daily[0], daily[1], strict=True))["so2_valid_hours"] == "21"
    assert len(totals) == 2
    month = dict(zip(monthly[0], monthly[1], strict=True))
    assert (month["month"], month["so2_mean_mg_per_m3"], month["so2_flag"]) == ("2026-11", "", "B")
    assert month["so2_mass_kg"] == cell(report["days"][0]["mass_kg"]["so2"])
    year = dict(zip(yearly[0], yearly[1], strict=True))
    assert (year["year"], year["co2_fuel_t"]) == ("2026", cell(report["totals"]["co2"]["fuel_t"]))


def test_html_has_monthly_and_annual_tables() -> None:
    page = render_html(sample_report())
    assert '<table data-table="monthly">' in page and '<table data-table="annual">' in page
    assert "<td class=\"text\">2026-11</td>" in page and "<td class=\"text\">2026</td>" in page


def test_csv_totals_carry_both_co2_figures_and_their_difference() -> None:
    report = sample_report()
    *_, totals = sections(render_csv(report))
    row = dict(zip(totals[0], totals[1], strict=True))
    co2 = report["totals"]["co2"]
    assert row["period"] == "2026-11-28/2026-11-29"
    assert row["co2_cems_t"] == "2323.3" == cell(co2["cems_t"])
    assert row["co2_fuel_t"] == "2239.8" == cell(co2["fuel_t"])
    assert row["co2_difference_t"] == "83.5" == cell(co2["difference_t"])
    assert row["co2_difference_percent"] == cell(co2["difference_percent"])
    assert row["fuel_t"] == cell(report["totals"]["fuel_t"])
    for name in POLLUTANTS:
        for key in ("mass_kg", "valid_hours", "invalid_hours", "substituted_hours"):
            assert row[f"{name}_{key}"] == cell(report["totals"][key][name])


def test_csv_columns_follow_the_documents_pollutant_order() -> None:
    report = sample_report()
    report["pollutants"] = ["co2", "so2"]
    header = sections(render_csv(report))[0][0]
    assert [column.split("_")[0] for column in header[1:11]] == ["co2"] * 5 + ["so2"] * 5
    assert not any(column.startswith("nox") for column in header)


def test_renderers_refuse_another_format() -> None:
    report = sample_report()
    report["format"] = "stackline.report/v2"
    with pytest.raises(ReportFormatError, match="v2"):
        render_csv(report)
    with pytest.raises(ReportFormatError, match="v2"):
        render_html(report)
    broken = sample_report()
    del broken["hours"][5]["pollutants"]["so2"]["flag"]
    with pytest.raises(ReportFormatError, match="flag"):
        render_html(broken)


# ---------------------------------------------------------------------------------------- HTML


def test_html_has_the_four_charts_with_a_shape_per_series() -> None:
    report = sample_report()
    charts = charts_of(render_html(report))
    for name, chart in charts.items():
        assert chart.attrs["role"] == "img"
        assert chart.attrs["aria-label"]
        assert chart.first_child == "title" and chart.title.strip() == chart.attrs["aria-label"], name

    others = [name for name in POLLUTANTS if name != "co2"]
    polylines = charts["concentrations"].series("polyline")
    assert sorted(polylines) == sorted(others)
    # invalid hours are gaps: so2 is measured 00-02, 04-08 and 11-23, one polyline per run
    assert polylines["so2"] == 3 and polylines["particulate"] == 2
    diamonds = charts["concentrations"].series("path", data_substituted="true")
    assert diamonds == {"so2": 3, "nox": 3, "particulate": 2}
    assert charts["co2"].series("polyline") == {"co2": 3}
    assert charts["co2"].series("path", data_substituted="true") == {"co2": 3}

    cells = charts["flags"].series("rect")
    assert cells == dict.fromkeys([*POLLUTANTS, "flow"], 24)
    flags = [attrs["data-flag"] for shape, attrs in charts["flags"].shapes
             if shape == "rect" and attrs.get("data-series") == "so2"]
    assert flags == [hour["pollutants"]["so2"]["flag"] for hour in report["hours"]]
    assert "".join(str(flag) for flag in flags) == "NNNC" + "N" * 5 + "BB" + "N" * 13

    assert charts["emissions"].series("rect") == dict.fromkeys(POLLUTANTS, 24)


def test_html_polylines_join_only_measured_hours() -> None:
    report = sample_report()
    chart = charts_of(render_html(report))["concentrations"]
    points = [len(str(attrs["points"]).split()) for shape, attrs in chart.shapes
              if shape == "polyline" and attrs["data-series"] == "so2"]
    assert points == [3, 5, 13]
    assert sum(points) == report["totals"]["valid_hours"]["so2"]


def test_html_shows_header_totals_and_provenance() -> None:
    report = sample_report()
    page = render_html(report)
    assert page.startswith("<!DOCTYPE html>\n") and page.endswith("</html>\n")
    for text in ("demo-plant", "unit-1", "2026-11-28", "2026-11-29", "Asia/Shanghai", "cn-mee-2022",
                 report["methodology"]["digest"], "gateway-1"):
        assert text in page
    assert 'data-figure="co2-cems">2323.3 t<' in page
    assert 'data-figure="co2-fuel">2239.8 t<' in page
    assert 'data-figure="co2-difference">83.5 t<' in page
    assert "3.73 %" in page
    for hour in report["hours"]:
        provenance = hour["provenance"]
        assert provenance["digest"] in page
        assert f"{provenance['sequences'][0]}&ndash;{provenance['sequences'][1]}" in page
    assert report["totals"]["provenance"]["digest"] in page
    assert page.count("hj75-2017/12.short-gap-mean") >= 3 + 3 + 2 + 3 + 2  # every substituted value


def test_html_escapes_text_and_is_self_contained_and_deterministic() -> None:
    report = sample_report()
    page = render_html(report)
    assert "Demo Thermal Power Plant &lt;Unit 1 &amp; 2&gt;" in page
    assert "<Unit 1" not in page
    lowered = page.lower()
    for external in ("<script", "<link", "src=", "href=", "http://", "https://", "url(", "@import"):
        assert external not in lowered
    assert page == render_html(sample_report())


def test_html_names_a_figure_without_blocks() -> None:
    report = sample_report()
    report["hours"][9]["provenance"] = None
    page = render_html(report)
    assert "no block: nothing was received for this figure" in page
    assert report["hours"][10]["provenance"]["digest"] in page


# ---------------------------------------------------------------------------------- Chromium


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium with a fresh profile; fail (not skip) when it is not installed."""
    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("chromium is not installed: apt-get install -y --no-install-recommends chromium "
                    "(.ci/run installs it)")
    profile.mkdir()
    result = subprocess.run(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture
def page_file(tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_text(render_html(sample_report()), encoding="utf-8")
    return path


def test_chromium_renders_the_four_charts(page_file: Path, tmp_path: Path) -> None:
    dom = chromium(tmp_path / "profile", "--dump-dom", page_file.as_uri()).stdout
    charts = charts_of(dom)
    assert charts["concentrations"].series("polyline").keys() == {"so2", "nox", "particulate"}
    assert charts["co2"].series("polyline").keys() == {"co2"}
    assert charts["flags"].series("rect") == dict.fromkeys([*POLLUTANTS, "flow"], 24)
    assert charts["emissions"].series("rect") == dict.fromkeys(POLLUTANTS, 24)
    for chart in charts.values():
        assert chart.first_child == "title"


def test_chromium_screenshot_is_not_blank(page_file: Path, tmp_path: Path) -> None:
    screenshot = tmp_path / "report.png"
    chromium(tmp_path / "profile", f"--screenshot={screenshot}", "--window-size=1200,2400",
             page_file.as_uri())
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert int.from_bytes(data[16:20], "big") == 1200  # the IHDR width
    assert len(data) > 10_000


def test_html_rounds_for_people_while_json_and_csv_keep_every_digit() -> None:
    report = sample_report()
    report["totals"]["co2"]["cems_t"] = 1080.329770992366
    assert 'data-figure="co2-cems">1080.33 t<' in render_html(report)
    assert "1080.329770992366" in render_json(report) and "1080.329770992366" in render_csv(report)
