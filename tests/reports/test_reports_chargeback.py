"""Chargeback and the FOCUS export on the scenario store: exact figures, both backends."""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import pytest

from ownership_ctx.reports import Source, TimeRange, UsageError, chargeback, focus_csv, parse_by
from ownership_ctx.reports.focus import COLUMNS
from tests.reports.scenario import W02, W03, W04, epoch

D = Decimal
ALL = TimeRange(int(epoch("2026-01-01T00:00:00")), int(epoch("2026-02-01T00:00:00")))


def _rows(result: object) -> dict[tuple[str | None, ...], object]:
    return {tuple(r.group.values()): r for r in result.rows}  # type: ignore[attr-defined]


def test_by_team(main: Source) -> None:
    result = chargeback(main, ALL, ("team",))
    got = {
        r.group["team"]: (r.spend, r.requests, r.calls, r.input_tokens, r.output_tokens)
        for r in result.rows
    }
    assert got == {
        # Calls are billed calls: not the 6 failed attempts (free), not the cache hit, whose
        # would-be tokens are avoided, not consumed (issue 14).
        "search": (D("0.114"), 30, 30, 30_000, 8_000),
        "support": (D("0.024"), 10, 8, 16_000, 1_600),
        "growth": (D("0.004"), 1, 1, 1_000, 250),
        None: (D("0.003"), 0, 3, 3_000, 1_500),
    }
    assert [r.group["team"] for r in result.rows] == ["search", "support", "growth", None]
    search = result.rows[0]
    assert (search.retries, search.fallbacks, search.app_cache_hits, search.unpriced_calls) == (
        4,
        2,
        1,
        0,
    )
    assert search.failed_attempts == 6
    assert (search.avoided_input_tokens, search.avoided_output_tokens) == (1_000, 500)
    assert search.cost_avoided == D("0.001")
    assert search.cost_per_request == D("0.0038")
    assert search.share == D("0.786207")  # 0.114 / 0.145
    t = result.total
    assert (t.spend, t.requests, t.calls, t.unpriced_calls) == (D("0.145"), 41, 42, 0)
    assert t.unattributed_spend == D("0.003")  # no owner (the rollup's own measure)
    assert any("6 failed attempt(s)" in n for n in result.notes)


def test_by_team_and_model_cannot_split_requests(main: Source) -> None:
    result = chargeback(main, ALL, parse_by("team,model"))
    got = {tuple(r.group.values()): (r.spend, r.calls, r.requests) for r in result.rows}
    assert got == {
        ("search", "gpt-4o"): (D("0.112"), 28, None),
        ("search", "gpt-4o-mini"): (D("0.002"), 2, None),
        ("support", "claude-haiku-4-5"): (D("0.024"), 8, None),
        ("growth", "gpt-4o"): (D("0.004"), 1, None),
        (None, "gpt-4o-mini"): (D("0.003"), 3, None),
    }
    assert result.total.requests == 41
    assert sum((r.spend for r in result.rows), D(0)) == result.total.spend


def test_by_workflow_feature_tenant_provider(main: Source) -> None:
    result = chargeback(main, ALL, ("workflow", "feature"))
    got = {tuple(r.group.values()): (r.spend, r.requests) for r in result.rows}
    assert got == {
        ("answer", "summaries"): (D("0.114"), 30),
        ("tickets", "triage"): (D("0.024"), 8),
        ("tickets", "legacy-summary"): (D("0"), 2),
        ("onboarding", None): (D("0.004"), 1),
        (None, None): (D("0.003"), 0),
    }
    by_provider = {r.group["provider"]: r.spend for r in chargeback(main, ALL, ("provider",)).rows}
    assert by_provider == {"openai": D("0.121"), "anthropic": D("0.024")}


def test_range_is_respected(main: Source) -> None:
    week2 = {r.group["team"]: r.spend for r in chargeback(main, TimeRange(int(W02), int(W03))).rows}
    assert week2 == {"search": D("0.04"), "support": D("0.012")}
    week3 = chargeback(main, TimeRange(int(W03), int(W04)))
    assert week3.total.spend == D("0.093")
    empty = chargeback(main, TimeRange(int(W04), int(W04) + 3600))
    assert empty.rows == [] and empty.total.spend == 0 and empty.total.requests == 0


def test_document_renders_exactly(main: Source) -> None:
    from ownership_ctx.reports import render

    document = chargeback(main, ALL, ("team",)).document()
    data = json.loads(render(document, "json"))
    assert data["total"]["spend"] == "0.145"
    assert [r["spend"] for r in data["rows"]] == ["0.114", "0.024", "0.004", "0.003"]
    table = render(document, "table", width=200)
    assert "search" in table and "0.114000" in table and "(none)" in table
    rows = list(csv.DictReader(io.StringIO(render(document, "csv"))))
    assert rows[0]["team"] == "search" and rows[0]["spend"] == "0.114"
    assert rows[-1]["team"] == "" and rows[-1]["spend"] == "0.003"


def test_parse_by_rejects_unknown_names() -> None:
    assert parse_by("team, model,team") == ("team", "model")
    with pytest.raises(UsageError):
        parse_by("team,colour")
    with pytest.raises(UsageError):
        parse_by(" , ")


def test_focus_export(main: Source) -> None:
    rows = list(csv.DictReader(io.StringIO(focus_csv(main, ALL))))
    assert tuple(rows[0]) == COLUMNS
    assert all(c.startswith("x_") for c in COLUMNS[COLUMNS.index("Tags") + 1 :])
    assert sum(D(r["BilledCost"]) for r in rows) == D("0.145")
    assert all(r["BilledCost"] == r["EffectiveCost"] for r in rows)
    assert {r["ChargeCategory"] for r in rows} == {"Usage"}
    assert {r["ServiceCategory"] for r in rows} == {"AI and Machine Learning"}
    assert {r["BillingCurrency"] for r in rows} == {"USD"}
    assert {r["ConsumedUnit"] for r in rows} == {"Tokens"}
    support = [r for r in rows if r["x_OwnerTeam"] == "support"]
    assert [(r["ChargePeriodStart"], r["ChargePeriodEnd"]) for r in support] == [
        ("2026-01-07T00:00:00Z", "2026-01-08T00:00:00Z"),
        ("2026-01-14T00:00:00Z", "2026-01-15T00:00:00Z"),
    ]
    first = support[0]
    assert first["BilledCost"] == "0.012"
    assert first["ConsumedQuantity"] == str(4 * 2200)
    assert first["SkuId"] == "anthropic/claude-haiku-4-5"
    assert first["ServiceName"] == "anthropic" and first["x_Calls"] == "4"
    assert json.loads(first["Tags"]) == {
        "feature": "triage",
        "owner_team": "support",
        "tenant": "h1:" + "b2" * 16,
        "workflow_id": "tickets",
    }
    unowned = [r for r in rows if not r["x_OwnerTeam"]]
    assert sum(D(r["x_UnattributedCost"]) for r in unowned) == D("0.003")
    assert {r["BillingPeriodStart"] for r in rows} == {"2026-01-01T00:00:00Z"}
