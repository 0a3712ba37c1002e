"""Fixtures: a store per backend (SQLite file, or a PostgreSQL schema of its own), the
fixture exports in ``fixtures/`` and a way to write provider_call events with known costs.

Expected numbers in these tests are worked out by hand from the fixtures (see the comments
next to each), never by calling the code under test.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx.sinks.config import open_backend

FIXTURES = Path(__file__).parent / "fixtures"
SESSION = uuid.uuid4().hex[:8]
_schemas = iter(range(1, 1_000_000))
D1 = 1793577600  # 2026-11-02T00:00Z
D2 = 1793664000  # 2026-11-03T00:00Z


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'events.db'}"
        return
    server: str = request.getfixturevalue("postgres_url")
    import psycopg

    schema = f"oc_reconcile_{SESSION}_{next(_schemas)}"
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}schema={schema}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def call(
    *,
    ts: float,
    provider: str,
    model: str,
    cost: str | None,
    input_tokens: int,
    output_tokens: int,
    team: str | None = "search",
    scope: str | None = None,
    request_id: str | None = None,
    usage_status: str = "reported",
) -> dict[str, Any]:
    """A provider_call event with the fields reconciliation reads."""
    owner: dict[str, Any] = (
        {"trace_id": uuid.uuid4().hex, "owner_team": team, "attribution": "attributed"}
        if team
        else {"attribution": "unattributed"}
    )
    return {
        **owner,
        "kind": "provider_call",
        "event_id": str(uuid.uuid4()),
        "ts": ts,
        "call_id": str(uuid.uuid4()),
        "attempt": 1,
        "status": "ok",
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        "usage_status": usage_status,
        "cost": cost,
        "currency": "USD",
        "cost_source": "provider" if cost is not None else "unpriced",
        "provider_request_id": request_id,
        "billing_scope": scope,
        "billing_region": None,
        "api_key_fingerprint": None,
    }


def write_events(url: str, events: list[dict[str, Any]]) -> None:
    backend = open_backend(url)
    try:
        backend.write_batch(events)
    finally:
        backend.close()


HAIKU_BEDROCK = "anthropic.claude-3-haiku-20240307-v1:0"
GPT = "gpt-4o-2024-08-06"
HAIKU = "claude-haiku-4-5-20251001"


def scenario_events() -> list[dict[str, Any]]:
    """Our side of the fixture bills (day 1 = 2026-11-02, day 2 = 2026-11-03)."""
    return [
        # OpenAI, project proj_a: 0.60 attributed + 0.40 unattributed, 2000 tokens in all.
        call(
            ts=D1 + 3600,
            provider="openai",
            model=GPT,
            cost="0.60",
            input_tokens=1000,
            output_tokens=200,
            scope="proj_a",
        ),
        call(
            ts=D1 + 7200,
            provider="openai",
            model=GPT,
            cost="0.40",
            input_tokens=600,
            output_tokens=200,
            team=None,
            scope="proj_a",
        ),
        # Day 2: the bill has no OpenAI spend that day -> ours only 0.20.
        call(
            ts=D2 + 60,
            provider="openai",
            model=GPT,
            cost="0.20",
            input_tokens=10,
            output_tokens=10,
            scope="proj_a",
        ),
        # Anthropic: 0.30 for 3000 tokens (the bill has 4000 tokens for 0.425).
        call(
            ts=D1 + 3600,
            provider="anthropic",
            model=HAIKU,
            cost="0.30",
            input_tokens=2500,
            output_tokens=500,
        ),
        # Bedrock: req-1 and req-2 of the invocation logs, 150 tokens and 0.05 each.
        call(
            ts=D1 + 36000,
            provider="aws.bedrock",
            model=HAIKU_BEDROCK,
            cost="0.05",
            input_tokens=100,
            output_tokens=50,
            request_id="req-1",
        ),
        call(
            ts=D1 + 39600,
            provider="aws.bedrock",
            model=HAIKU_BEDROCK,
            cost="0.05",
            input_tokens=100,
            output_tokens=50,
            request_id="req-2",
            # A stream the caller cancelled: its usage estimated (estimated spend 0.05).
            usage_status="estimated",
        ),
    ]


def money(text: str) -> Decimal:
    return Decimal(text)
