"""Odd data (nulls, garbage costs, wrong types, unknown kinds): every report runs and says what
it could not count."""

from __future__ import annotations

from decimal import Decimal

from ownership_ctx.reports import (
    TimeRange,
    anomaly,
    audit,
    build_report,
    chargeback,
    coverage,
    focus_csv,
    open_source,
    render,
    render_html,
    trace_report,
)
from ownership_ctx.store import SQLiteStore
from tests.reports import odd
from tests.reports.scenario import epoch

ALL = TimeRange(int(epoch("2026-01-01T00:00:00")), int(epoch("2026-02-01T00:00:00")))


def test_every_report_survives(odd_url: str) -> None:
    with open_source(odd_url) as source:
        by_team = chargeback(source, ALL, ("team", "model", "tenant"))
        assert by_team.total.calls == 3  # the cache hit is no call
        assert by_team.total.unpriced_calls == 3  # garbage, NaN and absent costs
        assert by_team.total.spend == Decimal("0.0000000004") or isinstance(source, SQLiteStore)
        assert any("no cost" in n for n in by_team.notes)
        cov = coverage(source, ALL, threshold=Decimal("0.02"))
        assert cov.unpriced_calls == 3
        assert cov.hops is not None or cov.unattributed == 0
        result = audit(source, ALL, sample=5)
        assert not result.ready
        answers = {a.number: a for a in result.answers}
        assert "tenant not hashed" in answers[4].evidence
        assert not answers[5].holds and not answers[6].holds
        trace = trace_report(source, odd.TRACE)
        assert trace.found and len(trace.calls) == 3
        assert trace.unpriced_calls == 2
        anomaly(source, "ops", TimeRange(ALL.start, ALL.start + 86400 * 7), ALL)
        for doc in (by_team.document(), cov.document(), result.document(), trace.document()):
            for fmt in ("table", "csv", "json"):
                assert render(doc, fmt)  # type: ignore[arg-type]
        assert focus_csv(source, ALL).count("\n") >= 2
        assert "<svg" in render_html(build_report(source, ALL))
