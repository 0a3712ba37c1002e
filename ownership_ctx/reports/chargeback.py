"""Chargeback: spend, requests, calls and tokens per team / workflow / feature / tenant /
provider / model, from the hourly rollups (its cost grows with the number of groups).

A request's cost is the sum of its child provider calls, so a group's spend is the sum of the
calls charged to it. ``requests`` are user actions: one per trace that entered at an edge (its
first request event), so an action that crosses a gateway and an internal service is one
request, and ``USD/request`` is the cost of a user action; every service's own request events
are counted as ``service_requests``. Requests carry no provider or model: grouped by provider,
model or tier, they cannot be split and are left out of the rows (the total still has them).

``calls`` are the provider calls made and billed: an application cache hit is no call (its
would-be usage and cost are ``avoided_*``, never tokens consumed), and a failed attempt that
reported no usage is free (``failed_attempts``, apart from the calls without a price).
Estimated spend (streams the caller cancelled, see metering) is part of ``spend`` and also
shown on its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Final

from ownership_ctx.store.api import EventQueries, RollupRow

from .rendering import Column, Document, Table, money_text
from .timerange import TimeRange, UsageError

__all__ = ["DIMENSIONS", "Chargeback", "ChargebackRow", "chargeback", "parse_by"]

#: Command-line names -> rollup dimensions.
DIMENSIONS: Final = {
    "team": "owner_team",
    "workflow": "workflow_id",
    "feature": "feature",
    "tenant": "tenant",
    "provider": "provider",
    "model": "model",
    "tier": "service_tier",
}
_CALL_ONLY: Final = frozenset({"provider", "model", "service_tier"})
#: The ``unpriced_reason`` of a failed attempt without usage (free: its own column).
FAILED_ATTEMPT: Final = "failed attempt"


def parse_by(text: str) -> tuple[str, ...]:
    """``team,workflow`` -> ("team", "workflow"); raises `UsageError` on unknown names."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown or not names:
        raise UsageError(f"--by takes a list of {', '.join(DIMENSIONS)} (got {text!r})")
    return names


@dataclasses.dataclass(frozen=True)
class ChargebackRow:
    group: dict[str, str | None]
    spend: Decimal
    share: Decimal  # of the range's total spend
    requests: int | None  # user actions; None: not separable by provider / model / tier
    calls: int  # provider calls made (not cache hits, not free failed attempts)
    input_tokens: int  # processed by a provider: no cache hit's
    output_tokens: int
    cache_read_tokens: int
    retries: int
    fallbacks: int
    app_cache_hits: int
    unpriced_calls: int  # calls whose cost is unknown: not in ``spend``
    unattributed_spend: Decimal
    cost_per_request: Decimal | None  # per user action
    service_requests: int | None = None  # every service's request events
    failed_attempts: int = 0  # attempts that failed without usage: free
    avoided_input_tokens: int = 0  # what application cache hits did not send
    avoided_output_tokens: int = 0
    cost_avoided: Decimal = Decimal(0)
    estimated_calls: int = 0  # cancelled streams whose usage is estimated
    estimated_spend: Decimal = Decimal(0)  # their cost: part of ``spend``


@dataclasses.dataclass(frozen=True)
class Chargeback:
    range: TimeRange
    by: tuple[str, ...]
    rows: list[ChargebackRow]
    total: ChargebackRow
    notes: list[str]
    #: Calls without a cost, by why ("no price library", "unknown model", "failed attempt").
    unpriced_reasons: dict[str, int] = dataclasses.field(default_factory=dict)

    def document(self) -> Document:
        return _document(self)


def _row(
    group: dict[str, str | None],
    rows: Sequence[RollupRow],
    total_spend: Decimal,
    separable: bool,
) -> ChargebackRow:
    spend = sum((r.cost for r in rows), Decimal(0))
    requests = sum(r.user_actions for r in rows) if separable else None

    def total(name: str) -> int:
        return sum(int(getattr(r, name)) for r in rows)

    return ChargebackRow(
        group=group,
        spend=spend,
        share=_share(spend, total_spend),
        requests=requests,
        calls=total("calls"),
        input_tokens=total("input_tokens"),
        output_tokens=total("output_tokens"),
        cache_read_tokens=total("cache_read_tokens"),
        retries=total("retries"),
        fallbacks=total("fallbacks"),
        app_cache_hits=total("app_cache_hits"),
        unpriced_calls=total("unpriced_calls"),
        unattributed_spend=sum((r.unattributed_cost for r in rows), Decimal(0)),
        cost_per_request=_per(spend, requests),
        service_requests=total("requests") if separable else None,
        failed_attempts=total("failed_attempts"),
        avoided_input_tokens=total("avoided_input_tokens"),
        avoided_output_tokens=total("avoided_output_tokens"),
        cost_avoided=sum((r.cost_avoided for r in rows), Decimal(0)),
        estimated_calls=total("estimated_calls"),
        estimated_spend=sum((r.estimated_cost for r in rows), Decimal(0)),
    )


def _share(part: Decimal, whole: Decimal) -> Decimal:
    # Shares are ratios for people: 6 significant decimals are plenty and stay exact-printable.
    return (part / whole).quantize(Decimal("0.000001")) if whole else Decimal(0)


def _per(spend: Decimal, requests: int | None) -> Decimal | None:
    if not requests:
        return None
    return (spend / requests).quantize(Decimal("0.000000001"))


def chargeback(
    source: EventQueries, time_range: TimeRange, by: Sequence[str] = ("team",)
) -> Chargeback:
    names = tuple(by)
    dims = tuple(DIMENSIONS[n] for n in names)
    separable = not (set(dims) & _CALL_ONLY)
    buckets = source.rollups(time_range.start, time_range.end, group_by=dims)
    total_spend = sum((b.cost for b in buckets), Decimal(0))
    rows = []
    for bucket in buckets:
        if not separable and bucket.calls == bucket.failed_attempts == bucket.app_cache_hits == 0:
            continue  # request-only bucket (no provider/model): counted in the total only
        group = {name: _text(bucket.group.get(dim)) for name, dim in zip(names, dims, strict=True)}
        rows.append(_row(group, [bucket], total_spend, separable))
    rows.sort(key=lambda r: (-r.spend, -r.calls, [v or "" for v in r.group.values()]))
    total = _row({n: None for n in names}, buckets, total_spend, True)
    notes = []
    reasons: dict[str, int] = {}
    if total.unpriced_calls:
        reasons = source.unpriced_reasons(time_range.start, time_range.end)
        reasons.pop(FAILED_ATTEMPT, None)  # free, in their own column
        notes.append(unpriced_note(total.unpriced_calls, reasons))
    if total.estimated_calls:
        notes.append(
            f"{money_text(total.estimated_spend)} USD of the spend is estimated:"
            f" {total.estimated_calls} stream(s) the caller cancelled (usage estimated)"
        )
    if total.failed_attempts:
        notes.append(
            f"{total.failed_attempts} failed attempt(s) reported no usage: free, not counted"
            " as calls"
        )
    if total.app_cache_hits:
        notes.append(
            f"{total.app_cache_hits} application cache hit(s) avoided"
            f" {money_text(total.cost_avoided)} USD: not calls, not tokens consumed"
        )
    if not separable:
        notes.append("requests carry no provider/model: they are counted in the total, not per row")
    if any(r.group.get("team") is None for r in rows if "team" in names):
        notes.append("team '(none)' is spend with no owner: see `ownership-ctx coverage`")
    return Chargeback(time_range, names, rows, total, notes, reasons)


def unpriced_note(count: int, reasons: Mapping[str, int]) -> str:
    """``3 call(s) have no cost (2 no price library, 1 failed attempt): ...`` and, when the
    price library is missing, how to install it."""
    why = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
    note = f"{count} call(s) have no cost" + (f" ({why})" if why else "")
    note += ": not in these figures"
    if "no price library" in reasons:
        note += '; install the price library: pip install "ownership-ctx[prices]"'
    return note


def _text(value: object) -> str | None:
    return None if value is None else str(value)


_MEASURES: Final = (
    Column("spend", "spend USD", "money"),
    Column("share", "share", "pct"),
    Column("requests", "requests", "int"),
    Column("calls", "calls", "int"),
    Column("cost_per_request", "USD/request", "money"),
    Column("input_tokens", "input tok", "int"),
    Column("output_tokens", "output tok", "int"),
    Column("cache_read_tokens", "cached tok", "int"),
    Column("retries", "retries", "int"),
    Column("failed_attempts", "failed", "int"),
    Column("unpriced_calls", "unpriced", "int"),
    Column("estimated_spend", "estimated USD", "money"),
    Column("cost_avoided", "avoided USD", "money"),
)


def _flat(row: ChargebackRow) -> dict[str, object]:
    flat: dict[str, object] = dict(row.group)
    flat.update({c.key: getattr(row, c.key) for c in _MEASURES})
    return flat


def _document(result: Chargeback) -> Document:
    columns = [Column(n, n, none="(none)") for n in result.by] + list(_MEASURES)
    footer = _flat(result.total)
    footer[result.by[0]] = "total"
    table = Table(
        "chargeback",
        f"Chargeback by {', '.join(result.by)}",
        columns,
        [_flat(r) for r in result.rows],
        footer,
    )
    t = result.total
    headline = [
        f"range {result.range.label()}",
        f"spend {money_text(t.spend)} USD over {t.requests} request(s) (user actions;"
        f" {t.service_requests} service request events) and {t.calls} call(s)",
    ]
    data = {
        "range": result.range.as_json(),
        "by": list(result.by),
        "rows": [dataclasses.asdict(r) for r in result.rows],
        "total": dataclasses.asdict(result.total),
        "unpriced_reasons": result.unpriced_reasons,
    }
    return Document("chargeback", "ownership-ctx chargeback", headline, [table], result.notes, data)
