"""``report --html``: one self-contained page (no scripts, fonts or stylesheets from anywhere;
a Content-Security-Policy that forbids them) with charts drawn here as inline SVG:

- spend by team over time (stacked bars per day; unattributed spend in its own colour),
- coverage trend (unattributed share per day, against the threshold),
- the most expensive requests, each with its child provider calls,
- plus the chargeback-by-team table and where coverage was lost.
"""

from __future__ import annotations

import dataclasses
import html
from collections import defaultdict
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import Final

from ownership_ctx.store.api import EventQueries

from .chargeback import Chargeback, chargeback
from .coverage import Coverage, coverage
from .rendering import money_text
from .timerange import TimeRange, day_label, stamp
from .trace import TraceReport, build

__all__ = ["HtmlReport", "build_report", "render_html", "top_requests"]

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
_MAX_TEAMS: Final = 8
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class HtmlReport:
    range: TimeRange
    days: list[int]
    spend: dict[str, dict[int, Decimal]]  # series -> day -> spend
    by_team: Chargeback
    coverage: Coverage
    top: list[TraceReport]
    threshold: Decimal


def top_requests(
    source: EventQueries, time_range: TimeRange, n: int, calls_in_range: int = 0
) -> list[tuple[str, Decimal]]:
    """The ``n`` traces with the highest summed call cost in the range (``calls_in_range``
    is no longer needed: kept for callers that pass it)."""
    return [(t.trace_id, t.cost) for t in source.top_requests(time_range.start, time_range.end, n)]


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
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for b in buckets:
        totals[str(b.group["owner_team"] or "")] += b.cost
    named = sorted((t for t in totals if t), key=lambda t: (-totals[t], t))
    shown = set(named[:_MAX_TEAMS])
    spend: dict[str, dict[int, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for b in buckets:
        team = b.group["owner_team"]
        series = "(unattributed)" if team is None else (str(team) if team in shown else "other")
        spend[series][int(b.group["day"] or 0)] += b.cost
    days = list(range(time_range.start - time_range.start % 86400, time_range.end, 86400))
    say("chargeback by team")
    by_team = chargeback(source, time_range, ("team",))
    say("coverage")
    cov = coverage(source, time_range, threshold=threshold, progress=say)
    say("most expensive requests")
    traces = []
    for trace_id, _ in top_requests(source, time_range, top, cov.calls):
        traces.append(build(trace_id, source.events_by_trace(trace_id)))
    order = [*named[:_MAX_TEAMS], "other", "(unattributed)"]
    ordered = {k: dict(spend[k]) for k in order if k in spend}
    return HtmlReport(time_range, days, ordered, by_team, cov, traces, threshold)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Decimal, places: str = "0.0001") -> str:
    return format(value.quantize(Decimal(places)), ",f")


def _nice(value: Decimal) -> Decimal:
    """The smallest 1, 2, 2.5 or 5 x 10^k at or above ``value``: round axis labels."""
    if value <= 0:
        return Decimal(1)
    exponent = value.adjusted()
    for step in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5), Decimal(10)):
        candidate = step.scaleb(exponent)
        if candidate >= value:
            return candidate
    return Decimal(10).scaleb(exponent)


def _colour(series: str, index: int) -> str:
    if series == "(unattributed)":
        return _UNATTRIBUTED_COLOUR
    if series == "other":
        return _OTHER_COLOUR
    return _PALETTE[index % len(_PALETTE)]


def _axis(value: Decimal) -> str:
    text = format(value.normalize(), "f") if value else "0"
    return text


def _spend_chart(report: HtmlReport) -> str:
    width, height, left, bottom, top = 760, 260, 64, 40, 12
    days = report.days
    stacks = [sum((s.get(d, Decimal(0)) for s in report.spend.values()), Decimal(0)) for d in days]
    peak = _nice(max(stacks, default=Decimal(0)))
    plot_w, plot_h = width - left - 12, height - bottom - top
    slot = plot_w / max(len(days), 1)
    bar = max(slot * 0.7, 1.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Spend by team per day">'
    ]
    for i in range(5):  # gridlines with labels
        value = peak * i / 4
        y = top + plot_h - float(value / peak) * plot_h
        parts.append(
            f'<line x1="{left}" x2="{width - 12}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{_e(_axis(value))}</text>"
        )
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar) / 2
        y = float(top + plot_h)
        for index, (series, values) in enumerate(report.spend.items()):
            amount = values.get(day, Decimal(0))
            if not amount:
                continue
            h = float(amount / peak) * plot_h
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}"'
                f' fill="{_colour(series, index)}"><title>{_e(day_label(day))} {_e(series)}:'
                f" {_e(money_text(amount))} USD</title></rect>"
            )
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 16}" class="axis"'
                f' text-anchor="middle">{_e(day_label(day)[5:])}</text>'
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{_colour(s, n)}"></i>{_e(s)}</span>'
        for n, s in enumerate(report.spend)
    )
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def _coverage_chart(report: HtmlReport) -> str:
    width, height, left, bottom, top = 760, 200, 64, 36, 12
    days = list(report.coverage.days)
    plot_w, plot_h = width - left - 40, height - bottom - top
    shares = [d.share for d in days]
    ceiling = min(_nice(max([*shares, report.threshold * 2, Decimal("0.05")])), Decimal(1))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="Unattributed share per day">'
    ]
    for i in range(5):
        value = ceiling * i / 4
        y = top + plot_h - float(value / ceiling) * plot_h
        parts.append(
            f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" class="axis" text-anchor="end">'
            f"{_e(_fmt(value * 100, '0.1'))}%</text>"
        )
    ty = top + plot_h - float(report.threshold / ceiling) * plot_h
    parts.append(
        f'<line x1="{left}" x2="{left + plot_w}" y1="{ty:.1f}" y2="{ty:.1f}" class="threshold"/>'
        f'<text x="{left + plot_w}" y="{ty - 4:.1f}" class="axis" text-anchor="end">threshold'
        f" {_e(_fmt(report.threshold * 100, '0.1'))}%</text>"
    )
    step = plot_w / max(len(days) - 1, 1)
    points = []
    for i, d in enumerate(days):
        x = left + (i * step if len(days) > 1 else plot_w / 2)
        y = top + plot_h - float(d.share / ceiling) * plot_h
        points.append(f"{x:.1f},{y:.1f}")
        over = d.share > report.threshold
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" class="{"over" if over else "ok"}">'
            f"<title>{_e(d.label)}: {_e(_fmt(d.share * 100, '0.01'))}% of"
            f" {_e(money_text(d.total))} USD unattributed</title></circle>"
        )
        if len(days) <= 16 or i % max(1, len(days) // 8) == 0:
            parts.append(
                f'<text x="{x:.1f}" y="{height - bottom + 16}" class="axis"'
                f' text-anchor="middle">{_e(d.label[5:])}</text>'
            )
    if len(points) > 1:
        parts.insert(1, f'<polyline points="{" ".join(points)}" class="line"/>')
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if i in numeric else ""}">{_e(c)}</td>' for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _top_section(report: HtmlReport) -> str:
    if not report.top:
        return "<p>No traced provider calls in this range.</p>"
    out = []
    for rank, t in enumerate(report.top):
        route = next((h.unit for h in t.hops if h.kind == "request"), None) or next(
            (f"{h.hop} {h.unit}" for h in t.hops), "(no hop)"
        )
        owner = " / ".join(v or "(none)" for v in list(t.owner.values())[:3])
        calls = _table(
            ["try", "status", "provider", "model", "tier", "in tok", "out tok", "cost USD", ""],
            [
                [
                    str(c.attempt),
                    c.status,
                    c.provider,
                    c.model,
                    c.service_tier or "",
                    "" if c.input_tokens is None else f"{c.input_tokens:,}",
                    "" if c.output_tokens is None else f"{c.output_tokens:,}",
                    "-" if c.cost is None else money_text(c.cost),
                    "fallback of " + c.fallback_of if c.fallback_of else "",
                ]
                for c in t.calls
            ],
            {0, 5, 6, 7},
        )
        opened = " open" if rank < 3 else ""
        out.append(
            f"<details{opened}><summary><b>{_e(money_text(t.total))} USD</b> · {_e(route)} ·"
            f" {_e(owner)} · {len(t.calls)} call(s) · <code>{_e(t.trace_id)}</code></summary>"
            f"{calls}</details>"
        )
    return "".join(out)


_CSS: Final = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;
max-width:820px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd}
.sub{color:#666}.tiles{display:flex;gap:12px;margin:16px 0}
.tile{flex:1;border:1px solid #ddd;border-radius:6px;padding:8px 12px}
.tile b{display:block;font-size:20px}.bad{color:#c0392b}.good{color:#2e7d32}
.chart{width:100%;height:auto}.grid{stroke:#eee}.axis{font-size:11px;fill:#666}
.threshold{stroke:#c0392b;stroke-dasharray:4 3}.line{fill:none;stroke:#4e79a7;stroke-width:2}
circle.ok{fill:#4e79a7}circle.over{fill:#e15759}
.legend{display:flex;flex-wrap:wrap;gap:10px;font-size:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
table{border-collapse:collapse;width:100%;font-size:12.5px;margin:6px 0}
th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:left}td.num{text-align:right;
font-variant-numeric:tabular-nums}details{margin:4px 0}summary{cursor:pointer}
code{font-size:11px;color:#555}
"""


def _notes(notes: list[str]) -> str:
    # Calls without a cost and why ("no price library", "unknown model", "failed attempt").
    return "".join(f'<p class="sub">{_e(note)}</p>' for note in notes)


def render_html(report: HtmlReport) -> str:
    cov = report.coverage
    total = report.by_team.total
    share_class = "bad" if cov.share > report.threshold else "good"
    tiles = (
        f'<div class="tiles"><div class="tile">spend<b>{_e(_fmt(total.spend))} USD</b></div>'
        f'<div class="tile">requests<b>{total.requests:,}</b></div>'
        f'<div class="tile">provider calls<b>{total.calls:,}</b></div>'
        f'<div class="tile">unattributed<b class="{share_class}">'
        f"{_e(_fmt(cov.share * 100, '0.01'))}%</b></div></div>"
    )
    teams = _table(
        ["team", "spend USD", "share", "requests", "calls", "USD/request", "unpriced"],
        [
            [
                r.group["team"] or "(none)",
                _fmt(r.spend, "0.000001"),
                f"{_fmt(r.share * 100, '0.01')}%",
                f"{r.requests or 0:,}",
                f"{r.calls:,}",
                "-" if r.cost_per_request is None else _fmt(r.cost_per_request, "0.000001"),
                str(r.unpriced_calls),
            ]
            for r in report.by_team.rows
        ],
        {1, 2, 3, 4, 5, 6},
    )
    hops = (
        _table(
            ["hop", "route/task/actor", "what", "fields", "unattributed USD", "calls"],
            [
                [h.hop, h.unit, h.code, ",".join(h.fields), money_text(h.spend), str(h.calls)]
                for h in cov.hops
            ],
            {4, 5},
        )
        if cov.hops
        else "<p>No unattributed spend.</p>"
    )
    body = (
        f'<h1>LLM spend by owner</h1><div class="sub">{_e(stamp(report.range.start))} to'
        f" {_e(stamp(report.range.end))} · generated by ownership-ctx</div>{tiles}"
        f"<h2>Spend by team per day (USD)</h2>{_spend_chart(report)}"
        f"<h2>Coverage: unattributed share per day</h2>{_coverage_chart(report)}"
        f"<h2>Where ownership was lost</h2>{hops}"
        f"<h2>Chargeback by team</h2>{teams}{_notes(report.by_team.notes)}"
        f"<h2>Most expensive requests</h2>{_top_section(report)}"
    )
    csp = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>ownership-ctx report</title><style>{_CSS}</style></head>"
        f"<body>{body}</body></html>\n"
    )
