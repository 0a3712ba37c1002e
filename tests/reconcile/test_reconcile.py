"""The join of bills with our events, on SQLite and PostgreSQL, and the CLI around it.

The fixture scenario (see conftest.scenario_events and fixtures/), worked out by hand:

- OpenAI proj_a, 2026-11-02: billed 0.70 + 0.40 = 1.10 for 2000 tokens; ours 1.00 for the
  same 2000 tokens (0.60 attributed, 0.40 unattributed): no dark spend, price drift 0.10.
- OpenAI proj_b: billed 0.25 (500 tokens, key_dark), never seen by us: dark 0.25.
- OpenAI 2026-11-03: ours 0.20, the bill covers the day and has nothing: ours only 0.20.
- Anthropic: billed 30.00 + 12.5 cents = 0.425 for 4000 tokens; ours 0.30 for 3000 tokens:
  dark = 0.425 * 1/4 = 0.10625, drift = 0.425 * 3/4 - 0.30 = 0.01875.
- Bedrock: CUR 0.06 + 0.07 = 0.13 (the tax and EC2 lines do not count) for the logs' 450
  tokens; ours 0.10 for 300 tokens (req-1, req-2): dark = 0.13 / 3; req-3 is in the logs only.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from typing import Any

import pytest

from ownership_ctx.cli import main
from ownership_ctx.reconcile.join import reconcile
from ownership_ctx.store.bills import open_bill_store

from .conftest import D1, FIXTURES, GPT, HAIKU, HAIKU_BEDROCK, call, scenario_events, write_events

IMPORTS = [
    ("openai-costs", "openai_costs.jsonl"),
    ("openai-usage", "openai_usage.json"),
    ("anthropic-usage", "anthropic_usage.json"),
    ("anthropic-cost", "anthropic_cost.json"),
    ("bedrock-logs", "bedrock_logs.jsonl"),
    ("aws-cur", "cur.csv"),
]
SPAN = ["--since", "2026-11-02", "--until", "2026-11-04"]
DARK_BEDROCK = (Decimal("0.13") / 3).quantize(Decimal("1e-9"))
DARK = Decimal("0.25") + Decimal("0.10625") + DARK_BEDROCK
BILLED = Decimal("1.905")


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue()


@pytest.fixture
def loaded(db: str) -> str:
    write_events(db, scenario_events())
    for kind, name in IMPORTS:
        code, _ = run("--db", db, "reconcile", "import", kind, str(FIXTURES / name))
        assert code == 0
    return db


def _groups(db: str) -> dict[tuple[str, str, str, str], Any]:
    store = open_bill_store(db, readonly=True)
    try:
        result = reconcile(store, D1, D1 + 2 * 86400)
    finally:
        store.close()
    return {g.key(): g for g in result.groups}


def test_groups_split_dark_spend_from_price_drift(loaded: str) -> None:
    groups = _groups(loaded)
    a = groups[("2026-11-02", "openai", GPT, "proj_a")]
    assert (a.billed_cost, a.ours_cost, a.attributed, a.unattributed) == (
        Decimal("1.10"),
        Decimal("1.00"),
        Decimal("0.60"),
        Decimal("0.40"),
    )
    assert (a.dark, a.drift, a.status) == (0, Decimal("0.10"), "price drift")
    b = groups[("2026-11-02", "openai", GPT, "proj_b")]
    assert (b.dark, b.ours_cost, b.status) == (Decimal("0.25"), 0, "dark")
    assert "project proj_b" in b.where[0]
    assert any("key_dark" in w for w in b.where)
    only = groups[("2026-11-03", "openai", GPT, "proj_a")]
    assert (only.ours_only, only.status) == (Decimal("0.20"), "ours only")
    claude = groups[("2026-11-02", "anthropic", HAIKU, "")]
    assert (claude.billed_cost, claude.billed_tokens, claude.ours_tokens) == (
        Decimal("0.425"),
        4000,
        3000,
    )
    assert claude.dark == Decimal("0.10625") and claude.drift == Decimal("0.01875")
    bedrock = groups[("2026-11-02", "aws.bedrock", "", "")]
    assert (bedrock.billed_cost, bedrock.billed_tokens, bedrock.ours_tokens) == (
        Decimal("0.13"),
        450,
        300,
    )
    assert bedrock.dark == DARK_BEDROCK and bedrock.estimated == Decimal("0.05")


def test_cache_hits_and_free_failures_are_not_ours_to_reconcile(db: str) -> None:
    # An application cache hit (cost 0, would-be tokens) made no provider call, and a failed
    # attempt without usage is free: with both added, the Anthropic group is what it was
    # (ours 3000 tokens for the bill's 4000: dark 0.10625, drift 0.01875).
    hit = call(
        ts=D1 + 600,
        provider="anthropic",
        model=HAIKU,
        cost="0",
        input_tokens=900,
        output_tokens=100,
    )
    hit["app_cache_hit"] = True
    failed = call(
        ts=D1 + 700, provider="anthropic", model=HAIKU, cost=None, input_tokens=0, output_tokens=0
    )
    failed.update(
        {
            "status": "error",
            "gen_ai.usage.input_tokens": None,
            "gen_ai.usage.output_tokens": None,
            "usage_status": "missing",
        }
    )
    write_events(db, [*scenario_events(), hit, failed])
    for kind, name in IMPORTS:
        assert run("--db", db, "reconcile", "import", kind, str(FIXTURES / name))[0] == 0
    claude = _groups(db)[("2026-11-02", "anthropic", HAIKU, "")]
    assert (claude.ours_cost, claude.ours_tokens) == (Decimal("0.30"), 3000)
    assert claude.dark == Decimal("0.10625") and claude.drift == Decimal("0.01875")


def test_estimated_spend_is_what_the_other_reports_call_estimated(db: str) -> None:
    # Day 1, Anthropic: 0.07 estimated (a cancelled stream), 0.11 with partial usage (the
    # provider's own lower-bound counts: reported spend, as in chargeback) and 0.02 reported.
    # Ours 0.07 + 0.11 + 0.02 = 0.20, of which estimated 0.07; chargeback says the same.
    events = [
        call(
            ts=D1 + 60 * n,
            provider="anthropic",
            model=HAIKU,
            cost=cost,
            input_tokens=10,
            output_tokens=5,
            usage_status=status,
        )
        for n, (cost, status) in enumerate(
            [("0.07", "estimated"), ("0.11", "partial"), ("0.02", "reported")]
        )
    ]
    write_events(db, events)
    open_bill_store(db).close()  # the bill tables, empty
    claude = _groups(db)[("2026-11-02", "anthropic", HAIKU, "")]
    assert (claude.ours_cost, claude.estimated, claude.ours_calls) == (
        Decimal("0.20"),
        Decimal("0.07"),
        3,
    )
    assert claude.ours_tokens == 45
    code, out = run("--db", db, "chargeback", *SPAN, "--format", "json")
    assert code == 0
    assert Decimal(str(json.loads(out)["total"]["estimated_spend"])) == Decimal("0.07")


def test_report_json_totals_and_bedrock_requests(loaded: str) -> None:
    code, out = run("--db", loaded, "reconcile", *SPAN, "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert Decimal(data["billed"]) == BILLED
    assert Decimal(data["ours"]) == Decimal("1.60")
    assert Decimal(data["dark"]) == DARK
    assert Decimal(data["ours_only"]) == Decimal("0.20")
    requests = {(r["identity"], r["matched"]): r for r in data["bedrock_requests"]}
    laptop = requests[("arn:aws:iam::111122223333:user/laptop", False)]
    assert laptop["requests"] == 1 and laptop["model"] == HAIKU_BEDROCK
    matched = [r for r in data["bedrock_requests"] if r["matched"]]
    assert sum(r["requests"] for r in matched) == 2
    assert {r["owner_team"] for r in matched} == {"search", ""}


def test_max_unexplained_gates_with_exit_1(loaded: str) -> None:
    # dark 0.399583333 of billed 1.905 is about 21%.
    assert run("--db", loaded, "reconcile", *SPAN, "--max-unexplained", "2%")[0] == 1
    code, out = run("--db", loaded, "reconcile", *SPAN, "--max-unexplained", "25%")
    assert code == 0 and "within the 25% limit" in out


def test_table_and_csv(loaded: str) -> None:
    code, table = run("--db", loaded, "reconcile", *SPAN)
    assert code == 0 and "dark spend" in table and "proj_b" in table
    code, text = run("--db", loaded, "reconcile", *SPAN, "--format", "csv")
    assert code == 0 and text.splitlines()[0].startswith("day,provider,model,scope,billed")


def test_imports_listed_for_audit(loaded: str) -> None:
    code, out = run("--db", loaded, "reconcile", "imports", "--format", "json")
    assert code == 0
    sources = [row["source"] for row in json.loads(out)["imports"]]
    assert sources == [kind for kind, _ in IMPORTS]


def test_a_bad_file_exits_2_and_stores_nothing(db: str, tmp_path: Any, capsys: Any) -> None:
    write_events(db, scenario_events())
    bad = tmp_path / "bad.jsonl"
    text = (FIXTURES / "openai_costs.jsonl").read_text().replace('"value": 0.25', '"value": "?"')
    bad.write_text(text)
    good = FIXTURES / "openai_costs.jsonl"
    code, _ = run("--db", db, "reconcile", "import", "openai-costs", str(good), str(bad))
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "bad.jsonl:2: bucket 1 result 1: 'amount.value' is not a number" in err
    # The good file listed first was not stored either: there are no bills at all.
    code, _ = run("--db", db, "reconcile", *SPAN)
    assert code == 2 and "no bills" in capsys.readouterr().err


def test_missing_store_is_a_usage_error(tmp_path: Any, capsys: Any) -> None:
    code, _ = run("--db", str(tmp_path / "nothing.db"), "reconcile")
    assert code == 2 and "no event store" in capsys.readouterr().err


def test_bills_imported_into_a_new_store_reconcile_as_dark(db: str) -> None:
    # No events yet: importing creates the store (event tables too), so the report reads it
    # and every billed dollar of the file is dark: 1.10 + 0.25 on day 1 (openai_costs.jsonl).
    kind, name = "openai-costs", "openai_costs.jsonl"
    assert run("--db", db, "reconcile", "import", kind, str(FIXTURES / name))[0] == 0
    code, out = run("--db", db, "reconcile", *SPAN, "--format", "json")
    assert code == 0
    result = json.loads(out)
    assert Decimal(result["dark"]) == Decimal(result["billed"]) > 0
    assert run("--db", db, "chargeback", *SPAN)[0] == 0


def test_reading_never_writes(loaded: str) -> None:
    store = open_bill_store(loaded, readonly=True)
    try:
        before = store.fetch("SELECT count(*) FROM bill_imports")[0][0]
    finally:
        store.close()
    run("--db", loaded, "reconcile", *SPAN)
    store = open_bill_store(loaded, readonly=True)
    try:
        assert store.fetch("SELECT count(*) FROM bill_imports")[0][0] == before
    finally:
        store.close()


def test_html_section_and_dark_spend_for_coverage(loaded: str, tmp_path: Any) -> None:
    from ownership_ctx.reconcile.render import dark_spend, html_section_for

    section = html_section_for(loaded, D1, D1 + 2 * 86400)
    assert section.startswith('<section id="reconciliation">') and section.endswith("</section>")
    assert "proj_b" in section and "<script" not in section
    assert dark_spend(loaded, D1, D1 + 2 * 86400) == DARK
    empty = f"sqlite:///{tmp_path / 'none.db'}"
    assert html_section_for(empty, D1, D1 + 86400) == ""
    assert dark_spend(empty, D1, D1 + 86400) == 0


def test_the_html_report_shows_the_reconciliation(loaded: str, tmp_path: Any) -> None:
    page = tmp_path / "spend.html"
    code, _ = run("--db", loaded, "report", "--html", str(page), *SPAN)
    text = page.read_text()
    assert code == 0 and text.count("<h2>Reconciliation with provider bills</h2>") == 1
    assert "proj_b" in text and "<script" not in text
    # Without bills the page has no such section.
    bare = f"sqlite:///{tmp_path / 'bare.db'}"
    write_events(bare, scenario_events())
    code, _ = run("--db", bare, "report", "--html", str(page), *SPAN)
    assert code == 0 and "Reconciliation with provider bills" not in page.read_text()


def test_coverage_counts_dark_spend_as_unattributed_when_asked(loaded: str) -> None:
    keys = ("total", "unattributed", "dark_spend")

    def totals(*extra: str) -> dict[str, Any]:
        code, out = run("--db", loaded, "coverage", *SPAN, "--no-hops", "--format", "json", *extra)
        assert code == 0
        return {k: Decimal(str(v)) for k, v in json.loads(out).items() if k in keys}

    plain, dark = totals(), totals("--include-dark-spend")
    assert plain["dark_spend"] == 0 and dark["dark_spend"] == DARK
    assert dark["unattributed"] - plain["unattributed"] == DARK
    assert dark["total"] - plain["total"] == DARK
    code, table = run("--db", loaded, "coverage", *SPAN, "--no-hops", "--include-dark-spend")
    assert code == 0 and "dark spend (billed, never seen by our events)" in table


def test_unreachable_postgresql_is_one_line_exit_2(capsys: Any) -> None:
    code, _ = run("--db", "postgresql://nobody@127.0.0.1:1/x", "reconcile")
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "connection" in err


def test_costs_not_grouped_by_project_reconcile_per_model(db: str, tmp_path: Any) -> None:
    # The same day-1 OpenAI spend, exported without group_by=project_id: 1.10 + 0.25 = 1.35
    # for the usage export's 2000 + 500 tokens; ours 1.00 for 2000 tokens (scoped proj_a).
    # One group per model: dark = 1.35 * 500/2500 = 0.27, drift = 1.35 * 0.8 - 1.00 = 0.08.
    write_events(db, scenario_events())
    costs = tmp_path / "costs.json"
    costs.write_text(
        json.dumps(
            {
                "object": "page",
                "data": [
                    {
                        "start_time": D1,
                        "end_time": D1 + 86400,
                        "results": [
                            {
                                "object": "organization.costs.result",
                                "amount": {"value": 1.35, "currency": "usd"},
                                "line_item": f"{GPT}, input",
                                "project_id": None,
                            }
                        ],
                    }
                ],
                "has_more": False,
            }
        )
    )
    assert run("--db", db, "reconcile", "import", "openai-costs", str(costs))[0] == 0
    usage = str(FIXTURES / "openai_usage.json")
    assert run("--db", db, "reconcile", "import", "openai-usage", usage)[0] == 0
    g = _groups(db)[("2026-11-02", "openai", GPT, "")]
    assert (g.billed_cost, g.billed_tokens, g.ours_cost) == (Decimal("1.35"), 2500, Decimal("1.00"))
    assert (g.dark, g.drift) == (Decimal("0.27"), Decimal("0.08"))
    assert any("key_dark" in w for w in g.where)
