"""Retention: remove the events older than a day, from a store that already exists.

PostgreSQL drops whole day partitions (instant, no dead rows, no VACUUM debt); SQLite deletes
the rows (the file keeps its size; SQLite reuses the pages). The rollups (hourly, daily,
unpriced) stay, so chargeback and coverage totals over pruned days still answer; the
unattributed rollup (per trace) and every raw event before the day go, and with them traces
and the hop breakdown over those days.
"""

from __future__ import annotations

import datetime as dt

from .api import Pruned

__all__ = ["describe", "parse_day"]


def parse_day(text: str) -> int:
    """``2026-01-01`` -> that UTC midnight in epoch seconds. Raises `ValueError` (one line)."""
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--before takes a date as YYYY-MM-DD, not {text!r}") from None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())


def describe(pruned: Pruned, before: int) -> str:
    """The command's one line: what was removed."""
    day = dt.datetime.fromtimestamp(before, dt.timezone.utc).date().isoformat()
    what = f"removed {pruned.events:,} event(s) before {day}"
    if pruned.partitions:
        what += f" ({pruned.partitions} day partition(s) dropped)"
    return what
