"""Lookups by trace id on both databases, with SQLite's trace indexes led by the day (a write
touches the recent days' part of the index): a trace is found whatever days its events are on,
and every statement the SQLite write path runs by trace reads the day-led index."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from ownership_ctx.sinks import open_store
from ownership_ctx.store.dialect import LOST_TRACES_STORED, SQLITE

DAY0 = 1_767_571_200  # 2026-01-05T00:00:00Z
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER = "4bf92f3577b34da6a3ce929d0e0e9999"


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("db_url" if request.param == "sqlite" else "pg_url"))


def _event(kind: str, event_id: str, ts: float, trace: str = TRACE) -> dict[str, Any]:
    return {"kind": kind, "event_id": event_id, "ts": ts, "trace_id": trace}


def test_a_trace_is_found_whatever_days_its_events_are_on(url: str) -> None:
    events = [
        _event("hop", "a", DAY0 - 400 * 86400),
        _event("request", "b", DAY0 + 30),
        _event("provider_call", "c", DAY0 + 3 * 86400 + 1),
        _event("custom", "d", DAY0 + 86399.5),
        _event("hop", "e", DAY0 + 60, OTHER),
    ]
    store = open_store(url)
    store.write_batch(events)  # type: ignore[attr-defined]
    got = [e["event_id"] for e in store.events_by_trace(TRACE)]
    prefixed = store.trace_ids("4bf92f3577b34da6")
    steps = store.trace_steps([TRACE])
    near = store.trace_steps([TRACE], near=[DAY0], window=86400)
    store.close()
    assert got == ["a", "b", "d", "c"]
    assert prefixed == [TRACE, OTHER]
    assert sorted(s.ts for s in steps) == [DAY0 - 400 * 86400, DAY0 + 30]
    assert [s.ts for s in near] == [DAY0 + 30]  # the hop 400 days before is beyond the window


def test_events_centuries_apart_are_found(db_url: str) -> None:
    # Naming every day between would be a million days: the days there are read instead.
    year_3000 = 32_503_680_000
    store = open_store(db_url)
    store.write_batch([_event("hop", "old", 86400 * 3), _event("hop", "far", year_3000)])  # type: ignore[attr-defined]
    assert [e["event_id"] for e in store.events_by_trace(TRACE)] == ["old", "far"]
    assert store.trace_ids(TRACE[:8]) == [TRACE]
    store.close()


def _plans(statements: list[str]) -> list[list[str]]:
    conn = sqlite3.connect(":memory:")
    for ddl in SQLITE.schema():
        conn.execute(ddl)
    conn.execute("CREATE TEMP TABLE oc_delta AS SELECT * FROM rollup_hourly WHERE 0")
    return [
        [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", (0,) * sql.count("?"))]
        for sql in statements
    ]


def test_the_sqlite_write_path_reads_the_day_led_trace_indexes() -> None:
    # What the SQLite store runs after its inserts (``id > ?``: the rows just written).
    statements = [
        SQLITE.delta_select("requests", "FROM requests WHERE id > ?"),  # first of its trace?
        SQLITE.loss_steps_of_rows("hops", "FROM hops WHERE id > ?"),
        SQLITE.loss_steps_of_rows("requests", "FROM requests WHERE id > ?"),
        *SQLITE.loss_steps_of_traces(
            SQLITE.lost_traces_of_calls("FROM provider_calls WHERE id > ?")
        ),
        *SQLITE.loss_steps_of_traces(LOST_TRACES_STORED),  # on upgrade
    ]
    plans = _plans(statements)
    by_trace = [s for plan in plans for s in plan if "trace" in s and "unattributed" not in s]
    # Each lookup by trace a search of the day-led index, and no raw table scanned.
    assert len(by_trace) == 5
    assert all("_day_trace (<expr>=? AND trace_id=?" in s for s in by_trace), by_trace
    scans = [s for plan in plans for s in plan if s.startswith("SCAN ")]
    assert all(s.startswith(("SCAN t", "SCAN unattributed_hourly")) for s in scans), scans
