"""Parsing --since/--until and periods; ranges snap to whole UTC hours."""

from __future__ import annotations

import pytest

from ownership_ctx.reports import TimeRange, UsageError, parse_range
from ownership_ctx.reports.timerange import (
    iso_week,
    parse_instant,
    parse_period,
    period_before,
    stamp,
)

NOW = 1768485600.0 + 1234.5  # 2026-01-15T14:00:00Z plus a bit


def test_instants() -> None:
    assert parse_instant("2026-01-15", NOW) == 1768435200
    assert parse_instant("2026-01-15T14:00:00Z", NOW) == 1768485600
    assert parse_instant("2026-01-15T15:00:00+01:00", NOW) == 1768485600
    assert parse_instant("7d", NOW) == NOW - 7 * 86400
    assert parse_instant("12h", NOW) == NOW - 12 * 3600
    assert parse_instant("now", NOW) == NOW
    with pytest.raises(UsageError):
        parse_instant("yesterday", NOW)


def test_ranges_cover_whole_hours() -> None:
    r = parse_range("2h", None, now=NOW)
    assert r == TimeRange(1768485600 - 7200, 1768485600 + 3600)
    assert stamp(r.end) == "2026-01-15T15:00:00Z"
    assert parse_range(None, None, now=NOW).seconds >= 30 * 86400
    with pytest.raises(UsageError):
        parse_range("2026-02-01", "2026-01-01", now=NOW)


def test_periods_and_weeks() -> None:
    assert iso_week(1768485600) == "2026-W03"
    assert parse_period("2026W03") == parse_period("2026-W03")
    assert parse_period("2025-12").end == parse_period("2026-01").start
    for bad in ("2026-W60", "2026-13", "2026-01-20..2026-01-10", "soon"):
        with pytest.raises(UsageError):
            parse_period(bad)


def test_ranges_beyond_printable_dates_are_usage_errors() -> None:
    # Every range is printed as ISO dates (years 1..9999): anything else is bad input (exit 2).
    for since, until in (("99999999d", None), ("9" * 400 + "d", None), (None, "9999-12-31T23:30")):
        with pytest.raises(UsageError):
            parse_range(since, until, now=NOW)
    for period in ("9999-12", "99999999d", "9" * 400 + "d", "2026-01-01..9999-12-31T23:30"):
        with pytest.raises(UsageError):
            parse_period(period, now=NOW)
    assert parse_period("9999-11").start == parse_instant("9999-11-01")
    with pytest.raises(UsageError):
        period_before(parse_period("0001-01-01"))  # anomaly's default baseline: year 0
    assert period_before(parse_period("2026-W03")) == parse_period("2026-W02")
