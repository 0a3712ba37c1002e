"""The audit's seven answers on known stores, and `first_loss` on hand-made traces."""

from __future__ import annotations

from decimal import Decimal

from ownership_ctx.reports import Source, TimeRange, audit
from ownership_ctx.reports.tracing import Step, first_loss
from tests.reports.scenario import epoch, trace_id

ALL = TimeRange(int(epoch("2026-01-01T00:00:00")), int(epoch("2026-02-01T00:00:00")))
LEGACY = {trace_id(f"legacy-w03-{i}") for i in range(2)}


def test_scenario_is_not_ready_and_names_the_broken_hop(main: Source) -> None:
    result = audit(main, ALL, sample=10)
    assert [a.holds for a in result.answers] == [False, False, False, False, True, True, False]
    assert (result.held, result.ready, result.untraced_calls) == (2, False, 1)
    assert len(result.traces) == 10
    growth = trace_id("growth-w03-0")
    # The legacy orphans (their trace ids were minted in the worker, so we find them by hop).
    orphans = [t for t in result.traces if t.loss is not None and t.loss.code == "new_trace"]
    assert len(orphans) == 2 and all(t.trace_id not in LEGACY for t in orphans)
    for t in orphans:
        assert (t.loss.hop, t.loss.unit) == ("celery", "tasks.legacy_summarize")  # type: ignore[union-attr]
        assert t.failed == (1, 2, 3, 4)
        assert t.path == "celery → provider" and t.spend == Decimal("0.001")
    by_id = {t.trace_id: t for t in result.traces}
    assert by_id[growth].failed == (3,)
    assert by_id[growth].loss is not None
    assert (by_id[growth].loss.hop, by_id[growth].loss.unit, by_id[growth].loss.fields) == (
        "http",
        "/welcome",
        ("feature",),
    )
    answers = {a.number: a for a in result.answers}
    assert set(answers[1].failing_traces) == {t.trace_id for t in orphans}
    assert "1 call(s) in the sampled window carry no trace id" in answers[1].evidence
    assert answers[3].evidence == "11 calls: 3 no feature, 2 no owner_team, 2 no workflow_id"
    assert answers[4].evidence == "9 hashed tenant, 2 no tenant"
    assert answers[5].evidence.startswith("1 app cache hits (cost 0), 10 priced (override)")
    assert "4.83% of 0.145 USD" in answers[7].evidence
    # The 4 support traces crossed the queue with one id.
    assert "http → celery → provider x4" in answers[2].evidence


def test_clean_store_is_ready(clean: Source) -> None:
    result = audit(clean, ALL, sample=10)
    assert [a.holds for a in result.answers] == [True] * 7
    assert result.ready and result.held == 7
    assert all(t.failed == () and t.loss is None for t in result.traces)
    # Most recent first: the 4 support traces (2026-01-07), then search (2026-01-06).
    assert [t.trace_id for t in result.traces[:4]] == [
        trace_id(f"support-w02-{i}") for i in (3, 2, 1, 0)
    ]


def test_retries_and_fallbacks_are_explained(main: Source) -> None:
    week3 = TimeRange(int(epoch("2026-01-13T00:00:00")), int(epoch("2026-01-14T00:00:00")))
    result = audit(main, week3, sample=20)
    answers = {a.number: a for a in result.answers}
    assert answers[6].holds
    assert answers[6].evidence == ("1 app cache hits, 2 fallbacks, 4 retried calls, 4 retries")
    assert answers[5].holds
    assert "6 failed attempts without usage (free)" in answers[5].evidence


def test_sample_size_and_empty_range(main: Source) -> None:
    assert len(audit(main, ALL, sample=3).traces) == 3
    empty = audit(main, TimeRange(0, 3600))
    assert empty.traces == [] and not empty.ready and empty.held == 0
    assert "nothing to examine" in empty.answers[0].evidence


def _hop(ts: float, hop: str, unit: str, present: str, outcome: str = "attributed") -> Step:
    fields = frozenset(f for f in present.split(",") if f)
    return Step(ts, "hop", hop, unit, outcome, (), fields)


def _call(ts: float, present: str, outcome: str = "attributed") -> Step:
    fields = frozenset(f for f in present.split(",") if f)
    return Step(ts, "call", "call", "openai gpt-4o", outcome, (), fields)


FULL = "owner_team,workflow_id,feature,tenant"


def test_first_loss_kinds() -> None:
    ok = [_hop(1, "http", "/a", FULL), _hop(2, "celery", "t", FULL), _call(3, FULL)]
    assert first_loss(ok) is None
    dropped = [_hop(1, "http", "/a", FULL), _hop(2, "dramatiq", "q/a", "owner_team"), _call(3, "")]
    loss = first_loss(dropped)
    assert loss is not None and (loss.hop, loss.code) == ("dramatiq", "dropped")
    assert loss.fields == ("feature", "tenant", "workflow_id")
    call_site = [_hop(1, "http", "/a", FULL), _call(2, "owner_team")]
    loss = first_loss(call_site)
    assert loss is not None and (loss.hop, loss.code) == ("call", "call_site")
    assert first_loss([_call(1, "")]).code == "no_hop"  # type: ignore[union-attr]
    stamped = [_hop(1, "celery_publish", "beat.t", FULL, outcome="stamped"), _call(2, FULL)]
    assert first_loss(stamped).code == "stamped"  # type: ignore[union-attr]
    quarantined = [_hop(1, "http", "/a", "owner_team", outcome="quarantined"), _call(2, "")]
    loss = first_loss(quarantined)
    assert loss is not None and (loss.hop, loss.code) == ("http", "quarantined")
    # A request event stands in for the edge only when no hop was recorded.
    request_only = [Step(1, "request", "http", "/a", "attributed", (), frozenset()), _call(2, "")]
    loss = first_loss(request_only)
    assert loss is not None and (loss.hop, loss.unit, loss.code) == ("http", "/a", "never_supplied")


def test_the_spend_answer_compares_the_threshold_exactly(main: Source) -> None:
    # 0.007 of 0.145 USD unattributed = 4.827586...%, shown rounded up to 4.83%.
    def seventh(threshold: str) -> bool:
        answers = audit(main, ALL, sample=1, threshold=Decimal(threshold)).answers
        return next(a.holds for a in answers if a.number == 7)

    assert seventh("0.04827587")  # above the true share, below the rounded one
    assert not seventh("0.04827586")
