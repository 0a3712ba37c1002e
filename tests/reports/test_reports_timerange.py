"""Parsing --since/--until and periods; ranges snap to whole UTC hours."""

from __future__ import annotations

import pytest

from ownership_ctx.reports import TimeRange, UsageError, parse_range
from ownership_ctx.reports.timerange import iso_week, parse_instant, parse_period, stamp

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
