"""Time ranges for reports: ``--since/--until`` and anomaly periods, as UTC epoch seconds.

Reports read the store's hourly rollups, so every range is widened to whole UTC hours (start
floored, end ceiled): a rollup bucket is either wholly in a range or wholly out, and the raw-row
queries use the same bounds, so both always count the same events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from typing import Final

__all__ = [
    "HOUR",
    "DAY",
    "TimeRange",
    "UsageError",
    "iso_week",
    "parse_instant",
    "parse_period",
    "period_before",
    "parse_range",
]

HOUR: Final = 3600
DAY: Final = 86400
_RELATIVE: Final = re.compile(r"(\d+)\s*([mhdw])")
_UNIT_SECONDS: Final = {"m": 60, "h": HOUR, "d": DAY, "w": 7 * DAY}
_WEEK: Final = re.compile(r"(\d{4})-?W(\d{2})")
_MONTH: Final = re.compile(r"(\d{4})-(\d{2})")


class UsageError(ValueError):
    """Bad input from the user (exit code 2 in the command)."""


@dataclasses.dataclass(frozen=True)
class TimeRange:
    """``[start, end)`` in epoch seconds, both on UTC hour boundaries."""

    start: int
    end: int

    @classmethod
    def covering(cls, start: float, end: float) -> TimeRange:
        """The smallest hour-aligned range holding ``[start, end)``."""
        lo = int(start // HOUR) * HOUR
        hi = -int(-end // HOUR) * HOUR
        if hi <= lo:
            hi = lo + HOUR
        return cls(lo, hi)

    @property
    def seconds(self) -> int:
        return self.end - self.start

    def label(self) -> str:
        return f"{stamp(self.start)} .. {stamp(self.end)}"

    def as_json(self) -> dict[str, str]:
        return {"start": stamp(self.start), "end": stamp(self.end)}


def stamp(epoch: float) -> str:
    """``2026-01-05T00:00:00Z`` (what FOCUS and JSON outputs use)."""
    moment = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def day_label(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d")


def iso_week(epoch: float) -> str:
    """``2026-W02``: the ISO week (Monday first) holding ``epoch``."""
    year, week, _ = dt.datetime.fromtimestamp(epoch, dt.timezone.utc).isocalendar()
    return f"{year}-W{week:02d}"


def _epoch(moment: dt.datetime) -> float:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)  # naive input means UTC
    return moment.timestamp()


def parse_instant(text: str, now: float | None = None) -> float:
    """An ISO date or datetime (naive = UTC), ``now``, or ``7d`` / ``12h`` / ``30m`` / ``2w``
    ago. Raises `UsageError`."""
    value = text.strip()
    current = time.time() if now is None else now
    if value.lower() == "now":
        return current
    relative = _RELATIVE.fullmatch(value.lower())
    if relative:
        try:
            return current - int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        except OverflowError:
            raise UsageError(f"{text!r} ago is outside {_SHOWABLE}") from None
    try:
        return _epoch(dt.datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (use 2026-01-05, 2026-01-05T10:00, now, or 7d / 12h ago)"
        ) from None


def parse_range(
    since: str | None, until: str | None, now: float | None = None, default_days: int = 30
) -> TimeRange:
    """The report range: ``--since`` (default ``default_days`` ago) to ``--until`` (now)."""
    current = time.time() if now is None else now
    end = parse_instant(until, current) if until else current
    start = parse_instant(since, current) if since else end - default_days * DAY
    if start >= end:
        raise UsageError(f"--since ({since}) must be before --until ({until or 'now'})")
    asked = " ".join(
        f"{name} {value}" for name, value in (("--since", since), ("--until", until)) if value
    )
    return _showable(TimeRange.covering(start, end), asked or "the default range")


#: Reports print every range as ISO dates, which have four-digit years.
_SHOWABLE: Final = "the dates reports can show (years 1 to 9999)"


def _showable(span: TimeRange, asked: str) -> TimeRange:
    """``span`` if both ends can be printed as dates; else a `UsageError` naming the input."""
    try:
        stamp(span.start), stamp(span.end)
    except (ValueError, OverflowError, OSError):
        raise UsageError(f"{asked} is outside {_SHOWABLE}") from None
    return span


def period_before(current: TimeRange) -> TimeRange:
    """The period as long as ``current`` that ends where it starts (anomaly's default baseline)."""
    before = TimeRange(current.start - current.seconds, current.start)
    return _showable(before, f"the period before {stamp(current.start)}")


def parse_period(text: str, *, end: float | None = None, now: float | None = None) -> TimeRange:
    """An anomaly period: ``START..END`` (END exclusive), an ISO week ``2026-W02``, a month
    ``2026-01``, a day ``2026-01-05``, or a length ``7d`` ending at ``end`` (default now)."""
    try:
        return _showable(_period(text, end=end, now=now), f"period {text!r}")
    except UsageError:
        raise
    except (ValueError, OverflowError):  # e.g. the month after 9999-12
        raise UsageError(f"period {text!r} is outside {_SHOWABLE}") from None


def _period(text: str, *, end: float | None, now: float | None) -> TimeRange:
    value = text.strip()
    current = time.time() if now is None else now
    if ".." in value:
        left, _, right = value.partition("..")
        start, stop = parse_instant(left, current), parse_instant(right, current)
        if start >= stop:
            raise UsageError(f"period {text!r}: the start must be before the end")
        return TimeRange.covering(start, stop)
    week = _WEEK.fullmatch(value)
    if week:
        try:
            monday = dt.date.fromisocalendar(int(week.group(1)), int(week.group(2)), 1)
        except ValueError:
            raise UsageError(f"not an ISO week: {text!r}") from None
        start = _epoch(dt.datetime.combine(monday, dt.time()))
        return TimeRange(int(start), int(start) + 7 * DAY)
    month = _MONTH.fullmatch(value)
    if month:
        year, number = int(month.group(1)), int(month.group(2))
        if not 1 <= number <= 12:
            raise UsageError(f"not a month: {text!r}")
        first = dt.datetime(year, number, 1)
        following = dt.datetime(year + number // 12, number % 12 + 1, 1)
        return TimeRange(int(_epoch(first)), int(_epoch(following)))
    relative = _RELATIVE.fullmatch(value.lower())
    if relative:
        stop = current if end is None else end
        seconds = int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        if seconds <= 0:
            raise UsageError(f"period {text!r} is empty")
        return TimeRange.covering(stop - seconds, stop)
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise UsageError(
            f"not a period: {text!r} (use 2026-01-05..2026-01-12, 2026-W02, 2026-01,"
            " 2026-01-05 or 7d)"
        ) from None
    start = _epoch(dt.datetime.combine(day, dt.time()))
    return TimeRange(int(start), int(start) + DAY)
