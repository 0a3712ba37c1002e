"""The SQLite store: schema, idempotent writes, rollups, odd values, the read API."""

from __future__ import annotations

import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest

from ownership_ctx.schema.money import nano_parts
from ownership_ctx.store import SQLiteStore
from tests.store.helpers import TRACE, hop_event, provider_call, request_event

HOUR = 3600 * 500_000  # an hour boundary (epoch seconds)


@pytest.fixture
def store(tmp_path: Path) -> SQLiteStore:
    s = SQLiteStore(tmp_path / "events.db")
    yield s
    s.close()


def test_wal_mode_and_schema(store: SQLiteStore) -> None:
    store.write_batch([])
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"provider_calls", "requests", "hops", "other_events", "rollup_hourly"} <= tables
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"provider_calls_day_trace", "provider_calls_ts", "provider_calls_event_id"} <= indexes


def test_typed_columns_and_full_body(store: SQLiteStore) -> None:
    event = provider_call(billing_scope="proj_a", **{"extra.region": "eu"})
    store.write_batch([event])
    conn = sqlite3.connect(store.path)
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM provider_calls").fetchone()
    assert row["owner_team"] == "search"
    assert row["billing_scope"] == "proj_a" and "billing_scope" not in json.loads(row["body"])
    assert row["user_id"] == "u_9a8b"
    assert row["response_model"] == "gpt-4o-2024-08-06"
    assert row["input_tokens"] == 1200
    assert row["cost"] == "0.0042500"
    assert row["cost_nanousd"] == 4_250_000
    assert row["app_cache_hit"] == 0
    assert store.events_by_trace(TRACE) == [event]


def test_replays_and_duplicates_are_stored_and_rolled_up_once(store: SQLiteStore) -> None:
    batch = [provider_call(ts=HOUR + i) for i in range(50)] + [request_event(ts=HOUR)]
    store.write_batch(batch)
    store.write_batch(batch)
    store.write_batch(batch[:10] + batch[:10] + [provider_call(ts=HOUR)])
    assert len(store.event_ids()) == 52
    (total,) = store.rollups(HOUR, HOUR + 3600)
    assert total.calls == 51
    assert total.requests == 1
    assert total.cost == Decimal("0.0042500") * 51
    assert total.input_tokens == 1200 * 51


def test_rollup_measures(store: SQLiteStore) -> None:
    store.write_batch(
        [
            provider_call(ts=HOUR, attempt=2, status="error", cost=None),
            provider_call(ts=HOUR, fallback_of="gpt-4o", cost="0.5"),
            provider_call(ts=HOUR, app_cache_hit=True, cost="0", cost_avoided="0.25"),
            provider_call(ts=HOUR, owner_team=None, attribution="unattributed", cost="1.5"),
            provider_call(ts=HOUR, attribution="defaulted", cost="2"),
            request_event(ts=HOUR),
            hop_event(ts=HOUR),
        ]
    )
    (total,) = store.rollups(HOUR, HOUR + 3600)
    # The cache hit is no call (issue 14); the error reported usage, so it is a call.
    assert (total.calls, total.requests, total.errors, total.retries) == (4, 1, 1, 1)
    assert (total.failed_attempts, total.user_actions) == (0, 1)
    assert (total.fallbacks, total.app_cache_hits, total.unpriced_calls) == (1, 1, 1)
    assert total.cost == Decimal("4.0")
    assert total.unattributed_cost == Decimal("3.5")
    assert total.cost_avoided == Decimal("0.25")
    teams = {r.group["owner_team"]: r.calls for r in store.rollups(HOUR, HOUR + 1, ["owner_team"])}
    assert teams == {"search": 3, None: 1}
    assert store.rollups(HOUR, HOUR + 1, ["owner_team"], where={"owner_team": None})[0].calls == 1


def test_grouping_by_time_and_model(store: SQLiteStore) -> None:
    day = 86400 * 20_000
    store.write_batch(
        [
            provider_call(ts=day + 10),
            provider_call(ts=day + 3600 * 5, **{"gen_ai.response.model": None}),
            provider_call(ts=day + 86400 + 1),
        ]
    )
    by_hour = store.rollups(day, day + 2 * 86400, ["hour"])
    assert [(r.group["hour"], r.calls) for r in by_hour] == [
        (day, 1),
        (day + 3600 * 5, 1),
        (day + 86400, 1),
    ]
    by_day = store.rollups(day, day + 2 * 86400, ["day", "model"])
    assert [(r.group["day"], r.group["model"], r.calls) for r in by_day] == [
        (day, "gpt-4o", 1),  # the requested model stands in when the response says none
        (day, "gpt-4o-2024-08-06", 1),
        (day + 86400, "gpt-4o-2024-08-06", 1),
    ]
    assert store.rollups(day + 86400, day + 2 * 86400)[0].calls == 1
    with pytest.raises(ValueError):
        store.rollups(0, 1, ["cost"])


def test_odd_values_do_not_hold_back_their_batch(store: SQLiteStore) -> None:
    good = provider_call()
    odd = [
        provider_call(attempt=[1, 2], latency_ms="slow", cost="NaN"),
        provider_call(**{"gen_ai.usage.input_tokens": 10**30}),
        provider_call(ts="yesterday", streaming="yes", owner_team={"a": 1}),
        {"kind": "provider_call", "event_id": None, "cost": object()},
        {"kind": "something_new", "event_id": "new-1", "ts": 1.0, "payload": {"x": [1]}},
    ]
    store.write_batch([good, *odd])
    assert len(store.event_ids()) == 6
    assert store.event_ids("other") == ["new-1"]
    (total,) = store.rollups(0, 2**40)
    assert total.calls == 5
    assert total.unpriced_calls == 2  # NaN and an object are not costs


def test_nano_parts() -> None:
    assert nano_parts("0.0000015") == ("0.0000015", 1500)
    assert nano_parts("12") == ("12", 12_000_000_000)
    assert nano_parts("-0.5") == ("-0.5", -500_000_000)
    assert nano_parts("1E-7") == ("0.0000001", 100)
    assert nano_parts("0.0000000015") == ("0.0000000015", 2)  # half-even to nano-dollars
    assert nano_parts(Decimal("0.25")) == ("0.25", 250_000_000)
    for bad in (None, "", "abc", "NaN", "Infinity", "1e30", True, [1]):
        assert nano_parts(bad) == (None, None)


def test_two_stores_one_file(tmp_path: Path) -> None:
    a, b = SQLiteStore(tmp_path / "x.db"), SQLiteStore(tmp_path / "x.db")
    a.write_batch([provider_call()])
    b.write_batch([provider_call()])
    assert len(a.event_ids()) == 2
    a.close()
    b.close()


def test_full_event_as_json_in_sql(store: SQLiteStore) -> None:
    """The body keeps only what has no column; the *_json views give SQL the whole event."""
    event = provider_call(
        streaming=True, cost="1E-7", billing_scope="proj_a", **{"extra.region": "eu"}
    )
    store.write_batch([event, request_event()])
    conn = sqlite3.connect(store.path)
    (text,) = conn.execute("SELECT event FROM provider_calls_json").fetchone()
    as_sql = {k: v for k, v in json.loads(text).items() if v is not None}
    # SQLite's JSON prints reals with 15 digits: the ts column itself is exact.
    assert as_sql.pop("ts") == pytest.approx(event["ts"], abs=1e-4)
    assert as_sql == {k: v for k, v in event.items() if v is not None and k != "ts"}
    assert conn.execute(
        "SELECT json_extract(event, '$.\"extra.region\"') FROM provider_calls_json"
    ).fetchone() == ("eu",)
    # Read back exactly as emitted, the unusual cost spelling included.
    assert event in store.events_by_trace(TRACE)
