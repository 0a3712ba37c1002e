"""Coverage on the scenario store: exact shares, weeks, and the hop that lost the fields."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ownership_ctx.reports import Source, TimeRange, UsageError, coverage, parse_threshold
from ownership_ctx.reports.coverage import parse_required
from tests.reports.scenario import epoch

D = Decimal
ALL = TimeRange(int(epoch("2026-01-01T00:00:00")), int(epoch("2026-02-01T00:00:00")))


def test_overall_and_reasons(main: Source) -> None:
    result = coverage(main, ALL, threshold=D("0.02"))
    assert (result.total, result.unattributed) == (D("0.145"), D("0.007"))
    assert result.share == D("0.048276")
    assert (result.no_owner, result.not_attributed, result.missing_fields) == (
        D("0.003"),
        D("0"),
        D("0.004"),
    )
    # Billed calls: not the 6 free failed attempts nor the cache hit (issue 14).
    assert (result.calls, result.unpriced_calls) == (42, 0)
    assert result.breached
    assert not coverage(main, ALL, threshold=D("0.05"), hops=False).breached


def test_weeks(main: Source) -> None:
    weeks = [(w.label, w.total, w.unattributed, w.share) for w in coverage(main, ALL).weeks]
    assert weeks == [
        ("2026-W02", D("0.052"), D("0"), D("0")),
        ("2026-W03", D("0.093"), D("0.007"), D("0.075269")),
    ]


def test_breakdown_names_the_hop(main: Source) -> None:
    hops = coverage(main, ALL).hops
    assert hops is not None
    got = [(h.hop, h.unit, h.code, h.fields, h.spend, h.calls, h.traces, h.share) for h in hops]
    assert got == [
        ("http", "/welcome", "never_supplied", ("feature",), D("0.004"), 1, 1, D("0.571429")),
        (
            "celery",
            "tasks.legacy_summarize",
            "new_trace",
            ("feature", "owner_team", "workflow_id"),
            D("0.002"),
            2,
            2,
            D("0.285714"),
        ),
        (
            "(none)",
            "(no trace id)",
            "no_envelope",
            ("feature", "owner_team", "workflow_id"),
            D("0.001"),
            1,
            0,
            D("0.142857"),
        ),
    ]
    assert sum((h.spend for h in hops), D(0)) == D("0.007")


def test_required_fields_are_configurable(main: Source) -> None:
    # With only the owner required, the growth call (no feature) counts as attributed.
    result = coverage(main, ALL, required=parse_required("team"))
    assert result.unattributed == D("0.003") and result.missing_fields == 0
    assert result.hops is not None and {h.unit for h in result.hops} == {
        "tasks.legacy_summarize",
        "(no trace id)",
    }


def test_clean_store_is_fully_attributed(clean: Source) -> None:
    result = coverage(clean, ALL, threshold=D("0"))
    assert (result.total, result.unattributed, result.share) == (D("0.052"), 0, 0)
    assert result.hops is None and not result.breached


def test_empty_range(main: Source) -> None:
    result = coverage(main, TimeRange(0, 3600), threshold=D("0.02"))
    assert result.total == 0 and result.share == 0 and not result.breached
    assert result.weeks == [] and "no priced spend" in " ".join(result.notes)


@pytest.mark.parametrize(
    ("text", "value"),
    [("2%", D("0.02")), ("0.5 %", D("0.005")), ("0.02", D("0.02")), ("0", D("0")), ("100%", D(1))],
)
def test_parse_threshold(text: str, value: Decimal) -> None:
    assert parse_threshold(text) == value


@pytest.mark.parametrize("text", ["2", "abc", "-1%", "120%", "nan", "%"])
def test_parse_threshold_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_threshold(text)


def test_parse_required() -> None:
    assert parse_required("team,workflow,feature") == ("owner_team", "workflow_id", "feature")
    with pytest.raises(UsageError):
        parse_required("workflow")  # the owner is always required
    with pytest.raises(UsageError):
        parse_required("owner_team,colour")


def test_the_threshold_is_compared_exactly_not_after_rounding(main: Source) -> None:
    # 0.007 / 0.145 = 0.04827586206...; the displayed share rounds it up to 0.048276.
    assert coverage(main, ALL, hops=False).share == D("0.048276")
    between = D("0.04827587")  # above the true share, below the rounded one: not breached
    assert not coverage(main, ALL, threshold=between, hops=False).breached
    assert coverage(main, ALL, threshold=D("0.04827586"), hops=False).breached
    assert parse_threshold("4.827587%") == between
