"""Coverage: how much spend is unattributed, overall and per ISO week, and which hop lost it.

Spend is *unattributed* when its provider call has no owner team, was not ``attributed``
(quarantined, unattributed, or stamped from defaults — nobody declared it), or lacks a required
field (by default workflow and feature). Totals, reasons and weeks come from the rollups. The
breakdown by hop reads the unattributed calls per trace (a rollup of their own) and the hops
of those traces, and names, per trace, the first hop where the fields went missing
(`tracing.first_loss`).
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Any, Final

from ownership_ctx.store.api import EventQueries

from .rendering import Column, Document, Table, money_text
from .timerange import TimeRange, UsageError, day_label, iso_week
from .tracing import REQUIRED, Step, first_loss

__all__ = [
    "Coverage",
    "CoveragePeriod",
    "HopLoss",
    "coverage",
    "parse_threshold",
    "with_dark_spend",
]

_REQUIRABLE: Final = ("owner_team", "workflow_id", "feature", "tenant")
_SHARE: Final = Decimal("0.000001")
Progress = Callable[[str], None]


def parse_threshold(text: str) -> Decimal:
    """``2%`` or ``0.02`` -> Decimal("0.02"). Raises `UsageError`."""
    value = text.strip()
    try:
        if value.endswith("%"):
            number = Decimal(value[:-1].strip()) / 100
        else:
            number = Decimal(value)
            if number > 1:
                raise UsageError(f"threshold {text!r}: write a percentage (2%) or a fraction")
    except ArithmeticError:
        raise UsageError(f"threshold {text!r} is not a number (use 2% or 0.02)") from None
    if not number.is_finite() or not 0 <= number <= 1:
        raise UsageError(f"threshold {text!r} must be between 0% and 100%")
    return number


def parse_required(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    aliases = {"team": "owner_team", "workflow": "workflow_id"}
    fields = tuple(aliases.get(n, n) for n in names)
    bad = [n for n in fields if n not in _REQUIRABLE]
    if bad or "owner_team" not in fields:
        raise UsageError(f"--require: a list of {', '.join(_REQUIRABLE)} including owner_team")
    return fields


@dataclasses.dataclass(frozen=True)
class CoveragePeriod:
    label: str
    start: int
    total: Decimal
    unattributed: Decimal
    share: Decimal


@dataclasses.dataclass(frozen=True)
class HopLoss:
    hop: str
    unit: str
    code: str
    fields: tuple[str, ...]
    reason: str
    spend: Decimal
    calls: int
    traces: int
    share: Decimal  # of the unattributed spend


@dataclasses.dataclass(frozen=True)
class Coverage:
    range: TimeRange
    required: tuple[str, ...]
    total: Decimal
    unattributed: Decimal
    share: Decimal
    no_owner: Decimal
    not_attributed: Decimal  # has an owner, but quarantined / stamped / unattributed
    missing_fields: Decimal  # attributed, owner present, another required field absent
    calls: int
    unpriced_calls: int
    weeks: list[CoveragePeriod]
    days: list[CoveragePeriod]
    hops: list[HopLoss] | None
    threshold: Decimal | None
    notes: list[str]
    dark: Decimal = Decimal(0)  # billed spend no event saw, included by `with_dark_spend`

    @property
    def breached(self) -> bool:
        # Exact: `share` is rounded for display, and a true 2.00004% must not pass 2%.
        return self.threshold is not None and self.unattributed > self.threshold * self.total

    def document(self) -> Document:
        return _document(self)


def with_dark_spend(result: Coverage, dark: Decimal) -> Coverage:
    """``result`` with ``dark`` (billed by the providers, never seen by our events: see
    `ownership_ctx.reconcile`) counted as unattributed spend, in the total and the share."""
    total, unattributed = result.total + dark, result.unattributed + dark
    return dataclasses.replace(
        result, total=total, unattributed=unattributed, share=_share(unattributed, total), dark=dark
    )


def _share(part: Decimal, whole: Decimal) -> Decimal:
    return (part / whole).quantize(_SHARE) if whole else Decimal(0)


def coverage(
    source: EventQueries,
    time_range: TimeRange,
    *,
    required: Sequence[str] = REQUIRED,
    threshold: Decimal | None = None,
    hops: bool = True,
    progress: Progress | None = None,
) -> Coverage:
    required = tuple(required)
    others = tuple(f for f in required if f != "owner_team")
    say = progress or (lambda _: None)
    say("reading rollups")
    buckets = source.rollups(
        time_range.start, time_range.end, group_by=("day", "owner_team", *others)
    )
    total = no_owner = not_attributed = missing = Decimal(0)
    calls = unpriced = failed = 0
    per_day: dict[int, list[Decimal]] = defaultdict(lambda: [Decimal(0), Decimal(0)])
    for b in buckets:
        g = b.group
        total += b.cost
        calls += b.calls
        unpriced += b.unpriced_calls
        failed += b.failed_attempts
        if g["owner_team"] is None:
            lost = b.cost
            no_owner += lost
        elif any(g[f] is None for f in others):
            lost = b.cost
            not_attributed += b.unattributed_cost
            missing += b.cost - b.unattributed_cost
        else:
            lost = b.unattributed_cost
            not_attributed += lost
        day = per_day[int(g["day"] or 0)]
        day[0] += b.cost
        day[1] += lost
    unattributed = no_owner + not_attributed + missing
    days = [
        CoveragePeriod(day_label(d), d, t, u, _share(u, t)) for d, (t, u) in sorted(per_day.items())
    ]
    weeks_acc: dict[str, list[Any]] = {}
    for d in days:
        acc = weeks_acc.setdefault(iso_week(d.start), [d.start, Decimal(0), Decimal(0)])
        acc[1] += d.total
        acc[2] += d.unattributed
    weeks = [CoveragePeriod(w, s, t, u, _share(u, t)) for w, (s, t, u) in weeks_acc.items()]
    breakdown = None
    if hops and unattributed:
        say("tracing unattributed calls to their hops")
        breakdown = hop_breakdown(source, time_range, required, unattributed, calls)
    notes = []
    if unpriced:
        from .chargeback import FAILED_ATTEMPT, unpriced_note

        reasons = source.unpriced_reasons(time_range.start, time_range.end)
        reasons.pop(FAILED_ATTEMPT, None)  # free: counted apart, below
        notes.append(unpriced_note(unpriced, reasons))
    if failed:
        notes.append(f"{failed} failed attempt(s) reported no usage: free, not counted as calls")
    if not total:
        notes.append("no priced spend in this range")
    result = Coverage(
        time_range,
        required,
        total,
        unattributed,
        _share(unattributed, total),
        no_owner,
        not_attributed,
        missing,
        calls,
        unpriced,
        weeks,
        days,
        breakdown,
        threshold,
        notes,
    )
    return result


def hop_breakdown(
    source: EventQueries,
    time_range: TimeRange,
    required: Sequence[str],
    unattributed: Decimal,
    calls_in_range: int = 0,
) -> list[HopLoss]:
    """Unattributed spend per (hop, unit) where its trace first lost its fields.
    (``calls_in_range`` is no longer needed: kept for callers that pass it.)"""
    # The store groups the traces by shape (their steps, in order): where a shape lost its
    # fields is worked out once, however many traces went that way.
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for shape in source.loss_shapes(time_range.start, time_range.end, required):
        if not shape.steps:
            key = ("(none)", "(no trace id)", "no_envelope")
            lost: tuple[str, ...] = tuple(required)
            reason = "no envelope was bound where the call was made"
        else:
            steps = [Step(float(i), *step) for i, step in enumerate(shape.steps)]
            loss = first_loss(steps, required)
            if loss is None:
                # Only possible when hop events were not recorded: say so rather than guess.
                key = ("(unknown)", "(no hop evidence)", "unknown")
                lost, reason = (), "calls lack fields but no hop shows where"
            else:
                key = (loss.hop, loss.unit, loss.code)
                lost, reason = loss.fields, loss.reason
        acc = groups.setdefault(key, [Decimal(0), 0, 0, set(), reason])
        acc[0] += shape.cost
        acc[1] += shape.calls
        acc[2] += shape.traces
        acc[3].update(lost)
    out = [
        HopLoss(
            hop, unit, code, tuple(sorted(a[3])), a[4], a[0], a[1], a[2], _share(a[0], unattributed)
        )
        for (hop, unit, code), a in groups.items()
    ]
    out.sort(key=lambda h: (-h.spend, -h.calls, h.hop, h.unit))
    return out


def _document(result: Coverage) -> Document:
    def pct(value: Decimal) -> str:
        return f"{(value * 100).quantize(Decimal('0.01'))}%"

    headline = [
        f"range {result.range.label()}",
        f"unattributed spend {money_text(result.unattributed)} of {money_text(result.total)} USD"
        f" = {pct(result.share)}"
        + (
            f" (threshold {pct(result.threshold)}: {'BREACHED' if result.breached else 'ok'})"
            if result.threshold is not None
            else ""
        ),
        f"  no owner {money_text(result.no_owner)}, not attributed (quarantined / stamped /"
        f" unattributed) {money_text(result.not_attributed)}, missing"
        f" {'/'.join(f for f in result.required if f != 'owner_team') or 'fields'}"
        f" {money_text(result.missing_fields)}",
    ]
    if result.dark:
        headline.append(
            f"  dark spend (billed, never seen by our events) {money_text(result.dark)}"
            " (see `ownership-ctx reconcile`)"
        )
    weeks = Table(
        "weeks",
        "Per ISO week",
        [
            Column("label", "week"),
            Column("total", "spend USD", "money"),
            Column("unattributed", "unattributed USD", "money"),
            Column("share", "share", "pct"),
        ],
        [dataclasses.asdict(w) for w in result.weeks],
    )
    tables = [weeks]
    if result.hops is not None:
        tables.insert(
            0,
            Table(
                "hops",
                "Where the fields went missing (first loss per trace)",
                [
                    Column("hop", "hop"),
                    Column("unit", "route/task/actor"),
                    Column("code", "what"),
                    Column("fields", "fields missing"),
                    Column("spend", "unattributed USD", "money"),
                    Column("share", "of unattributed", "pct"),
                    Column("calls", "calls", "int"),
                    Column("traces", "traces", "int"),
                ],
                [dataclasses.asdict(h) for h in result.hops],
            ),
        )
    data = {
        "range": result.range.as_json(),
        "required": list(result.required),
        "total": result.total,
        "unattributed": result.unattributed,
        "share": result.share,
        "threshold": result.threshold,
        "breached": result.breached,
        "no_owner": result.no_owner,
        "not_attributed": result.not_attributed,
        "missing_fields": result.missing_fields,
        "dark_spend": result.dark,
        "calls": result.calls,
        "unpriced_calls": result.unpriced_calls,
        "weeks": result.weeks,
        "hops": result.hops,
    }
    return Document("coverage", "ownership-ctx coverage", headline, tables, result.notes, data)
