"""``ownership-ctx budgets``: spend, share used, forecast and who is over, from the store;
exit 1 when a budget is over, 2 for bad input; the HTML report's burn-down."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx import bind, events, metering
from ownership_ctx.cli import main
from ownership_ctx.sinks import MemorySink, open_store
from tests.budgets.support import envelope

NOON = datetime(2026, 11, 18, 12, 0, tzinfo=timezone.utc).timestamp()
BUDGETS = """\
[[budget]]
name = "support-daily"
team = "support"
period = "day"
limit = "1.00"
soft = "0.50"

[[budget]]
name = "search-daily"
team = "search"
period = "day"
limit = "0.20"
"""


@pytest.fixture
def store(tmp_path: Path) -> str:
    sink = MemorySink()
    previous = events.set_sink(sink)
    try:
        for team, cost, hour in (
            ("support", "0.5", 9),
            ("support", "0.3", 11),
            ("search", "0.3", 10),
        ):
            ts = NOON - (12 - hour) * 3600
            with bind(envelope(owner_team=team)):
                metering.record_call(
                    provider="openai", model="gpt-4o", usage=None, cost=Decimal(cost), ts=ts
                )
    finally:
        events.set_sink(previous)
    path = tmp_path / "ownership.db"
    backend = open_store(f"sqlite:///{path}")
    backend.write_batch(sink.events)
    backend.close()
    return f"sqlite:///{path}"


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


def test_budgets_shows_spend_share_forecast_and_who_is_over(store: str, tmp_path: Path) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(BUDGETS)
    code, text = run(
        "budgets",
        "--db",
        store,
        "--config",
        str(config),
        "--at",
        "2026-11-18T12:00",
        "--format",
        "json",
    )
    assert code == 1  # search is over
    document = json.loads(text)
    rows = {r["budget"]: r for r in document["budgets"]}
    assert [r["budget"] for r in document["over"]] == ["search-daily"]
    assert rows["support-daily"] == {
        "budget": "support-daily",
        "owner": "owner_team=support",
        "period": "2026-11-18",
        "spent": "0.8",
        "limit": "1",
        "used": "0.8",
        "forecast": "1.6",
        "state": "soft",
    }
    assert rows["search-daily"]["state"] == "over" and rows["search-daily"]["spent"] == "0.3"
    code, text = run("budgets", "--db", store, "--config", str(config), "--at", "2026-11-18T12:00")
    assert "over: search-daily (owner_team=search)" in text
    assert "80.00%" in text


def test_within_every_budget_exits_0(store: str, tmp_path: Path) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(BUDGETS.replace('limit = "0.20"', 'limit = "5"'))
    code, _ = run("budgets", "--db", store, "--config", str(config), "--at", "2026-11-18T12:00")
    assert code == 0


def test_without_db_the_store_the_file_names_is_read(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNERSHIP_CTX_SINK_URL", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    config = tmp_path / "budgets.toml"
    config.write_text(f'[settings]\nstore = "{store}"\n\n{BUDGETS}')
    code, text = run("budgets", "--config", str(config), "--at", "2026-11-18T12:00")
    assert code == 1 and "over: search-daily (owner_team=search)" in text
    # --db still wins over the file.
    code, _ = run("budgets", "--db", str(tmp_path / "none.db"), "--config", str(config))
    assert code == 2
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "elsewhere.db").exists()


def test_bad_input_is_one_line_and_exit_2(
    store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text('[[budget]]\nname = "x"\nlimit = "lots"\n')
    code, _ = run("budgets", "--db", store, "--config", str(config))
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{config}:3: budget 'x': limit is not a number" in err
    code, _ = run("budgets", "--db", store)
    assert code == 2 and "--config" in capsys.readouterr().err


def test_the_html_report_draws_the_burn_down(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(BUDGETS)
    monkeypatch.setenv("OWNERSHIP_CTX_BUDGETS", str(config))
    page = tmp_path / "report.html"
    code, _ = run(
        "report",
        "--db",
        store,
        "--html",
        str(page),
        "--since",
        "2026-11-01",
        "--until",
        "2026-11-30",
    )
    assert code == 0
    html = page.read_text()
    assert "Budgets: burn-down" in html and html.count("<svg") >= 2
    assert 'aria-label="burn-down of support-daily"' in html
    monkeypatch.delenv("OWNERSHIP_CTX_BUDGETS")
    run("report", "--db", store, "--html", str(page), "--since", "2026-11-01")
    assert "Budgets" not in page.read_text()  # budgets off: the report is unchanged


def test_a_split_budget_without_spend_is_named_in_a_note(store: str, tmp_path: Path) -> None:
    config = tmp_path / "budgets.toml"
    config.write_text(
        '[[budget]]\nname = "per-tenant"\nteam = "support"\neach = ["tenant"]\nlimit = 1\n'
    )
    code, text = run(
        "budgets",
        "--db",
        store,
        "--config",
        str(config),
        "--at",
        "2026-11-18T12:00",
        "--format",
        "json",
    )
    document = json.loads(text)
    assert code == 0 and document["budgets"] == []
    assert document["notes"] == ["per-tenant: no owner has spend this period (split by tenant)"]
