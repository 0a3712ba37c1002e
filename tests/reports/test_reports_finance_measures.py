"""Finance-grade measures: requests are user actions, avoided tokens are not consumed, free
failures are not calls, estimated spend is shown apart.

On SQLite and PostgreSQL, the store holds `finance_traffic`'s script; every expected figure
is its `TRUTH` (counted by hand from the script), never the report code's.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from decimal import Decimal

import pytest

from ownership_ctx.reports import (
    TimeRange,
    anomaly,
    chargeback,
    focus_csv,
    open_source,
    render,
    trace_report,
)
from ownership_ctx.reports.chargeback import ChargebackRow
from tests.reports import finance_traffic
from tests.reports.finance_traffic import TRUTH, W02, W03, W04

RANGE = TimeRange(W02, W04)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "sqlite":
        found = f"sqlite:///{tmp_path_factory.mktemp('finance') / 'events.db'}"
    else:
        server = request.getfixturevalue("pg_database")
        found = f"{server}?schema=finance_{uuid.uuid4().hex[:8]}"
    finance_traffic.write(found)
    return found


@pytest.fixture
def teams(url: str) -> Iterator[dict[str | None, ChargebackRow]]:
    with open_source(url) as source:
        result = chargeback(source, RANGE, ("team",))
    yield {r.group["team"]: r for r in result.rows}


def test_requests_are_user_actions_and_service_requests_are_kept(
    teams: dict[str | None, ChargebackRow],
) -> None:
    # A search action crosses the gateway and the internal service: two request events, one
    # user action.
    assert {t: r.requests for t, r in teams.items()} == TRUTH.user_actions
    assert {t: r.service_requests for t, r in teams.items()} == TRUTH.service_requests


def test_unit_costs_are_per_user_action(teams: dict[str | None, ChargebackRow]) -> None:
    for team, row in teams.items():
        assert team is not None
        expected = TRUTH.spend_by_team[team] / TRUTH.user_actions[team]
        assert row.cost_per_request == expected.quantize(Decimal("0.000000001"))


def test_cache_hits_are_avoided_never_consumed_nor_calls(
    teams: dict[str | None, ChargebackRow],
) -> None:
    search = teams["search"]
    assert search.calls == TRUTH.calls["search"]
    assert search.app_cache_hits == TRUTH.cache_hits
    assert (search.avoided_input_tokens, search.avoided_output_tokens) == (
        TRUTH.avoided_input_tokens,
        TRUTH.avoided_output_tokens,
    )
    assert search.cost_avoided == TRUTH.cost_avoided
    assert search.input_tokens == 13 * 1000 and search.output_tokens == 13 * 250
    assert sum(r.input_tokens for r in teams.values()) == TRUTH.input_tokens
    assert sum(r.output_tokens for r in teams.values()) == TRUTH.output_tokens


def test_failed_attempts_have_their_own_column(teams: dict[str | None, ChargebackRow]) -> None:
    assert {t: r.failed_attempts for t, r in teams.items()} == TRUTH.failed_attempts
    assert {t: r.unpriced_calls for t, r in teams.items()} == {
        "search": 0,
        "support": 0,
        "growth": TRUTH.unpriced_calls,
    }
    assert {t: r.calls for t, r in teams.items()} == TRUTH.calls


def test_estimated_spend_is_shown_apart(teams: dict[str | None, ChargebackRow]) -> None:
    support = teams["support"]
    assert (support.estimated_calls, support.estimated_spend) == (
        TRUTH.estimated_calls,
        TRUTH.estimated_spend,
    )
    assert support.spend == TRUTH.spend_by_team["support"]  # estimated spend is spend
    assert teams["search"].estimated_spend == 0


def test_the_trace_says_which_call_is_estimated(url: str) -> None:
    with open_source(url) as source:
        found = trace_report(source, finance_traffic.CANCELLED_TRACE)
    (call,) = found.calls
    assert (call.usage_status, call.cost) == ("estimated", TRUTH.estimated_spend)
    assert "estimated: stream cancelled" in render(found.document(), "table")


def test_focus_consumed_quantity_is_tokens_processed(url: str) -> None:
    with open_source(url) as source:
        text = "".join(focus_csv(source, RANGE))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sum(int(r["ConsumedQuantity"]) for r in rows) == TRUTH.input_tokens + TRUTH.output_tokens
    assert sum(int(r["x_Calls"]) for r in rows) == sum(TRUTH.calls.values())
    assert sum(Decimal(r["BilledCost"]) for r in rows) == TRUTH.spend


def test_anomaly_counts_only_billed_calls_and_no_phantom_mix(url: str) -> None:
    # search: 5 actions in week 2, 8 in week 3, one gpt-4o call each; the failed attempts and
    # the cache hit move nothing: the whole change is volume.
    with open_source(url) as source:
        result = anomaly(source, "search", TimeRange(W02, W03), TimeRange(W03, W04))
    assert list(result.baseline.models) == list(result.current.models) == ["openai/gpt-4o@default"]
    assert (result.baseline.calls, result.current.calls) == (5, 8)
    assert (result.baseline.requests, result.current.requests) == (5, 8)
    d = result.decomposition
    assert d.change == Decimal("0.012")
    assert d.contributions["volume"] == Decimal("0.012")
    assert all(v == 0 for k, v in d.contributions.items() if k != "volume")


def test_a_store_written_before_these_measures_is_rebuilt_from_its_raw_rows(url: str) -> None:
    """Rollups of an older layout (here: emptied, marked as version 2 / without the new
    columns) are rebuilt from the raw rows when the store is next opened for writing."""
    from ownership_ctx.sinks import open_store

    store = open_store(url)
    if url.startswith("sqlite"):
        import sqlite3

        store.close()
        path = url.removeprefix("sqlite:///")
        with sqlite3.connect(path) as conn:
            conn.execute("DELETE FROM rollup_hourly")
            conn.execute("DELETE FROM rollup_daily")
            conn.execute("PRAGMA user_version = 2")
        conn.close()
    else:
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        conninfo = url.split("?", 1)[0]
        store.close()
        with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as c:
            c.execute("ALTER TABLE rollup_hourly DROP COLUMN user_actions")
            c.execute("DELETE FROM rollup_daily")
    upgraded = open_store(url)
    upgraded.write_batch([])  # type: ignore[attr-defined]  # opened for writing: upgraded
    upgraded.close()
    with open_source(url) as source:
        result = chargeback(source, RANGE, ("team",))
    assert {r.group["team"]: r.requests for r in result.rows} == TRUTH.user_actions
    assert result.total.spend == TRUTH.spend
    assert result.total.calls == sum(TRUTH.calls.values())
