"""A store of odd events, written through the store's own write path (which sanitizes them):
garbage costs, nulls everywhere, wrong types, unknown kinds. Reports must say what they could
not count, never crash."""

from __future__ import annotations

from typing import Any

from ownership_ctx.sinks import open_store
from tests.reports.scenario import epoch

T = epoch("2026-01-06T12:00:00")
TRACE = "0f" * 16


def events() -> list[dict[str, Any]]:
    return [
        # a call with every optional field missing
        {"kind": "provider_call", "event_id": "odd-1", "ts": T},
        # garbage cost, string tokens, a weird attempt, an owner that is a number
        {
            "kind": "provider_call",
            "event_id": "odd-2",
            "ts": T + 1,
            "trace_id": TRACE,
            "owner_team": 123,
            "attribution": "attributed",
            "cost": "not-a-number",
            "attempt": "x",
            "gen_ai.usage.input_tokens": "12",
            "gen_ai.provider.name": None,
        },
        # NaN cost, cache hit without cost_avoided, fallback pointing nowhere
        {
            "kind": "provider_call",
            "event_id": "odd-3",
            "ts": T + 2,
            "trace_id": TRACE,
            "owner_team": "ops",
            "workflow_id": "w",
            "feature": "f",
            "tenant": "raw-customer@example.com",
            "attribution": "attributed",
            "cost": "NaN",
            "status": "ok",
            "app_cache_hit": True,
            "fallback_of": "gpt-x",
            "fallback_of_call_id": "nowhere",
            "attempt": 3,
            "call_id": "c1",
        },
        # a priced call with a tiny cost beyond nano-dollars
        {
            "kind": "provider_call",
            "event_id": "odd-4",
            "ts": T + 3,
            "trace_id": TRACE,
            "owner_team": "ops",
            "workflow_id": "w",
            "feature": "f",
            "attribution": "attributed",
            "cost": "0.0000000004",
            "cost_source": "price_table",
            "status": "ok",
            "gen_ai.usage.input_tokens": 1,
        },
        # hops with odd shapes
        {"kind": "hop", "event_id": "odd-5", "ts": T - 1, "trace_id": TRACE, "missing": "feature"},
        {
            "kind": "hop",
            "event_id": "odd-6",
            "ts": None,
            "trace_id": TRACE,
            "hop": ["celery"],
            "unit": {"a": 1},
            "outcome": 7,
            "fields_present": "owner_team",
        },
        {"kind": "request", "event_id": "odd-7", "ts": T, "trace_id": TRACE, "status": "teapot"},
        {"kind": "mystery", "event_id": "odd-8", "ts": T, "trace_id": TRACE, "x": [1, 2]},
        {"kind": "hop", "event_id": "odd-9", "ts": T, "trace_id": "ee" * 16, "hop": "http"},
    ]


def write(url: str) -> None:
    store = open_store(url)
    try:
        store.write_batch(events())  # type: ignore[attr-defined]
    finally:
        store.close()
