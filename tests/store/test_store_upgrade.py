"""Stores from before ``provider_calls.billing_scope`` (SQLite schema versions 1-3, and the
PostgreSQL layout without the column) are upgraded when next opened for writing: the column
is filled from the bodies, every rollup tier is rebuilt from the raw rows and keyed by it,
and the store then answers exactly as one written by this version."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ownership_ctx.sinks.config import open_backend
from ownership_ctx.store import DIMENSIONS, SQLiteStore, StoreError
from ownership_ctx.store.bills import BillStore, StoreOutdated
from ownership_ctx.store.dialect import POSTGRESQL, SQLITE

DAY0 = 1_767_571_200  # 2026-01-05T00:00:00Z
SCOPES = ("proj_a", "proj_b", None, "absent")  # "absent": an event without the key at all
OLD_PAIR = "'billing_scope', billing_scope, "


def _events() -> list[dict[str, Any]]:
    """24 provider calls over two days (scopes, providers and teams in turn) and a request."""
    out: list[dict[str, Any]] = []
    for n in range(24):
        provider = "openai" if n % 3 else "anthropic"
        event: dict[str, Any] = {
            "kind": "provider_call",
            "event_id": f"pc{n:02d}",
            "ts": DAY0 + (n % 2) * 86400 + n * 1800,
            "trace_id": f"{n % 5:032x}",
            "owner_team": "search" if n % 4 else None,
            "attribution": "attributed" if n % 4 else "unattributed",
            "status": "ok",
            "gen_ai.provider.name": provider,
            "gen_ai.response.model": "gpt-4o" if provider == "openai" else "claude",
            "gen_ai.usage.input_tokens": 100 + n,
            "gen_ai.usage.output_tokens": 10,
            "usage_status": "reported",
            "cost": f"0.{n + 1:02d}",
        }
        scope = SCOPES[n % 4]
        if scope != "absent":
            event["billing_scope"] = scope
        out.append(event)
    out.append({"kind": "request", "event_id": "rq0", "ts": DAY0 + 60, "trace_id": f"{0:032x}"})
    # Hops of traces with unattributed calls: the upgrade copies them into loss_steps, except
    # the one three days before its trace's calls (beyond the day around them).
    for n, ts in ((0, DAY0 + 30), (3, DAY0 + 3600), (3, DAY0 - 3 * 86400)):
        out.append(
            {
                "kind": "hop",
                "event_id": f"hop{n}-{ts}",
                "ts": ts,
                "trace_id": f"{n:032x}",
                "hop": "celery.consume",
                "unit": "tasks.summarize",
                "outcome": "quarantined",
                "missing": ["owner_team"],
            }
        )
    return out


def _by_day_and_scope(events: list[dict[str, Any]]) -> dict[tuple[int, str | None], list[Any]]:
    """By hand: [calls, cost] per UTC day x billing scope."""
    sums: dict[tuple[int, str | None], list[Any]] = defaultdict(lambda: [0, Decimal(0)])
    for e in events:
        if e["kind"] == "provider_call":
            acc = sums[(int(e["ts"]) // 86400 * 86400, e.get("billing_scope"))]
            acc[0] += 1
            acc[1] += Decimal(e["cost"])
    return dict(sums)


def _old_view(ddl: str) -> str:
    assert OLD_PAIR in ddl
    return ddl.replace(OLD_PAIR, "")


def _old_rollup(ddl: str) -> str:
    old = ddl.replace("billing_scope TEXT NOT NULL, ", "").replace(", billing_scope)", ")")
    assert "billing_scope" not in old
    return old


def _make_sqlite_old(path: Path, version: int) -> None:
    """Turn a store written by this version into one of ``version``: the billing scope only
    in the body, the rollups without it (empty: the upgrade must rebuild them)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP VIEW provider_calls_json")
    conn.execute(
        "UPDATE provider_calls SET body = json_set(body, '$.billing_scope', billing_scope)"
        " WHERE billing_scope IS NOT NULL"
    )
    conn.execute("ALTER TABLE provider_calls DROP COLUMN billing_scope")
    conn.execute(_old_view(SQLITE.raw_table_ddl("provider_calls")[-1]))
    for rollup in ("rollup_hourly", "rollup_daily"):
        conn.execute(f"DROP TABLE {rollup}")
    _drop_loss_steps(conn)
    _old_trace_indexes(conn)
    tiers = [
        ddl
        for ddl in SQLITE.schema()
        if ddl.startswith(
            (
                "CREATE TABLE IF NOT EXISTS rollup_hourly ",
                "CREATE TABLE IF NOT EXISTS rollup_daily ",
            )
        )
    ]
    assert "rollup_hourly" in tiers[0] and "rollup_daily" in tiers[1]
    if version == 1:  # raw tables and the hourly tier only
        conn.execute(_old_rollup(tiers[0]))
        conn.execute("DROP TABLE unattributed_hourly")
        conn.execute("DROP TABLE unpriced_hourly")
    else:
        for ddl in tiers:
            conn.execute(_old_rollup(ddl))
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def _drop_loss_steps(conn: Any) -> None:
    """What version 5 added: the steps of the traces with unattributed calls, and the index
    that finds those traces."""
    conn.execute("DROP TABLE loss_steps")
    conn.execute("DROP INDEX unattributed_hourly_trace")


def _old_trace_indexes(conn: Any) -> None:
    """SQLite before version 5: trace indexes on the trace id alone."""
    for table in ("provider_calls", "requests", "hops", "other_events"):
        conn.execute(f"DROP INDEX {table}_day_trace")
        conn.execute(f"CREATE INDEX {table}_trace ON {table} (trace_id)")


def _indexes(path: Path) -> set[str]:
    conn = sqlite3.connect(path)
    try:
        return {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
    finally:
        conn.close()


def _table(path: Path, name: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
    finally:
        conn.close()


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_old_sqlite_store_is_upgraded_to_billing_scope(tmp_path: Path, version: int) -> None:
    events = _events()
    fresh = SQLiteStore(tmp_path / "fresh.db")
    fresh.write_batch(events)
    old = SQLiteStore(tmp_path / "old.db")
    old.write_batch(events)
    old.close()
    _make_sqlite_old(tmp_path / "old.db", version)

    reader = SQLiteStore(tmp_path / "old.db", readonly=True)
    with pytest.raises(StoreError, match="older ownership_ctx: open it once for writing"):
        reader.extent()
    reader.close()
    bills = BillStore(sqlite3.connect(tmp_path / "old.db"), "sqlite", readonly=True)
    with pytest.raises(StoreOutdated, match="open it once for writing"):
        bills.event_groups(DAY0, DAY0 + 2 * 86400)
    bills.close()

    upgraded = SQLiteStore(tmp_path / "old.db")
    upgraded.write_batch([])  # opened for writing: upgraded
    assert _indexes(tmp_path / "old.db") == _indexes(tmp_path / "fresh.db")
    conn = sqlite3.connect(tmp_path / "old.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (5,)
    scopes = dict(conn.execute("SELECT event_id, billing_scope FROM provider_calls"))
    conn.close()
    assert scopes == {
        e["event_id"]: e.get("billing_scope") for e in events if e["kind"] == "provider_call"
    }
    # Every tier as a fresh store's, row for row.
    for name in (
        "rollup_hourly",
        "rollup_daily",
        "unattributed_hourly",
        "unpriced_hourly",
        "loss_steps",
    ):
        assert _table(tmp_path / "old.db", name) == _table(tmp_path / "fresh.db", name), name
    # And as worked out from the events: calls and cost per day x scope.
    got = {
        (r.group["day"], r.group["billing_scope"]): [r.calls, r.cost]
        for r in upgraded.rollups(DAY0, DAY0 + 2 * 86400, ("day", "billing_scope"))
    }
    assert got == _by_day_and_scope(events)
    # Events read back as a fresh store's (the scope from the column or the body).
    for trace in {e["trace_id"] for e in events}:
        assert upgraded.events_by_trace(trace) == fresh.events_by_trace(trace)
    # Written after the upgrade: the scope is in its column only, and the JSON view reads it.
    late = dict(events[1], event_id="late", billing_scope="proj_c")
    upgraded.write_batch([late])
    conn = sqlite3.connect(tmp_path / "old.db")
    (body,) = conn.execute("SELECT body FROM provider_calls WHERE event_id = 'late'").fetchone()
    (event,) = conn.execute(
        "SELECT event FROM provider_calls_json WHERE event_id = 'late'"
    ).fetchone()
    conn.close()
    assert "billing_scope" not in json.loads(body)
    assert json.loads(event)["billing_scope"] == "proj_c"
    upgraded.close()
    fresh.close()


def test_a_version_4_sqlite_store_gets_its_loss_steps_without_a_rollup_rebuild(
    tmp_path: Path,
) -> None:
    events = _events()
    fresh = SQLiteStore(tmp_path / "fresh.db")
    fresh.write_batch(events)
    expected = _table(tmp_path / "fresh.db", "loss_steps")
    # Two hops copied; the third is three days before its trace's calls.
    assert sorted(row[1] for row in expected) == ["hop0-1767571230", "hop3-1767574800", "rq0"]
    old = SQLiteStore(tmp_path / "old.db")
    old.write_batch(events)
    old.close()
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    _drop_loss_steps(conn)
    _old_trace_indexes(conn)
    # A mark in the rollups: an upgrade from 4 keeps them (no rebuild of a large store).
    marked = conn.execute(
        "UPDATE rollup_hourly SET calls = calls + 1000"
        " WHERE hour = (SELECT min(hour) FROM rollup_hourly)"
    ).rowcount
    conn.execute("PRAGMA user_version = 4")
    conn.close()

    reader = SQLiteStore(tmp_path / "old.db", readonly=True)
    with pytest.raises(StoreError, match="older ownership_ctx: open it once for writing"):
        reader.loss_shapes(DAY0, DAY0 + 2 * 86400, ("owner_team",))
    reader.close()

    upgraded = SQLiteStore(tmp_path / "old.db")
    upgraded.write_batch([])
    assert _table(tmp_path / "old.db", "loss_steps") == expected
    assert _indexes(tmp_path / "old.db") == _indexes(tmp_path / "fresh.db")
    assert sum(r.calls for r in upgraded.rollups(0, 2**40, ("hour",))) == 24 + 1000 * marked
    required = ("owner_team", "workflow_id", "feature")
    assert upgraded.loss_shapes(DAY0 - 86400, DAY0 + 3 * 86400, required) == fresh.loss_shapes(
        DAY0 - 86400, DAY0 + 3 * 86400, required
    )
    upgraded.close()
    fresh.close()


def _pg_rollups(store: Any) -> list[Any]:
    return [
        store.rollups(0, 2**40, ("hour", *DIMENSIONS)),
        store.rollups(DAY0, DAY0 + 2 * 86400, ("day", *DIMENSIONS)),  # the daily tier
    ]


def test_an_old_postgres_store_is_upgraded_to_billing_scope(pg_url: str) -> None:
    events = _events()
    store = open_backend(pg_url)
    store.write_batch(events)
    fresh = _pg_rollups(store)
    traces = {t: store.events_by_trace(t) for t in {e["trace_id"] for e in events}}
    shapes = store.loss_shapes(DAY0 - 86400, DAY0 + 3 * 86400, ("owner_team",))
    assert any(step.kind == "hop" for shape in shapes for step in shape.steps)
    store.close()
    schema = pg_url.rsplit("schema=", 1)[1]
    conninfo = pg_url.split("?", 1)[0]
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as c:
        c.execute(
            "UPDATE provider_calls SET body = jsonb_set(body, '{billing_scope}',"
            " to_jsonb(billing_scope)) WHERE billing_scope IS NOT NULL"
        )
        c.execute("DROP VIEW provider_calls_json")
        c.execute("ALTER TABLE provider_calls DROP COLUMN billing_scope")
        c.execute(_old_view(POSTGRESQL.raw_table_ddl("provider_calls")[-1]))
        for rollup in ("rollup_hourly", "rollup_daily"):
            c.execute(f"ALTER TABLE {rollup} DROP COLUMN billing_scope")
            c.execute(f"DELETE FROM {rollup}")
        _drop_loss_steps(c)

    reader = open_backend(pg_url, readonly=True)
    with pytest.raises(StoreError, match="older ownership_ctx: open it once for writing"):
        reader.loss_shapes(DAY0, DAY0 + 2 * 86400, ("owner_team",))
    reader.close()
    upgraded = open_backend(pg_url)
    upgraded.write_batch([])  # opened for writing: upgraded
    assert _pg_rollups(upgraded) == fresh
    assert upgraded.loss_shapes(DAY0 - 86400, DAY0 + 3 * 86400, ("owner_team",)) == shapes
    got = {
        (r.group["day"], r.group["billing_scope"]): [r.calls, r.cost]
        for r in upgraded.rollups(DAY0, DAY0 + 2 * 86400, ("day", "billing_scope"))
    }
    assert got == _by_day_and_scope(events)
    assert {t: upgraded.events_by_trace(t) for t in traces} == traces
    late = dict(events[1], event_id="late", billing_scope="proj_c")
    upgraded.write_batch([late])
    upgraded.close()
    with psycopg.connect(conninfo, autocommit=True, options=f"-c search_path={schema}") as c:
        scopes = dict(c.execute("SELECT event_id, billing_scope FROM provider_calls").fetchall())
        (body, event) = c.execute(
            "SELECT p.body, j.event FROM provider_calls p JOIN provider_calls_json j"
            " USING (event_id) WHERE event_id = 'late'"
        ).fetchone()  # type: ignore[misc]
    assert scopes == {
        **{e["event_id"]: e.get("billing_scope") for e in events if e["kind"] == "provider_call"},
        "late": "proj_c",
    }
    assert "billing_scope" not in body and event["billing_scope"] == "proj_c"
