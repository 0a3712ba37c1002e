"""`make demo` (`ownership-ctx demo`) and the edge example both run and show what they claim."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def section(out: str, command: str) -> str:
    """The output of one `$ ownership-ctx ... <command>` step of the demo."""
    start = out.index(f" {command} ")
    end = out.find("\n$ ownership-ctx", start)
    return out[start : end if end >= 0 else len(out)]


def test_demo_points_at_the_hop_it_broke(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "250"},  # tables as wide as they want
    )
    out = result.stdout
    assert "requests" not in result.stderr  # a progress bar only on a terminal

    chargeback = section(out, "chargeback --by team")
    teams = re.findall(r"^(support|growth|search|\(none\)) ", chargeback, flags=re.M)
    assert teams == ["support", "growth", "search", "(none)"]

    # Coverage names the hop the demo broke: legacy publishes reach the worker with nothing.
    coverage = section(out, "coverage")
    broken = re.search(
        r"^celery\s+support\.triage\s+new_trace\s+feature,owner_team,workflow_id", coverage, re.M
    )
    assert broken, coverage
    assert re.search(r"^http\s+/internal/report\s+quarantined", coverage, re.M), coverage

    audit = section(out, "audit")
    assert "verdict: NOT READY" in audit
    assert "hop: celery\n    route/task/actor: support.triage" in audit
    assert "no envelope arrived" in audit

    anomaly = section(out, "anomaly")
    assert "contributions add up exactly to the change" in anomaly
    assert re.search(r"^calls_per_request .*\(retries 112", anomaly, re.M), anomaly

    assert (tmp_path / "demo" / "report.html").stat().st_size > 10_000


def test_edge_demo_shows_every_outcome() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "integrations" / "edge_demo.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    out = result.stdout
    assert out.count("status 200") == 4 and out.count("status 400") == 2
    assert "attribution='quarantined'" in out and "attribution='stamped'" in out
    assert "feature: missing (required here)" in out
    # Raw ids never appear: hashed at the edge, refused (and not echoed) in baggage.
    assert "acme-corp" not in out and "jane@acme.example" not in out
    assert "tenant='h1:" in out


def test_a_one_day_demo_runs_every_step_that_has_data(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "demo", "--days", "1", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
        cwd=tmp_path,
    )
    # One day has no two halves: no anomaly step (it would fail on an empty baseline).
    assert "anomaly" not in result.stdout
    assert "error" not in result.stderr, result.stderr
    assert "exit code 2" not in result.stdout
    assert (tmp_path / "report.html").exists()
