"""The HTML report answers finance's questions, with the CLI's numbers, offline.

The store holds `finance_traffic`'s script; expected figures come from its `TRUTH` (counted
by hand) and from the CLI run as a user runs it, never from the page's own code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx.reports import Source, TimeRange, build_report, open_source, render_html
from ownership_ctx.reports.rendering import human_day, human_range, money_places, nice_ticks
from tests.conftest import REQUIRE_ENV
from tests.reports import finance_traffic
from tests.reports.cli_process import run_cli
from tests.reports.finance_traffic import TRUTH

RANGE = TimeRange(*finance_traffic.RANGE)
CHROMIUM = os.environ.get("OWNERSHIP_CTX_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('finance-html') / 'events.db'}"
    finance_traffic.write(url)
    return url


@pytest.fixture(scope="module")
def page(store_url: str) -> str:
    with open_source(store_url) as source:
        return render_html(build_report(source, RANGE, top=5))


@pytest.fixture
def source(store_url: str) -> Iterator[Source]:
    with open_source(store_url) as opened:
        yield opened


class Tables(HTMLParser):
    """Every table of the page under the heading before it: rows of (text, exact title)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str | None]]]] = {}
        self.heading: list[str] | None = None
        self.title = ""
        self.rows: list[list[tuple[str, str | None]]] | None = None
        self.cell: list[str] | None = None
        self.cell_title: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3", "h4"):
            self.heading = []
        elif tag == "table":
            self.rows = []
        elif tag == "tr" and self.rows is not None:
            self.rows.append([])
        elif tag in ("td", "th") and self.rows is not None:
            self.cell, self.cell_title = [], dict(attrs).get("title")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h2", "h3", "h4") and self.heading is not None:
            self.title, self.heading = "".join(self.heading), None
        elif tag == "table" and self.rows is not None:
            self.tables.setdefault(self.title, self.rows)
            self.rows = None
        elif tag in ("td", "th") and self.cell is not None and self.rows:
            self.rows[-1].append(("".join(self.cell).strip(), self.cell_title))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.heading is not None:
            self.heading.append(data)
        if self.cell is not None:
            self.cell.append(data)


def tables(page: str) -> dict[str, list[list[tuple[str, str | None]]]]:
    parser = Tables()
    parser.feed(page)
    return parser.tables


def cli_rows(url: str, by: str) -> list[dict[str, Any]]:
    done = run_cli(
        "chargeback", "--by", by, "--db", url, "--since", "2026-01-05", "--until", "2026-01-19",
        "--format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)["rows"]
    return rows


def shown(value: str, places: int) -> str:
    amount = Decimal(value).quantize(Decimal(1).scaleb(-places))
    return f"{amount:,f}"


@pytest.mark.parametrize(
    ("title", "by", "key"),
    [
        ("Spend by model", "model", "model"),
        ("Spend by feature", "feature", "feature"),
        ("Spend by workflow", "workflow", "workflow"),
        ("Top tenants", "tenant", "tenant"),
        ("Chargeback by team", "team", "team"),
    ],
)
def test_every_breakdown_shows_the_clis_numbers(
    page: str, store_url: str, title: str, by: str, key: str
) -> None:
    places = money_places(TRUTH.spend)
    header, *rows = tables(page)[title]
    expected = cli_rows(store_url, by)
    assert len(rows) == len(expected)
    names = [h for h, _ in header]
    for row, cli in zip(rows, expected, strict=True):
        cells = dict(zip(names, row, strict=True))
        name, whole = cells[names[0]]
        assert (whole or name) == (cli["group"][key] or "(none)")  # long names: whole in title
        text, exact = cells["spend USD"]
        assert text == shown(cli["spend"], places)
        assert exact == f"{cli['spend']} USD"  # the tooltip carries the exact figure
        assert cells["calls"][0] == f"{cli['calls']:,}"
        if "requests" in cells:
            assert cells["requests"][0] == f"{cli['requests']:,}"


def test_spend_matches_the_script(page: str) -> None:
    found = tables(page)
    by_team = {r[0][0]: Decimal(r[1][1].split()[0]) for r in found["Chargeback by team"][1:]}
    assert by_team == TRUTH.spend_by_team
    by_model = {r[0][0]: Decimal(r[1][1].split()[0]) for r in found["Spend by model"][1:]}
    assert {m: s for m, s in by_model.items() if s} == TRUTH.spend_by_model
    assert f"{TRUTH.spend:,f}".rstrip("0") in page.replace(",", "")


def test_estimated_unpriced_failed_and_avoided_are_apart(page: str) -> None:
    rows = {r[0][0]: r for r in tables(page)["Estimated, unpriced and failed"][1:]}
    estimated = rows["estimated"]
    assert (Decimal(estimated[1][1].split()[0]), estimated[2][0]) == (
        TRUTH.estimated_spend,
        str(TRUTH.estimated_calls),
    )
    reported = rows["priced from reported usage"]
    assert Decimal(reported[1][1].split()[0]) == TRUTH.spend - TRUTH.estimated_spend
    billed = sum(TRUTH.calls.values())
    assert reported[2][0] == str(billed - TRUTH.estimated_calls - TRUTH.unpriced_calls)
    assert rows["no price: unknown model"][2][0] == str(TRUTH.unpriced_calls)
    assert rows["failed attempts"][2][0] == str(sum(TRUTH.failed_attempts.values()))
    avoided = rows["avoided by application cache hits"]
    assert Decimal(avoided[1][1].split()[0]) == TRUTH.cost_avoided
    tiles = re.findall(r'<div class="tile">(\w[^<]*)<b>(.*?)</b>', page)
    assert ("requests", f"{sum(TRUTH.user_actions.values())}") in tiles
    assert ("estimated", f"{TRUTH.estimated_spend:f}".ljust(8, "0") + " USD") in tiles


def test_one_section_per_team_with_its_own_trend(page: str) -> None:
    sections = re.findall(r'<details class="team"[^>]*>(.*?)</details>', page, re.S)
    teams = [re.search(r"<summary><b>([^<]+)</b>", s).group(1) for s in sections]  # type: ignore[union-attr]
    assert teams == ["search", "support", "growth"]
    for team, section in zip(teams, sections, strict=True):
        assert f'aria-label="Spend of {team} per day"' in section
        assert "Week over week" in section
    assert "<script" not in page.lower()


def test_week_over_week_split_equals_the_anomaly_command(page: str, store_url: str) -> None:
    header, *rows = tables(page)[next(t for t in tables(page) if t.startswith("Week over week"))]
    by_team = {r[0][0]: r for r in rows}
    places = money_places(TRUTH.spend)
    for team in ("search", "support", "growth"):
        done = run_cli(
            "anomaly", "--team", team, "--current", "7d", "--db", store_url,
            "--until", "2026-01-19", "--format", "json",
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        cli = json.loads(done.stdout)
        cells = dict(zip([h for h, _ in header], by_team[team], strict=True))
        assert cells["change"][1] == f"{cli['change']} USD"
        for factor, column in (("volume", "volume"), ("mix", "mix"), ("price", "price")):
            assert cells[column][0] == shown(cli["contributions"][factor], places)


def test_page_is_self_contained(page: str) -> None:
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "default-src 'none'" in page


def test_axis_ticks_dates_and_precision() -> None:
    assert nice_ticks(Decimal("0.074")) == [
        Decimal(x) for x in ("0", "0.02", "0.04", "0.06", "0.08")
    ]
    assert nice_ticks(Decimal("4.83")) == [Decimal(x) for x in ("0", "1", "2", "3", "4", "5")]
    assert nice_ticks(Decimal("3")) == [Decimal(x) for x in ("0", "1", "2", "3")]
    assert human_day(finance_traffic.W03) == "Mon 12 Jan"
    weeks = human_range(finance_traffic.W02, finance_traffic.W04)
    assert weeks == "Mon 5 Jan 2026 to Sun 18 Jan 2026 (UTC)"
    assert [money_places(Decimal(x)) for x in ("0.08", "12", "1500")] == [6, 4, 2]


# -- headless Chromium ---------------------------------------------------------------------------


def _chromium() -> str:
    if os.path.exists(CHROMIUM) or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM}; set {REQUIRE_ENV}=1 to make this a failure"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _screenshot(page: Path, tmp_path: Path, width: int) -> tuple[Path, list[str]]:
    shot = tmp_path / f"{page.stem}-{width}.png"
    result = subprocess.run(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", f"--user-data-dir={tmp_path / f'profile-{width}'}",
            "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
            f"--window-size={width},2400", f"--screenshot={shot}", page.as_uri(),
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return shot, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("width", [1440, 800])
def test_chromium_renders_at_laptop_and_narrow_widths(
    page: str, tmp_path: Path, width: int
) -> None:
    html_file = tmp_path / "report.html"
    html_file.write_text(page, encoding="utf-8")
    shot, console = _screenshot(html_file, tmp_path, width)
    assert console == []
    assert _png_size(shot) == (width, 2400)
    assert shot.stat().st_size > 30_000  # a real picture, not a blank page
    keep = os.environ.get("OWNERSHIP_CTX_KEEP_SCREENSHOTS")
    if keep:
        shutil.copy(shot, Path(keep) / shot.name)


def test_other_packages_add_sections_without_editing_the_page(store_url: str) -> None:
    from ownership_ctx.reports import html

    def budgets(source: object, time_range: TimeRange) -> html.Section:
        return html.Section("", "<h2>Budgets</h2><p>burn-down &amp; more</p>")

    def nothing(source: object, time_range: TimeRange) -> None:
        return None

    html.add_section(budgets)
    html.add_section(nothing)
    try:
        with open_source(store_url) as source:
            page = render_html(build_report(source, RANGE, top=1))
    finally:
        html.remove_section(budgets)
        html.remove_section(nothing)
    assert page.count("<h2>Budgets</h2><p>burn-down &amp; more</p>") == 1
