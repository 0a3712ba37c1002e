"""``report --html``: one self-contained page for the people who pay the bills.

No scripts, fonts or stylesheets from anywhere (a Content-Security-Policy forbids them), so it
works offline and can be mailed; charts are inline SVG drawn here, and every section that can
be long is a ``<details>`` element (expandable without scripts). What it shows:

- headline tiles: spend, requests (user actions) and cost per request, provider calls,
  unattributed share, and spend that is estimated or has no price;
- spend by team per day, and the unattributed share per day against the threshold;
- spend by model, feature, workflow and the top tenants;
- week over week per team, with the change split like ``anomaly`` (volume, calls per
  request, mix, tokens per call, price);
- a section per team: its own daily trend, workflows/features, models and its week over week;
- what the figures leave out or estimate: estimated spend, calls without a price by reason,
  failed attempts (free);
- where ownership was lost, and the most expensive requests with their child calls.

Every figure is computed by the same report functions as the CLI (`chargeback`, `coverage`,
`anomaly`), so the page and ``ownership-ctx chargeback --by model`` agree; money is shown with
one precision across the page (`money_places`), exact values in each cell's tooltip.
"""

from __future__ import annotations

import dataclasses
import html
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Final

from ownership_ctx.store.api import EventQueries

from ..budgets.html import burndown_section
from .anomaly import FACTORS, Anomaly, anomaly
from .chargeback import Chargeback, ChargebackRow, chargeback
from .coverage import Coverage, coverage
from .rendering import (
    human_day,
    human_range,
    money_places,
    money_text,
    nice_ticks,
    tick_text,
)
from .timerange import DAY, TimeRange
from .trace import TraceReport, build

__all__ = [
    "HtmlReport",
    "Section",
    "add_section",
    "build_report",
    "remove_section",
    "render_html",
    "top_requests",
]

_PALETTE: Final = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
)
_UNATTRIBUTED_COLOUR: Final = "#e15759"
_OTHER_COLOUR: Final = "#bab0ac"
_MAX_TEAMS: Final = 8  # series in the spend chart; the rest is "other"
_MAX_SECTIONS: Final = 40  # team sections; the rest are in the tables
_TABLE_ROWS: Final = 12  # rows per breakdown before "n more" (the CLI has them all)
_WEEK: Final = 7 * DAY
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Section:
    """A section another package adds to the page (budgets, reconciliation): a title and its
    HTML body, which the builder must have escaped (no title: the body has its own heading)."""

    title: str
    body: str


SectionBuilder = Callable[[EventQueries, TimeRange], "Section | None"]
_SECTION_BUILDERS: list[SectionBuilder] = []


def add_section(builder: SectionBuilder) -> None:
    """Have ``builder(source, time_range)`` add a section to every report (``None``: none)."""
    if builder not in _SECTION_BUILDERS:
        _SECTION_BUILDERS.append(builder)


def remove_section(builder: SectionBuilder) -> None:
    """Undo `add_section` (no-op for a builder that was not added)."""
    if builder in _SECTION_BUILDERS:
        _SECTION_BUILDERS.remove(builder)


@dataclasses.dataclass(frozen=True)
class HtmlReport:
    range: TimeRange
    days: list[int]
    spend: dict[str, dict[int, Decimal]]  # chart series (top teams) -> day -> spend
    by_team: Chargeback
    coverage: Coverage
    top: list[TraceReport]
    threshold: Decimal
    team_days: dict[str | None, dict[int, Decimal]] = dataclasses.field(default_factory=dict)
    by_model: Chargeback | None = None
    by_feature: Chargeback | None = None
    by_workflow: Chargeback | None = None
    by_tenant: Chargeback | None = None
    team_detail: Chargeback | None = None  # by team, workflow, feature
    team_models: Chargeback | None = None  # by team, model
    week: TimeRange | None = None  # the last 7 days of the range
    week_before: TimeRange | None = None
    wow: dict[str, Anomaly] = dataclasses.field(default_factory=dict)
    sections: list[Section] = dataclasses.field(default_factory=list)

    @property
    def places(self) -> int:
        """The page's one money precision."""
        return money_places(self.by_team.total.spend)


def top_requests(
    source: EventQueries, time_range: TimeRange, n: int, calls_in_range: int = 0
) -> list[tuple[str, Decimal]]:
    """The ``n`` traces with the highest summed call cost in the range (``calls_in_range``
    is no longer needed: kept for callers that pass it)."""
    return [(t.trace_id, t.cost) for t in source.top_requests(time_range.start, time_range.end, n)]


def week_over_week(time_range: TimeRange) -> tuple[TimeRange, TimeRange]:
    """The last 7 days of the range and the 7 before: ``anomaly --current 7d --until END``."""
    current = TimeRange(time_range.end - _WEEK, time_range.end)
    return current, TimeRange(current.start - _WEEK, current.start)


def build_report(
    source: EventQueries,
    time_range: TimeRange,
    *,
    top: int = 10,
    threshold: Decimal = Decimal("0.02"),
    progress: Progress | None = None,
) -> HtmlReport:
    say = progress or (lambda _: None)
    say("spend by team and day")
    buckets = source.rollups(time_range.start, time_range.end, group_by=("day", "owner_team"))
    team_days: dict[str | None, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for b in buckets:
        team = None if b.group["owner_team"] is None else str(b.group["owner_team"])
        team_days[team][int(b.group["day"] or 0)] += b.cost
        totals[team or ""] += b.cost
    named = sorted((t for t in totals if t), key=lambda t: (-totals[t], t))
    shown = set(named[:_MAX_TEAMS])
    spend: dict[str, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for team, per_day in team_days.items():
        series = "(unattributed)" if team is None else (team if team in shown else "other")
        for day, amount in per_day.items():
            spend[series][day] += amount
    days = list(range(time_range.start - time_range.start % DAY, time_range.end, DAY))
    say("chargeback")
    by_team = chargeback(source, time_range, ("team",))
    by_model = chargeback(source, time_range, ("model",))
    by_feature = chargeback(source, time_range, ("feature",))
    by_workflow = chargeback(source, time_range, ("workflow",))
    by_tenant = chargeback(source, time_range, ("tenant",))
    team_detail = chargeback(source, time_range, ("team", "workflow", "feature"))
    team_models = chargeback(source, time_range, ("team", "model"))
    say("week over week")
    week, before = week_over_week(time_range)
    wow = {team: anomaly(source, team, before, week) for team in named[:_MAX_SECTIONS]}
    say("coverage")
    cov = coverage(source, time_range, threshold=threshold, progress=say)
    say("most expensive requests")
    traces = [
        build(trace_id, source.events_by_trace(trace_id))
        for trace_id, _ in top_requests(source, time_range, top, cov.calls)
    ]
    sections = [s for s in (b(source, time_range) for b in _SECTION_BUILDERS) if s is not None]
    if budget_html := burndown_section(source):  # "" unless $OWNERSHIP_CTX_BUDGETS
        sections.append(Section("", budget_html))  # no title: it has its own <h2>
    order = [*named[:_MAX_TEAMS], "other", "(unattributed)"]
    return HtmlReport(
        range=time_range,
        days=days,
        spend={k: dict(spend[k]) for k in order if k in spend},
        by_team=by_team,
        coverage=cov,
        top=traces,
        threshold=threshold,
        team_days={k: dict(v) for k, v in team_days.items()},
        by_model=by_model,
        by_feature=by_feature,
        by_workflow=by_workflow,
        by_tenant=by_tenant,
        team_detail=team_detail,
        team_models=team_models,
        week=week,
        week_before=before,
        wow=wow,
        sections=sections,
    )


# -- formatting ---------------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


class _Money:
    """The page's one money precision; exact values go in the tooltip."""

    def __init__(self, places: int) -> None:
        self.places = places
        self.quantum = Decimal(1).scaleb(-places)

    def text(self, value: Decimal | None) -> str:
        if value is None:
            return "-"
        shown = value.quantize(self.quantum)
        if value and not shown:
            return f"{'-' if value < 0 else ''}<{self.quantum}"
        return f"{shown:,f}"

    def cell(self, value: Decimal | None) -> str:
        exact = "" if value is None else f' title="{_e(money_text(value))} USD"'
        return f'<td class="num"{exact}>{_e(self.text(value))}</td>'


def _pct(value: Decimal | None, places: str = "0.01") -> str:
    return "-" if value is None else f"{(value * 100).quantize(Decimal(places))}%"


def _int(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _colour(series: str, index: int) -> str:
    if series == "(unattributed)":
        return _UNATTRIBUTED_COLOUR
    if series == "other":
        return _OTHER_COLOUR
    return _PALETTE[index % len(_PALETTE)]


def _label_every(count: int, room: int) -> int:
    return max(1, -(-count // room))


# -- charts -------------------------------------------------------------------------------------


def _bars(
    days: Sequence[int],
    series: Mapping[str, Mapping[int, Decimal]],
    money: _Money,
    *,
    label: str,
    width: int = 640,
    height: int = 240,
) -> str:
    """Stacked bars per day; the y axis in USD with round ticks; days as ``Mon 12 Jan``."""
    left, right, bottom, top = 64, 12, 40, 12
    stacks = [sum((s.get(d, Decimal(0)) for s in series.values()), Decimal(0)) for d in days]
    ticks = nice_ticks(max(stacks, default=Decimal(0)))
    peak = ticks[-1]
    plot_w, plot_h = width - left - right, height - bottom - top
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="{_e(label)}">'
    ]
    for value in ticks:
        y = top + plot_h - float(value / peak) * plot_h
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{_e(tick_text(value, ticks))}</text>"
        )
    every = _label_every(len(days), max(1, plot_w // 56))
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = float(top + plot_h)
        for index, (name, values) in enumerate(series.items()):
            amount = values.get(day, Decimal(0))
            if not amount:
                continue
            h = float(amount / peak) * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{_colour(name, index)}"><title>{_e(human_day(day))} {_e(name)}:'
                f" {_e(money.text(amount))} USD</title></rect>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" class="axis"'
                f' text-anchor="middle">{_e(human_day(day))}</text>'
            )
    parts.append("</svg>")
    if len(series) > 1:
        keys = "".join(
            f'<span class="key"><i style="background:{_colour(s, n)}"></i>{_e(s)}</span>'
            for n, s in enumerate(series)
        )
        parts.append(f'<div class="legend">{keys}</div>')
    return "".join(parts)


def _coverage_chart(report: HtmlReport) -> str:
    """The unattributed share per day, placed on the same days as the spend chart (days
    without spend have no point), against the threshold; percent ticks at round steps."""
    width, height, left, right, bottom, top = 640, 240, 56, 12, 40, 12
    days = report.days
    shares = {d.start: d for d in report.coverage.days}
    plot_w, plot_h = width - left - right, height - bottom - top
    peak = max([*(d.share for d in shares.values()), report.threshold * Decimal("1.5")])
    ticks = nice_ticks(min(peak, Decimal(1)) * 100)
    ceiling = ticks[-1] / 100
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Unattributed share per day">'
    ]
    for value in ticks:
        y = top + plot_h - float(value / 100 / ceiling) * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{_e(tick_text(value, ticks))}%</text>"
        )
    ty = top + plot_h - float(min(report.threshold / ceiling, Decimal(1))) * plot_h
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>'
        f'<text x="{left + plot_w}" y="{ty - 4:.1f}" class="axis" text-anchor="end">threshold'
        f" {_e(_pct(report.threshold, '0.1'))}</text>"
    )
    slot = plot_w / max(len(days), 1)
    every = _label_every(len(days), max(1, plot_w // 56))
    points = []
    for i, day in enumerate(days):
        x = left + i * slot + slot / 2
        d = shares.get(day)
        if d is not None:
            y = top + plot_h - float(d.share / ceiling) * plot_h
            points.append(f"{x:.1f},{y:.1f}")
            over = d.share > report.threshold
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" class="{"over" if over else "ok"}">'
                f"<title>{_e(human_day(day))}: {_e(_pct(d.share))} of"
                f" {_e(money_text(d.total))} USD unattributed</title></circle>"
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - bottom + 16}" class="axis"'
                f' text-anchor="middle">{_e(human_day(day))}</text>'
            )
    if len(points) > 1:
        parts.insert(1, f'<polyline points="{" ".join(points)}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


# -- tables -------------------------------------------------------------------------------------


def _table(headers: Sequence[str], rows: Sequence[str], *, numeric_from: int = 1) -> str:
    head = "".join(
        f'<th class="{"num" if i >= numeric_from else ""}">{_e(h)}</th>'
        for i, h in enumerate(headers)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _name(value: str | None) -> str:
    return "(none)" if value is None else value


def _breakdown(
    result: Chargeback, key: str, money: _Money, *, label: str, limit: int = _TABLE_ROWS
) -> str:
    """One dimension of chargeback: the CLI's ``chargeback --by KEY`` rows, the first
    ``limit`` of them and one line for the rest."""
    per_request = "requests" in _separable(result)
    headers = [label, "spend USD", "share", "calls", "input tok", "output tok"]
    if per_request:
        headers[3:3] = ["requests", "USD/request"]
    rows = []
    for r in result.rows[:limit]:
        cells = [_name_cell(r.group[key]), money.cell(r.spend), _td(_pct(r.share))]
        if per_request:
            cells += [_td(_int(r.requests)), money.cell(r.cost_per_request)]
        cells += [_td(_int(r.calls)), _td(_int(r.input_tokens)), _td(_int(r.output_tokens))]
        rows.append(f"<tr>{''.join(cells)}</tr>")
    rest = result.rows[limit:]
    if rest:
        spend = sum((r.spend for r in rest), Decimal(0))
        span = len(headers) - 2
        rows.append(
            f'<tr class="more"><td>{len(rest)} more</td>{money.cell(spend)}'
            f'<td colspan="{span}"></td></tr>'
        )
    return _table(headers, rows)


def _name_cell(value: str | None, limit: int = 24) -> str:
    """A group's name; long ones (tenant hashes) cut, whole in the tooltip."""
    name = _name(value)
    if len(name) <= limit:
        return f"<td>{_e(name)}</td>"
    return f'<td title="{_e(name)}">{_e(name[: limit - 1])}…</td>'


def _separable(result: Chargeback) -> set[str]:
    # Requests carry no provider/model: per-request figures only where the CLI has them.
    return set() if {"model", "provider", "tier"} & set(result.by) else {"requests"}


def _td(text: str) -> str:
    return f'<td class="num">{_e(text)}</td>'


def _wow_cells(a: Anomaly, money: _Money) -> list[str]:
    d = a.decomposition
    cells = [money.cell(a.baseline.spend), money.cell(a.current.spend), money.cell(d.change)]
    cells += [money.cell(d.contributions[f]) for f in FACTORS]
    return cells


_WOW_HEADERS: Final = (
    "prior 7 days",
    "last 7 days",
    "change",
    "volume",
    "calls/request",
    "mix",
    "tokens/call",
    "price",
    "unmodeled",
)


def _wow_table(report: HtmlReport, money: _Money) -> str:
    if not report.wow:
        return "<p>No team has spend in the range.</p>"
    rows = [
        f"<tr><td>{_e(team)}</td>{''.join(_wow_cells(a, money))}</tr>"
        for team, a in report.wow.items()
    ]
    return _table(["team", *_WOW_HEADERS], rows)


def _wow_factors(a: Anomaly, money: _Money) -> str:
    """One team's split, with the evidence the CLI's ``anomaly`` prints."""
    doc = a.document()
    factors = doc.tables[0]
    rows = []
    for row in factors.rows:
        share = row["share"]
        rows.append(
            f"<tr><td>{_e(row['factor'])}</td><td>{_e(row['baseline'])}</td>"
            f"<td>{_e(row['current'])}</td>{money.cell(row['contribution'])}"
            f"{_td(_pct(share) if isinstance(share, Decimal) else '-')}</tr>"
        )
    return _table(
        ["factor", "prior 7 days", "last 7 days", "USD", "of change"], rows, numeric_from=3
    )


def _team_sections(report: HtmlReport, money: _Money) -> str:
    detail = report.team_detail
    models = report.team_models
    out = []
    for rank, row in enumerate(report.by_team.rows[:_MAX_SECTIONS]):
        team = row.group["team"]
        name = _name(team)
        wow = report.wow.get(team) if team is not None else None
        change = ""
        if wow is not None:
            change = f" · week over week {_e(money.text(wow.decomposition.change))} USD"
        trend = _bars(
            report.days,
            {name: report.team_days.get(team, {})},
            money,
            label=f"Spend of {name} per day",
            height=160,
        )
        parts = [f"<h4>Spend per day (USD)</h4>{trend}"]
        if detail is not None:
            mine = [r for r in detail.rows if r.group["team"] == team]
            parts.append(
                "<h4>Workflows and features</h4>"
                + _rows_table(mine, ("workflow", "feature"), money, requests=True)
            )
        if models is not None:
            mine = [r for r in models.rows if r.group["team"] == team]
            parts.append("<h4>Models</h4>" + _rows_table(mine, ("model",), money, requests=False))
        if wow is not None:
            parts.append(
                "<h4>Week over week: last 7 days vs the 7 before</h4>" + _wow_factors(wow, money)
            )
        per = (
            ""
            if row.cost_per_request is None
            else f" · {money.text(row.cost_per_request)} USD/request"
        )
        opened = " open" if rank == 0 else ""
        out.append(
            f'<details class="team"{opened}><summary><b>{_e(name)}</b> ·'
            f" {_e(money.text(row.spend))} USD ({_e(_pct(row.share))}) ·"
            f" {_e(_int(row.requests))} requests{_e(per)}{change}</summary>"
            f'<div class="cols">{"".join(f"<div class=scroll>{p}</div>" for p in parts)}</div>'
            "</details>"
        )
    return "".join(out)


def _rows_table(
    rows: Sequence[ChargebackRow], keys: Sequence[str], money: _Money, *, requests: bool
) -> str:
    headers = [*keys, "spend USD", "calls", "input tok", "output tok"]
    if requests:
        headers[len(keys) + 1 : len(keys) + 1] = ["requests", "USD/request"]
    body = []
    for r in rows[:_TABLE_ROWS]:
        cells = [f"<td>{_e(_name(r.group[k]))}</td>" for k in keys] + [money.cell(r.spend)]
        if requests:
            cells += [_td(_int(r.requests)), money.cell(r.cost_per_request)]
        cells += [_td(_int(r.calls)), _td(_int(r.input_tokens)), _td(_int(r.output_tokens))]
        body.append(f"<tr>{''.join(cells)}</tr>")
    if len(rows) > _TABLE_ROWS:
        body.append(
            f'<tr class="more"><td colspan="{len(headers)}">'
            f"{len(rows) - _TABLE_ROWS} more</td></tr>"
        )
    return _table(headers, body, numeric_from=len(keys))


def _quality(report: HtmlReport, money: _Money) -> str:
    """What the spend figures estimate or leave out, each apart."""
    total = report.by_team.total
    reported = total.spend - total.estimated_spend
    rows = [
        f"<tr><td>priced from reported usage</td>{money.cell(reported)}"
        f"{_td(_int(total.calls - total.estimated_calls - total.unpriced_calls))}"
        "<td>in every figure above</td></tr>",
        f"<tr><td>estimated</td>{money.cell(total.estimated_spend)}"
        f"{_td(_int(total.estimated_calls))}<td>in the figures above: streams the caller"
        " cancelled, usage estimated from the prompt and the text streamed</td></tr>",
    ]
    reasons = report.by_team.unpriced_reasons
    for reason, count in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        rows.append(
            f"<tr><td>no price: {_e(reason)}</td>{_td('unknown')}{_td(_int(count))}"
            "<td>not in the figures: tokens counted, cost unknown</td></tr>"
        )
    rows.append(
        f"<tr><td>failed attempts</td>{money.cell(Decimal(0))}{_td(_int(total.failed_attempts))}"
        "<td>free: no usage reported; not calls</td></tr>"
    )
    rows.append(
        f"<tr><td>avoided by application cache hits</td>{money.cell(total.cost_avoided)}"
        f"{_td(_int(total.app_cache_hits))}<td>not spent: not calls, not tokens consumed"
        f" ({_int(total.avoided_input_tokens)} input and {_int(total.avoided_output_tokens)}"
        " output tokens avoided)</td></tr>"
    )
    return _table(["spend", "USD", "calls", "how it counts"], rows)


def _top_section(report: HtmlReport, money: _Money | None = None) -> str:
    if not report.top:
        return "<p>No traced provider calls in this range.</p>"
    money = money or _Money(6)
    out = []
    for rank, t in enumerate(report.top):
        route = next((h.unit for h in t.hops if h.kind == "request"), None) or next(
            (f"{h.hop} {h.unit}" for h in t.hops), "(no hop)"
        )
        owner = " / ".join(v or "(none)" for v in list(t.owner.values())[:3])
        rows = []
        for c in t.calls:
            cells = [
                _td(str(c.attempt)),
                f"<td>{_e(c.status)}</td><td>{_e(c.provider)}</td><td>{_e(c.model)}</td>",
                f"<td>{_e(c.service_tier or '')}</td>",
                _td("" if c.input_tokens is None else f"{c.input_tokens:,}"),
                _td("" if c.output_tokens is None else f"{c.output_tokens:,}"),
                money.cell(c.cost),
                f"<td>{_e('fallback of ' + c.fallback_of if c.fallback_of else '')}</td>",
            ]
            rows.append(f"<tr>{''.join(cells)}</tr>")
        calls = _table(
            ["try", "status", "provider", "model", "tier", "in tok", "out tok", "USD", ""],
            rows,
            numeric_from=99,
        )
        opened = " open" if rank < 3 else ""
        out.append(
            f"<details{opened}><summary><b>{_e(money.text(t.total))} USD</b> · {_e(route)} ·"
            f" {_e(owner)} · {len(t.calls)} call(s) · <code>{_e(t.trace_id)}</code></summary>"
            f"{calls}</details>"
        )
    return "".join(out)


def _hops(cov: Coverage, money: _Money) -> str:
    if not cov.hops:
        return "<p>No unattributed spend.</p>"
    rows = [
        f"<tr><td>{_e(h.hop)}</td><td>{_e(h.unit)}</td><td>{_e(h.code)}</td>"
        f"<td>{_e(','.join(h.fields))}</td>{money.cell(h.spend)}{_td(_pct(h.share))}"
        f"{_td(_int(h.calls))}</tr>"
        for h in cov.hops
    ]
    return _table(
        ["hop", "route/task/actor", "what", "fields missing", "USD", "of unattributed", "calls"],
        rows,
        numeric_from=4,
    )


_CSS: Final = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0 auto;
padding:20px 28px;max-width:1440px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:4px 0 6px}h4{font-size:13px;margin:10px 0 4px;color:#444}
.sub{color:#666}.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));
gap:12px;margin:16px 0}.tile{border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.tile b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.tile small{color:#666}.bad{color:#c0392b}.good{color:#2e7d32}
.grid,.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:8px 28px}
.cols>div{min-width:0}.grid>section{min-width:0}
.chart{width:100%;height:auto;display:block}.grid line.grid,.chart .grid{stroke:#eee}
.axis{font-size:11px;fill:#666}
.threshold{stroke:#c0392b;stroke-dasharray:4 3}.line{fill:none;stroke:#4e79a7;stroke-width:2}
circle.ok{fill:#4e79a7}circle.over{fill:#e15759}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}
th{font-weight:600;color:#444}th.num,td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.more td{color:#666;font-style:italic}
details{margin:4px 0}summary{cursor:pointer;padding:3px 0}
details.team{border:1px solid #e4e4e4;border-radius:6px;padding:4px 12px;margin:8px 0}
code{font-size:11px;color:#555}
"""


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="sub">{_e(note)}</p>' for note in notes)


def _tiles(report: HtmlReport, money: _Money) -> str:
    total = report.by_team.total
    cov = report.coverage
    share_class = "bad" if cov.share > report.threshold else "good"
    per = "-" if total.cost_per_request is None else money.text(total.cost_per_request)
    tiles = [
        ("spend", _e(f"{money.text(total.spend)} USD"), f"{_int(total.calls)} provider calls"),
        ("requests", _e(_int(total.requests)), f"user actions · {per} USD each"),
        (
            "unattributed",
            f'<span class="{share_class}">{_e(_pct(cov.share))}</span>',
            f"threshold {_pct(report.threshold, '0.1')}",
        ),
        (
            "estimated",
            _e(f"{money.text(total.estimated_spend)} USD"),
            f"{_int(total.estimated_calls)} cancelled stream(s), in the spend",
        ),
        (
            "without a price",
            _e(_int(total.unpriced_calls)),
            f"calls; {_int(total.failed_attempts)} failed attempts (free)",
        ),
    ]
    cells = "".join(
        f'<div class="tile">{_e(name)}<b>{value}</b><small>{_e(note)}</small></div>'
        for name, value, note in tiles
    )
    return f'<div class="tiles">{cells}</div>'


def render_html(report: HtmlReport) -> str:
    money = _Money(report.places)
    cov = report.coverage
    span = human_range(report.range.start, report.range.end)
    grid = [
        (
            "Spend by team per day (USD)",
            _bars(report.days, report.spend, money, label="Spend by team per day"),
        ),
        ("Coverage: unattributed share per day", _coverage_chart(report)),
    ]
    for title, result, key, label in (
        ("Spend by model", report.by_model, "model", "model"),
        ("Spend by feature", report.by_feature, "feature", "feature"),
        ("Spend by workflow", report.by_workflow, "workflow", "workflow"),
        ("Top tenants", report.by_tenant, "tenant", "tenant (hashed)"),
    ):
        if result is not None:
            grid.append((title, _breakdown(result, key, money, label=label)))
    grid_html = "".join(
        f'<section><h3>{_e(t)}</h3><div class="scroll">{body}</div></section>' for t, body in grid
    )
    wow_title = "Week over week"
    if report.week is not None and report.week_before is not None:
        wow_title += (
            f": {human_range(report.week.start, report.week.end)} vs"
            f" {human_range(report.week_before.start, report.week_before.end)}"
        )
    teams = _breakdown(report.by_team, "team", money, label="team", limit=_MAX_SECTIONS)
    # A section with no title brings its own heading.
    extra = "".join(
        f"<h2>{_e(s.title)}</h2>{s.body}" if s.title else s.body for s in report.sections
    )
    body = (
        f'<h1>LLM spend by owner</h1><div class="sub">{_e(span)} · amounts in USD to'
        f" {money.places} decimals (hover a figure for its exact value) · generated by"
        f" ownership-ctx</div>{_tiles(report, money)}"
        f'<div class="grid">{grid_html}</div>'
        f'<h2>{_e(wow_title)}</h2><p class="sub">The change of each team\'s spend split as'
        " <code>ownership-ctx anomaly</code> does: traffic volume, calls per request (retries,"
        " fan-out, fallbacks), model/tier mix, tokens per call, price.</p>"
        f'<div class="scroll">{_wow_table(report, money)}</div>'
        f"<h2>Teams</h2>{_team_sections(report, money)}"
        f"<h2>Chargeback by team</h2>"
        f'<div class="scroll">{teams}</div>'
        f"{_notes(report.by_team.notes)}"
        f"<h2>Estimated, unpriced and failed</h2>{_quality(report, money)}"
        f'<div class="grid"><section><h3>Where ownership was lost</h3>'
        f'<div class="scroll">{_hops(cov, money)}</div></section>'
        f"<section><h3>Most expensive requests</h3>{_top_section(report, money)}</section></div>"
        f"{extra}"
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>ownership-ctx report</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
