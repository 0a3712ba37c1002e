"""`trace`: one request start to finish, on known traces."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ownership_ctx.reports import Source, UsageError, render, trace_report
from tests.reports.scenario import trace_id


def test_retried_request(main: Source) -> None:
    result = trace_report(main, trace_id("search-w03-0"))
    assert result.found
    assert [(c.attempt, c.status, c.cost) for c in result.calls] == [
        (1, "error", None),
        (2, "ok", Decimal("0.004")),
    ]
    assert result.calls[0].call_id == result.calls[1].call_id
    assert (result.total, result.unpriced_calls) == (Decimal("0.004"), 1)
    assert [(h.kind, h.hop, h.unit, h.outcome) for h in result.hops] == [
        ("hop", "http", "/answer", "attributed"),
        ("request", "http", "/answer", "attributed"),
    ]
    assert result.owner == {
        "owner_team": "search",
        "workflow_id": "answer",
        "feature": "summaries",
        "tenant": "h1:" + "a1" * 16,
    }
    assert result.loss is None
    text = render(result.document(), "table", width=200)
    assert "total" in text and "no cost (failed attempt)" in text


def test_fallback_and_cache_hit(main: Source) -> None:
    fallback = trace_report(main, trace_id("search-w03-4"))
    assert [(c.model, c.fallback_of, c.cost) for c in fallback.calls] == [
        ("gpt-4o", None, None),
        ("gpt-4o-mini", "gpt-4o", Decimal("0.001")),
    ]
    cached = trace_report(main, trace_id("search-w03-19"))
    assert [(c.app_cache_hit, c.cost, c.cost_avoided) for c in cached.calls] == [
        (False, Decimal("0.004"), None),
        (True, Decimal("0"), Decimal("0.001")),
    ]
    assert cached.total == Decimal("0.004")


def test_queue_hop(main: Source) -> None:
    result = trace_report(main, trace_id("support-w02-0"))
    assert [(h.hop, h.unit) for h in result.hops] == [
        ("http", "/tickets"),
        ("http", "/tickets"),
        ("celery", "tasks.triage"),
    ]
    assert [(c.provider, c.model, c.cost) for c in result.calls] == [
        ("anthropic", "claude-haiku-4-5", Decimal("0.003"))
    ]
    assert result.calls[0].at_ms > 0


def test_the_request_whose_task_lost_its_envelope(main: Source) -> None:
    # The request itself is fine, but its task's calls are in another trace: none here.
    result = trace_report(main, trace_id("legacy-w03-0"))
    assert result.found and result.calls == [] and result.total == 0


def test_unknown_and_invalid(main: Source) -> None:
    missing = trace_report(main, "f" * 32)
    assert not missing.found and missing.calls == [] and missing.total == 0
    assert "no events stored" in render(missing.document(), "table")
    with pytest.raises(UsageError):
        trace_report(main, "not-a-trace")
