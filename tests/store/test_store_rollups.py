"""Property: the hourly rollups equal the same aggregates computed from the raw events, for
random event streams written in random batches with replays and duplicates, on SQLite and
PostgreSQL."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ownership_ctx.schema.money import nano_parts
from ownership_ctx.store import DIMENSIONS, EventQueries, SQLiteStore

BASE = 3600 * 480_000

maybe = lambda *values: st.sampled_from([None, *values])  # noqa: E731


@st.composite
def an_event(draw: st.DrawFn, n: int) -> dict[str, Any]:
    kind = draw(st.sampled_from(["provider_call"] * 6 + ["request"] * 2 + ["hop"]))
    event: dict[str, Any] = {
        "kind": kind,
        "event_id": f"e{n}",
        "ts": BASE + draw(st.integers(0, 3 * 3600)) + draw(st.sampled_from([0.0, 0.25])),
        "trace_id": draw(st.sampled_from(["a" * 32, "b" * 32])),
        "owner_team": draw(maybe("search", "billing")),
        "workflow_id": draw(maybe("answer")),
        "feature": draw(maybe("summaries", "chat")),
        "tenant": draw(maybe("t_1", "t_2")),
        "attribution": draw(st.sampled_from(["attributed", "defaulted", "unattributed"])),
    }
    if kind == "provider_call":
        tokens = st.one_of(st.none(), st.integers(0, 10**7))
        event.update(
            {
                "attempt": draw(st.sampled_from([None, 1, 1, 2, 3])),
                "status": draw(st.sampled_from(["ok", "ok", "error", "cancelled"])),
                "gen_ai.provider.name": draw(maybe("openai", "anthropic")),
                "gen_ai.request.model": draw(maybe("gpt-4o", "claude")),
                "gen_ai.response.model": draw(maybe("gpt-4o-2024", "claude-3")),
                "service_tier": draw(maybe("default", "priority")),
                "gen_ai.usage.input_tokens": draw(tokens),
                "gen_ai.usage.output_tokens": draw(tokens),
                "gen_ai.usage.cache_read.input_tokens": draw(tokens),
                "gen_ai.usage.cache_creation.input_tokens": draw(tokens),
                "gen_ai.usage.reasoning.output_tokens": draw(tokens),
                "cost": draw(
                    st.one_of(
                        st.none(),
                        st.just("n/a"),
                        st.decimals(0, 1000, places=draw(st.integers(0, 12))).map(
                            lambda d: format(d, "f")
                        ),
                    )
                ),
                "cost_avoided": draw(st.sampled_from([None, "0.125"])),
                "app_cache_hit": draw(st.booleans()),
                "usage_status": draw(maybe("reported", "estimated")),
                "fallback_of": draw(maybe("gpt-4o")),
                "billing_scope": draw(maybe("proj_a", "proj_b")),
            }
        )
    return event


@st.composite
def a_stream(draw: st.DrawFn) -> list[list[dict[str, Any]]]:
    """Batches of events: each event at least once, some again (replays, duplicates within
    one batch, a whole batch twice)."""
    size = draw(st.integers(0, 60))
    unique = [draw(an_event(n)) for n in range(size)]
    writes = list(unique)
    if unique:
        writes += draw(st.lists(st.sampled_from(unique), max_size=30))
    writes = draw(st.permutations(writes))
    cuts = sorted(draw(st.lists(st.integers(0, len(writes)), max_size=6)))
    batches = [writes[a:b] for a, b in zip([0, *cuts], [*cuts, len(writes)], strict=True)]
    if batches and draw(st.booleans()):
        batches.append(draw(st.sampled_from(batches)))
    return batches


def expected_rollups(
    batches: list[list[dict[str, Any]]], *, nanos: bool
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """The oracle: aggregate the distinct events directly (costs rounded to nano-dollars per
    event on SQLite, exact on PostgreSQL)."""
    unique = {e["event_id"]: e for batch in batches for e in batch}
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(lambda: defaultdict(int))

    def cost(value: Any) -> Decimal | None:
        text, n = nano_parts(value)
        if text is None or n is None:
            return None
        return Decimal(n) / 10**9 if nanos else Decimal(text)

    for e in unique.values():
        if e["kind"] == "hop":
            continue
        pc = e["kind"] == "provider_call"
        dims = [
            e.get("owner_team"),
            e.get("workflow_id"),
            e.get("feature"),
            e.get("tenant"),
            e.get("gen_ai.provider.name") if pc else None,
            (e.get("gen_ai.response.model") or e.get("gen_ai.request.model")) if pc else None,
            e.get("service_tier") if pc else None,
            e.get("billing_scope") if pc else None,
        ]
        key = (int(e["ts"] // 3600) * 3600, *dims)
        row = out[key]
        if not pc:
            row["requests"] += 1
            continue
        c = cost(e.get("cost"))
        # A cache hit is no call (its tokens are avoided); a failed attempt without usage is
        # free: neither is a call, nor are their tokens consumed.
        hit = bool(e.get("app_cache_hit"))
        failed = e["status"] != "ok" and e.get("gen_ai.usage.input_tokens") is None and c is None
        row["calls"] += not hit and not failed
        row["failed_attempts"] += failed
        row["errors"] += e["status"] == "error"
        row["retries"] += (e.get("attempt") or 0) > 1
        row["fallbacks"] += e.get("fallback_of") is not None
        row["app_cache_hits"] += hit
        row["unpriced_calls"] += c is None and not failed
        for name, key_ in (
            ("input_tokens", "gen_ai.usage.input_tokens"),
            ("output_tokens", "gen_ai.usage.output_tokens"),
            ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens"),
            ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens"),
            ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens"),
        ):
            row[f"avoided_{name}" if hit else name] += e.get(key_) or 0
        if e.get("usage_status") == "estimated":
            row["estimated_calls"] += 1
            row["estimated_cost"] += c or 0
        row["cost"] += c or 0
        if e["attribution"] != "attributed" or not e.get("owner_team"):
            row["unattributed_cost"] += c or 0
        row["cost_avoided"] += cost(e.get("cost_avoided")) or 0
    return out


def unique_events(batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return list({e["event_id"]: e for batch in batches for e in batch}.values())


def check(store: EventQueries, batches: list[list[dict[str, Any]]], *, nanos: bool) -> None:
    for batch in batches:
        store.write_batch(batch)  # type: ignore[attr-defined]
    expected = expected_rollups(batches, nanos=nanos)
    got = {
        (r.group["hour"], *(r.group[d] for d in DIMENSIONS)): r
        for r in store.rollups(0, 2**40, ("hour", *DIMENSIONS))
    }
    assert set(got) == set(expected)
    for key, measures in expected.items():
        row = got[key]
        for name in (
            "calls", "requests", "errors", "retries", "fallbacks", "app_cache_hits",
            "unpriced_calls", "input_tokens", "output_tokens", "cache_read_tokens",
            "cache_write_tokens", "reasoning_tokens", "cost", "unattributed_cost", "cost_avoided",
            "failed_attempts", "avoided_input_tokens", "avoided_output_tokens",
            "estimated_calls", "estimated_cost",
        ):  # fmt: skip
            assert getattr(row, name) == measures.get(name, 0), (key, name)
    # One user action per trace: its first request event stored (which bucket holds it
    # depends on write order, so the total is checked).
    traces = {e["trace_id"] for e in unique_events(batches) if e["kind"] == "request"}
    assert sum(r.user_actions for r in got.values()) == len(traces)
    # Any coarser grouping is the sum of the fine one.
    teams: dict[Any, int] = defaultdict(int)
    for key, measures in expected.items():
        teams[key[1]] += measures.get("calls", 0)
    for r in store.rollups(0, 2**40, ("owner_team",)):
        assert r.calls == teams[r.group["owner_team"]]
    unique = {e["event_id"] for batch in batches for e in batch}
    assert sorted(store.event_ids()) == sorted(unique)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=a_stream())
def test_sqlite_rollups_equal_aggregates_of_raw_events(batches: list[list[dict[str, Any]]]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = SQLiteStore(Path(directory) / "events.db")
        try:
            check(store, batches, nanos=True)
        finally:
            store.close()


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[EventQueries]:
    from ownership_ctx.sinks.config import open_backend

    store = open_backend(pg_url)
    yield store
    store.close()


def _truncate(store: Any) -> None:
    with store._lock:
        conn = store._conn or store._connect(autocommit=False)
        store._conn = conn
        conn.execute(
            "TRUNCATE provider_calls, requests, hops, other_events, rollup_hourly, rollup_daily,"
            " unattributed_hourly"
        )
        conn.commit()


def test_postgres_rollups_equal_aggregates_of_raw_events(pg_store: EventQueries) -> None:
    pg_store.write_batch([])  # type: ignore[attr-defined]

    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(batches=a_stream())
    def run(batches: list[list[dict[str, Any]]]) -> None:
        _truncate(pg_store)
        check(pg_store, batches, nanos=False)

    run()
