"""Our side of the join, read from the daily rollup: per day x provider x model x scope, on
SQLite and PostgreSQL. Every expected number is worked out by hand from the events below."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ownership_ctx.sinks.config import open_backend
from ownership_ctx.store.bills import EventGroup, open_bill_store

from .conftest import D1, D2, GPT, HAIKU, call, write_events

DAY = "2026-11-02"


def _failed(**kwargs: Any) -> dict[str, Any]:
    """A failed attempt that reported no usage: free, so not a call."""
    event = call(cost=None, input_tokens=0, output_tokens=0, **kwargs)
    event.update(
        {
            "status": "error",
            "gen_ai.usage.input_tokens": None,
            "gen_ai.usage.output_tokens": None,
            "usage_status": "missing",
        }
    )
    return event


def _events() -> list[dict[str, Any]]:
    openai: dict[str, Any] = {"provider": "openai", "model": GPT, "scope": "proj_a"}
    hit = call(ts=D1 + 500, cost="0", input_tokens=900, output_tokens=100, **openai)
    hit["app_cache_hit"] = True
    mini_hit = dict(call(ts=D1 + 600, cost="0", input_tokens=5, output_tokens=5, **openai))
    mini_hit.update({"app_cache_hit": True, "gen_ai.response.model": "gpt-4o-mini"})
    request = {"kind": "request", "event_id": "rq-1", "ts": D1 + 10, "owner_team": "search"}
    return [
        # Day 1, OpenAI gpt-4o in proj_a: 0.10 attributed (120 tokens), 0.30 unattributed and
        # estimated (60 tokens), a call without a price (40 tokens), a cache hit (no call,
        # its 1000 tokens avoided) and a free failed attempt (no call).
        call(ts=D1 + 100, cost="0.10", input_tokens=100, output_tokens=20, **openai),
        call(
            ts=D1 + 200,
            cost="0.30",
            input_tokens=50,
            output_tokens=10,
            team=None,
            usage_status="estimated",
            **openai,
        ),
        call(ts=D1 + 300, cost=None, input_tokens=40, output_tokens=0, **openai),
        hit,
        _failed(ts=D1 + 400, **openai),
        # A model with only a free failed attempt: a group with no calls (as before); one with
        # only a cache hit: none.
        _failed(ts=D1 + 700, provider="openai", model="o3-mini", scope="proj_a"),
        mini_hit,
        # Anthropic with a scope: the rollup keeps it, reconciliation reads scope for OpenAI only.
        call(
            ts=D1 + 800,
            provider="anthropic",
            model=HAIKU,
            cost="0.05",
            input_tokens=10,
            output_tokens=5,
            scope="ws_1",
        ),
        # Outside day 1: the second before it, and the first second of day 2.
        call(ts=D1 - 1, cost="0.01", input_tokens=1, output_tokens=1, **openai),
        call(ts=D2, cost="0.02", input_tokens=2, output_tokens=2, **openai),
        request,
    ]


EXPECTED = {
    (DAY, "openai", GPT, "proj_a"): EventGroup(
        DAY,
        "openai",
        GPT,
        "proj_a",
        calls=3,
        cost=Decimal("0.40"),
        attributed=Decimal("0.10"),
        estimated=Decimal("0.30"),
        unpriced_calls=1,
        tokens=220,
    ),
    (DAY, "openai", "o3-mini", "proj_a"): EventGroup(
        DAY, "openai", "o3-mini", "proj_a", 0, Decimal(0), Decimal(0), Decimal(0), 0, 0
    ),
    (DAY, "anthropic", HAIKU, ""): EventGroup(
        DAY, "anthropic", HAIKU, "", 1, Decimal("0.05"), Decimal("0.05"), Decimal(0), 0, 15
    ),
}


def _groups(db: str, start: int, end: int) -> dict[tuple[str, str, str, str], EventGroup]:
    store = open_bill_store(db, readonly=True)
    try:
        return {(g.day, g.provider, g.model, g.scope): g for g in store.event_groups(start, end)}
    finally:
        store.close()


def test_event_groups_of_whole_days_from_the_rollup(db: str) -> None:
    write_events(db, _events())
    assert _groups(db, D1, D2) == EXPECTED
    # Any range is widened to its whole UTC days.
    assert _groups(db, D1 + 3600, D1 + 7200) == EXPECTED
    # Pruned raw events leave the rollups: our side of a past month still answers.
    backend = open_backend(db)
    try:
        backend.prune(D2 + 86400)
        assert backend.event_ids("provider_call") == []
    finally:
        backend.close()
    assert _groups(db, D1, D2) == EXPECTED


def test_daily_traffic_for_the_demo_bill(db: str) -> None:
    write_events(db, _events())
    store = open_bill_store(db, readonly=True)
    try:
        traffic = store.daily_traffic()
    finally:
        store.close()
    # (day, provider, model, scope, input, output, cache read, cache write, calls, cost):
    # calls as in the rollup (the unpriced one counts, at cost 0); no group without calls.
    assert traffic == [
        ("2026-11-01", "openai", GPT, "proj_a", 1, 1, 0, 0, 1, Decimal("0.01")),
        (DAY, "anthropic", HAIKU, "", 10, 5, 0, 0, 1, Decimal("0.05")),
        (DAY, "openai", GPT, "proj_a", 190, 30, 0, 0, 3, Decimal("0.40")),
        ("2026-11-03", "openai", GPT, "proj_a", 2, 2, 0, 0, 1, Decimal("0.02")),
    ]
