"""`report --html`: self-contained, and it renders in headless Chromium without console errors."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx.reports import Source, TimeRange, build_report, render_html
from tests.conftest import REQUIRE_ENV
from tests.reports.scenario import epoch, trace_id

ALL = TimeRange(int(epoch("2026-01-01T00:00:00")), int(epoch("2026-01-20T00:00:00")))
CHROMIUM = os.environ.get("OWNERSHIP_CTX_CHROMIUM", "/usr/bin/chromium")


def _page(source: Source) -> str:
    return render_html(build_report(source, ALL, top=5, threshold=Decimal("0.02")))


def test_content(main: Source) -> None:
    report = build_report(main, ALL, top=5)
    assert list(report.spend) == ["search", "support", "growth", "(unattributed)"]
    day = int(epoch("2026-01-13T00:00:00"))
    assert report.spend["search"][day] == Decimal("0.074")
    assert len(report.days) == 19
    assert [t.total for t in report.top] == [Decimal("0.004")] * 5
    assert report.top[0].calls  # child calls are listed
    page = render_html(report)
    for text in ("search", "support", "tasks.legacy_summarize", "4.83%", "<svg", "<details"):
        assert text in page
    assert trace_id("search-w03-0") in _page(main) or "/answer" in page


def test_self_contained(main: Source) -> None:
    page = _page(main)
    assert "<script" not in page.lower()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page


def test_hostile_values_are_escaped() -> None:
    from ownership_ctx.reports.trace import build

    events = [
        {
            "kind": "provider_call",
            "ts": 1,
            "owner_team": "<script>alert(1)</script>",
            "gen_ai.provider.name": "<b>",
            "cost": "1",
        }
    ]
    report = build("ab" * 16, events)
    from ownership_ctx.reports.html import _top_section

    html = _top_section(type("R", (), {"top": [report]})())  # type: ignore[arg-type]
    assert "<script>" not in html and "&lt;script&gt;" in html


def _chromium() -> str:
    if os.path.exists(CHROMIUM) or shutil.which(CHROMIUM):
        return CHROMIUM
    message = f"Chromium not found at {CHROMIUM}; set {REQUIRE_ENV}=1 to make this a failure"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(message)
    pytest.skip(message)


def _load(page: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    """Screenshot ``page`` headless; return the PNG and the console messages logged."""
    shot = tmp_path / f"{page.stem}.png"
    profile = tmp_path / f"profile-{page.stem}"
    result = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=900,1800",
            f"--screenshot={shot}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return shot, console


def test_chromium_renders_without_console_errors(main: Source, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(_page(main), encoding="utf-8")
    shot, console = _load(page, tmp_path)
    assert console == []
    assert shot.exists() and shot.stat().st_size > 20_000  # a real picture, not a blank page
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The harness does see console errors (and CSP blocks anything external):
    control = tmp_path / "control.html"
    control.write_text(
        _page(main).replace("</body>", '<img src="https://example.invalid/x.png"></body>'),
        encoding="utf-8",
    )
    _, console = _load(control, tmp_path)
    assert any("Content Security Policy" in line for line in console)
