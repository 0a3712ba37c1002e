"""Event factories and checks shared by the store tests."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from ownership_ctx.store import EventQueries

_seq = itertools.count()
TRACE = "ab" * 16


def new_id(prefix: str = "") -> str:
    """Unique per process and call; ``prefix`` tags who emitted it (a test, a child process)."""
    return f"{prefix}{os.getpid():x}-{next(_seq):x}-{uuid.uuid4().hex[:8]}"


def provider_call(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "provider_call",
        "event_id": new_id("pc-"),
        "ts": time.time(),
        "trace_id": TRACE,
        "owner_team": "search",
        "workflow_id": "answer",
        "feature": "summaries",
        "tenant": "t_1f2e",
        "user": "u_9a8b",
        "attribution": "attributed",
        "call_id": uuid.uuid4().hex,
        "attempt": 1,
        "status": "ok",
        "http_status": 200,
        "error.type": None,
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "api": "responses",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.response.id": "resp_1",
        "provider_request_id": "req_1",
        "service_tier": "default",
        "streaming": False,
        "latency_ms": 812.5,
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 1000,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "usage_status": "reported",
        "cost": "0.0042500",
        "currency": "USD",
        "cost_source": "price_table",
        "price_model_id": "gpt-4o",
        "cost_avoided": None,
        "app_cache_hit": False,
        "fallback_of": None,
        "fallback_of_call_id": None,
        "recorded_by": "httpx",
        "problems": [],
    }
    event.update(overrides)
    return event


def request_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "request",
        "event_id": new_id("rq-"),
        "ts": time.time(),
        "trace_id": TRACE,
        "owner_team": "search",
        "workflow_id": "answer",
        "feature": "summaries",
        "tenant": "t_1f2e",
        "attribution": "attributed",
        "hop": "edge",
        "unit": "/answer",
        "route": "/answer",
        "method": "POST",
        "status": 200,
        "latency_ms": 1000.0,
        "outcome": "bound",
        "missing": [],
        "fields_present": ["owner_team", "workflow_id", "feature", "tenant"],
        "problems": [],
    }
    event.update(overrides)
    return event


def hop_event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "kind": "hop",
        "event_id": new_id("hop-"),
        "ts": time.time(),
        "trace_id": TRACE,
        "owner_team": "search",
        "attribution": "attributed",
        "hop": "celery",
        "unit": "tasks.summarize",
        "outcome": "bound",
        "missing": ["feature"],
        "fields_present": ["owner_team"],
        "problems": [],
    }
    event.update(overrides)
    return event


def mixed(n: int, prefix: str = "") -> list[dict[str, Any]]:
    """``n`` events: mostly provider calls, some requests and hops."""
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(request_event(event_id=new_id(prefix + "rq-")))
        elif i % 10 == 1:
            out.append(hop_event(event_id=new_id(prefix + "hop-")))
        else:
            out.append(provider_call(event_id=new_id(prefix + "pc-"), owner_team=f"team{i % 3}"))
    return out


def assert_stored_exactly_once(store: EventQueries, expected: Iterable[dict[str, Any]]) -> None:
    """Every expected event is stored, once, and the rollups counted each provider call and
    request once (a replay rolled up twice would show here, not in the unique raw tables)."""
    wanted = list(expected)
    ids = store.event_ids()
    assert len(ids) == len(set(ids))
    missing = {e["event_id"] for e in wanted} - set(ids)
    assert not missing, f"{len(missing)} of {len(wanted)} events never stored"
    assert len(ids) == len(wanted), f"{len(ids) - len(wanted)} unexpected events stored"
    (total,) = store.rollups(0, 2**40)
    assert total.calls == sum(1 for e in wanted if e["kind"] == "provider_call")
    assert total.requests == sum(1 for e in wanted if e["kind"] == "request")
