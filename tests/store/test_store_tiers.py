"""Rollup tiers: the daily tier and the hourly one at either end give the same sums as the
hourly buckets alone; the unattributed rollup gives what the raw calls say; a store written by
the previous layout is upgraded once, from its raw rows."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx.store import RollupRow, SQLiteStore, StoreError
from ownership_ctx.store.tables import MEASURE_NAMES

DAY0 = 1_767_571_200  # 2026-01-05T00:00:00Z
TEAMS = ("search", "billing", None)


def _events() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    n = 0
    for hour in range(0, 3 * 24, 5):  # every 5 hours over three days
        for k, team in enumerate(TEAMS):
            n += 1
            out.append(
                {
                    "kind": "provider_call",
                    "event_id": f"e{n}",
                    "ts": DAY0 + hour * 3600 + 60 * k,
                    "trace_id": f"{n:032x}",
                    "owner_team": team,
                    "workflow_id": "answer" if k != 1 else None,
                    "feature": "summaries",
                    "attribution": "attributed" if team else "quarantined",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.response.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 100 + n,
                    "cost": f"0.00{n:04d}",
                }
            )
    return out


def _expected(events: list[dict[str, Any]], start: int, end: int) -> dict[Any, list[Any]]:
    """Per team: [calls, input tokens, cost] of the calls whose hour starts in [start, end)."""
    sums: dict[Any, list[Any]] = defaultdict(lambda: [0, 0, Decimal(0)])
    for e in events:
        hour = int(e["ts"]) // 3600 * 3600
        if start <= hour < end:
            acc = sums[e["owner_team"]]
            acc[0] += 1
            acc[1] += e["gen_ai.usage.input_tokens"]
            acc[2] += Decimal(e["cost"])
    return dict(sums)


def _written(tmp_path: Path) -> tuple[SQLiteStore, list[dict[str, Any]]]:
    store = SQLiteStore(tmp_path / "events.db")
    events = _events()
    store.write_batch(events[:20])
    store.write_batch(events[20:])
    store.write_batch(events[5:15])  # a replay: rolled up once
    return store, events


def test_ranges_across_days_and_hours_sum_like_the_hourly_buckets(tmp_path: Path) -> None:
    store, events = _written(tmp_path)
    ranges = [
        (DAY0, DAY0 + 3 * 86400),  # whole days only
        (DAY0 + 5 * 3600 + 1, DAY0 + 2 * 86400 + 7 * 3600),  # hours, a day, hours
        (DAY0 + 3600, DAY0 + 86400 - 1),  # within one day
        (DAY0 - 86400, DAY0 + 10 * 86400),
        (DAY0 + 100, DAY0 + 100),  # empty
    ]
    for start, end in ranges:
        first, last = -(-start // 3600) * 3600, -(-end // 3600) * 3600
        expected = _expected(events, first, last)
        got = {
            r.group["owner_team"]: [r.calls, r.input_tokens, r.cost]
            for r in store.rollups(start, end, group_by=("owner_team",))
        }
        assert got == expected, (start, end)
        by_hour = store.rollups(start, end, group_by=("hour", "owner_team"))
        assert sum(r.calls for r in by_hour) == sum(v[0] for v in expected.values())
    store.close()


def test_unattributed_calls_match_the_raw_calls(tmp_path: Path) -> None:
    store, events = _written(tmp_path)
    start, end = DAY0 + 86400, DAY0 + 2 * 86400
    got = store.unattributed_calls(start, end, ("owner_team", "workflow_id", "feature"))
    expected = {
        e["trace_id"]: (e["attribution"], Decimal(e["cost"]), e["ts"])
        for e in events
        if start <= e["ts"] < end and (e["owner_team"] is None or e["workflow_id"] is None)
    }
    assert {r.trace_id: (r.attribution, r.cost, r.first_ts) for r in got} == expected
    assert all(r.calls == 1 and r.model == "gpt-4o" for r in got)
    missing_workflow = [r for r in got if r.attribution == "attributed"]
    assert missing_workflow and all(r.fields == {"owner_team", "feature"} for r in missing_workflow)
    # Requiring only the owner team: the calls that merely lack a workflow are attributed.
    owners = store.unattributed_calls(start, end, ("owner_team",))
    assert {r.trace_id for r in owners} == {
        t for t, (attribution, _, _) in expected.items() if attribution != "attributed"
    }
    store.close()


def test_a_version_1_store_is_upgraded_from_its_raw_rows(tmp_path: Path) -> None:
    store, events = _written(tmp_path)
    store.close()
    conn = sqlite3.connect(tmp_path / "events.db")
    conn.execute("DROP TABLE rollup_daily")
    conn.execute("DROP TABLE unattributed_hourly")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    reader = SQLiteStore(tmp_path / "events.db", readonly=True)
    with pytest.raises(StoreError, match="older ownership_ctx: open it once for writing"):
        reader.extent()
    reader.close()
    upgraded = SQLiteStore(tmp_path / "events.db")
    upgraded.write_batch([])  # opens for writing: upgrades
    got = {
        r.group["owner_team"]: [r.calls, r.input_tokens, r.cost]
        for r in upgraded.rollups(DAY0, DAY0 + 3 * 86400, group_by=("owner_team",))
    }
    assert got == _expected(events, DAY0, DAY0 + 3 * 86400)
    assert len(upgraded.unattributed_calls(DAY0, DAY0 + 3 * 86400, ("owner_team",))) == 15
    upgraded.close()


def test_the_typed_row_has_every_measure_in_table_order() -> None:
    fields = [f.name for f in dataclasses.fields(RollupRow)]
    assert fields == ["group", *MEASURE_NAMES]


def test_unbounded_ranges(tmp_path: Path) -> None:
    store, events = _written(tmp_path)
    (row,) = store.rollups(float("-inf"), float("inf"))
    assert row.calls == len(events)
    assert store.rollups(float("inf"), float("-inf"))[0].calls == 0
    store.close()


def test_trace_steps_near_a_time_keep_only_that_window(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "events.db")
    trace = "cd" * 16
    hops = [
        {"kind": "hop", "event_id": f"h{n}", "ts": DAY0 + offset, "trace_id": trace, "hop": "x"}
        for n, offset in enumerate((0, 3600, 3 * 86400))
    ]
    store.write_batch(hops)
    every = store.trace_steps([trace])
    assert sorted(s.ts for s in every) == [DAY0, DAY0 + 3600, DAY0 + 3 * 86400]
    near = store.trace_steps([trace], near=[DAY0 + 7200])
    assert sorted(s.ts for s in near) == [DAY0, DAY0 + 3600]  # within a day of the time
    assert store.trace_steps([trace], near=[DAY0 + 7200], window=60) == []
    store.close()
