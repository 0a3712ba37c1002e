"""The ``ownership-ctx`` command, run as a subprocess: formats, exit codes, options."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import types
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx import cli
from tests.reports.cli_process import run_cli
from tests.reports.scenario import trace_id

ROOT = Path(__file__).resolve().parents[2]
RANGE = ["--since", "2026-01-01", "--until", "2026-02-01"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)


def test_chargeback_formats(main_url: str) -> None:
    result = run("chargeback", "--db", main_url, "--by", "team", *RANGE, "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["total"]["spend"] == "0.145"
    assert {r["group"]["team"]: r["spend"] for r in data["rows"]} == {
        "search": "0.114",
        "support": "0.024",
        "growth": "0.004",
        None: "0.003",
    }
    table = run("chargeback", "--db", main_url, *RANGE)
    assert table.returncode == 0 and "Chargeback by team" in table.stdout
    assert "0.114000" in table.stdout and "total" in table.stdout
    rows = list(
        csv.DictReader(
            io.StringIO(run("--db", main_url, "chargeback", *RANGE, "--format", "csv").stdout)
        )
    )
    assert [r["team"] for r in rows] == ["search", "support", "growth", ""]


def test_focus_export_to_file(main_url: str, tmp_path: Path) -> None:
    out = tmp_path / "focus.csv"
    result = run("chargeback", "--db", main_url, *RANGE, "--export", "focus", "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.DictReader(out.open()))
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal("0.145")
    assert "wrote" in result.stderr


def test_coverage_threshold_exit_codes(main_url: str) -> None:
    breached = run("coverage", "--db", main_url, *RANGE, "--max-unattributed", "2%")
    assert breached.returncode == 1, breached.stderr
    assert "BREACHED" in breached.stdout and "tasks.legacy_summarize" in breached.stdout
    ok = run("coverage", "--db", main_url, *RANGE, "--max-unattributed", "5%", "--format", "json")
    assert ok.returncode == 0
    data = json.loads(ok.stdout)
    assert (data["unattributed"], data["share"], data["breached"]) == ("0.007", "0.048276", False)
    assert [h["unit"] for h in data["hops"]] == [
        "/welcome",
        "tasks.legacy_summarize",
        "(no trace id)",
    ]
    assert run("coverage", "--db", main_url, *RANGE).returncode == 0  # no threshold given


def test_audit_exit_codes(main_url: str, clean_url: str) -> None:
    bad = run("audit", "--db", main_url, *RANGE, "--sample", "10")
    assert bad.returncode == 1
    assert "NOT READY" in bad.stdout and "tasks.legacy_summarize" in bad.stdout
    good = run("audit", "--db", clean_url, *RANGE, "--format", "json")
    assert good.returncode == 0, good.stdout
    data = json.loads(good.stdout)
    assert (data["verdict"], data["held"]) == ("ready", 7)


def test_trace_and_anomaly(main_url: str) -> None:
    found = run("trace", trace_id("search-w03-0"), "--db", main_url, "--format", "json")
    assert found.returncode == 0
    data = json.loads(found.stdout)
    assert data["total"] == "0.004" and [c["cost"] for c in data["calls"]] == [None, "0.004"]
    missing = run("trace", "f" * 32, "--db", main_url)  # no such trace: an input error
    assert missing.returncode == 2 and "no trace ffff" in missing.stderr
    assert run("trace", "nope", "--db", main_url).returncode == 2
    anomaly = run(
        "anomaly",
        "--db",
        main_url,
        "--team",
        "search",
        "--baseline",
        "2026-W02",
        "--current",
        "2026-W03",
        "--format",
        "json",
    )
    assert anomaly.returncode == 0, anomaly.stderr
    data = json.loads(anomaly.stdout)
    assert data["contributions"] == {
        "volume": "0.04",
        "calls_per_request": "0",  # failed attempts are free: not calls (issue 14)
        "mix": "-0.006",
        "tokens_per_call": "0",
        "price": "0",
        "unmodeled": "0",
    }
    # Default baseline: the same length just before --current.
    relative = run(
        "anomaly",
        "--db",
        main_url,
        "--team",
        "search",
        "--current",
        "7d",
        "--until",
        "2026-01-19",
        "--format",
        "json",
    )
    assert json.loads(relative.stdout)["baseline_range"]["start"] == "2026-01-05T00:00:00Z"


def test_report_html(main_url: str, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    result = run("report", "--html", str(page), "--db", main_url, *RANGE, "--progress")
    assert result.returncode == 0, result.stderr
    assert page.read_text().startswith("<!DOCTYPE html>")
    assert "4.83% unattributed" in result.stdout
    assert f"({page.stat().st_size:,} bytes;" in result.stdout  # bytes on disk, not characters
    assert "most expensive requests" in result.stderr  # progress lines


def test_usage_errors(main_url: str, tmp_path: Path) -> None:
    assert run("chargeback", "--db", main_url, "--by", "colour").returncode == 2
    assert run("chargeback", "--db", main_url, "--since", "someday").returncode == 2
    assert run("coverage", "--db", main_url, "--max-unattributed", "lots").returncode == 2
    assert run("audit", "--db", main_url, "--sample", "0").returncode == 2
    assert run("nonsense").returncode == 2
    missing = run("chargeback", "--db", f"sqlite:///{tmp_path / 'none.db'}")
    assert missing.returncode == 2 and "no event store" in missing.stderr
    assert not (tmp_path / "none.db").exists()  # a report never creates a store
    assert run("chargeback", "--db", "memory://").returncode == 2


def test_db_from_environment(main_url: str, tmp_path: Path) -> None:
    result = run("chargeback", *RANGE, "--format", "json", env={"OWNERSHIP_CTX_SINK_URL": main_url})
    assert json.loads(result.stdout)["total"]["spend"] == "0.145"
    # Else sqlite:///ownership.db in the working directory: absent here, a clear error.
    env = {"OWNERSHIP_CTX_SINK_URL": ""}
    default = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "chargeback"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=False,
    )
    assert default.returncode == 2 and "ownership.db" in default.stderr


def test_extension_commands_register(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = types.ModuleType("oc_fake_extension")

    def configure(parser: object) -> None:
        parser.add_argument("--weeks", type=int, default=2)  # type: ignore[attr-defined]

    def run_weeks(args: object, ctx: cli.Context) -> int:
        ctx.out.write(f"{args.weeks} weeks\n")  # type: ignore[attr-defined]
        return 0

    def install() -> None:
        cli.register(cli.Command("weeks", "say how many weeks", configure, run_weeks, store=False))

    module.__dict__["install"] = install
    install()
    monkeypatch.setitem(sys.modules, "oc_fake_extension", module)
    monkeypatch.setattr(cli, "EXTENSIONS", ("oc_fake_extension", "ownership_ctx.not_there"))
    try:
        assert cli.main(["weeks", "--weeks", "3"]) == 0
        assert capsys.readouterr().out == "3 weeks\n"
    finally:
        cli._COMMANDS.pop("weeks", None)
