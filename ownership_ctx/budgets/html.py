"""The burn-down of each budget as HTML: spend so far against the limit, per owner.

`render_burndown` draws a `BudgetReport` (inline SVG, no scripts, no external resources, so
it fits the report page's content security policy). `burndown_section` is what the HTML
report (`ownership-ctx report --html`) calls: it shows the budgets of the file named by
``$OWNERSHIP_CTX_BUDGETS``, and nothing when that is not set.
"""

from __future__ import annotations

import html
import os
import time
from decimal import Decimal
from typing import Any, Final

from .report import BudgetReport, BudgetStatus, budget_status

__all__ = ["BUDGETS_ENV", "burndown_section", "render_burndown"]

#: The budget file the HTML report draws (the same as ``ownership-ctx budgets --config``).
BUDGETS_ENV: Final = "OWNERSHIP_CTX_BUDGETS"
_W, _H, _PAD = 560, 150, 28
_STATE_COLOUR: Final = {"ok": "#59a14f", "soft": "#edc948", "over": "#e15759"}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _chart(status: BudgetStatus) -> str:
    span = status.end - status.start
    limit = status.budget.limit
    top = max(limit, status.forecast, status.spent) * Decimal("1.1") or Decimal(1)

    def x(ts: float) -> float:
        return _PAD + (ts - status.start) / span * (_W - 2 * _PAD)

    def y(amount: Decimal) -> float:
        return float(_H - _PAD - amount / top * (_H - 2 * _PAD))

    points = [(x(status.start), y(Decimal(0)))]
    total = Decimal(0)
    for hour, spend in status.hourly:
        total += spend
        points.append((x(min(hour + 3600, status.end)), y(total)))
    path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
    last_x, last_y = points[-1]
    colour = _STATE_COLOUR[status.state]
    parts = [
        f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img"'
        f' aria-label="burn-down of {_e(status.budget.name)}">',
        f'<line x1="{_PAD}" y1="{y(limit):.1f}" x2="{_W - _PAD}" y2="{y(limit):.1f}"'
        ' stroke="#e15759" stroke-dasharray="4 3"/>',
        f'<text x="{_W - _PAD}" y="{y(limit) - 4:.1f}" text-anchor="end" font-size="10">'
        f"limit {_e(limit)}</text>",
    ]
    if status.budget.soft is not None:
        soft = status.budget.soft
        parts.append(
            f'<line x1="{_PAD}" y1="{y(soft):.1f}" x2="{_W - _PAD}" y2="{y(soft):.1f}"'
            ' stroke="#edc948" stroke-dasharray="2 3"/>'
        )
    parts += [
        f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>',
        f'<line x1="{last_x:.1f}" y1="{last_y:.1f}" x2="{x(status.end):.1f}"'
        f' y2="{y(status.forecast):.1f}" stroke="{colour}" stroke-dasharray="1 3"/>',
        f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - _PAD}" y2="{_H - _PAD}" stroke="#999"/>',
        f'<text x="{_PAD}" y="{_H - 8}" font-size="10">{_e(status.period)}</text>',
        "</svg>",
    ]
    return "".join(parts)


def render_burndown(report: BudgetReport) -> str:
    """An HTML section: one chart per budget and owner (solid: spend so far; dotted: the
    forecast to the period's end at the current rate; dashed: limit and soft threshold)."""
    if not report.rows:
        return "<h2>Budgets</h2><p>No budgets.</p>"
    out = ["<h2>Budgets: burn-down</h2>"]
    for status in report.rows:
        used = "-" if status.share is None else f"{status.share * 100:.1f}%"
        out.append(
            f'<div class="budget"><h3>{_e(status.budget.name)} · {_e(status.owner_text)}'
            f' · <span class="{_e(status.state)}">{_e(status.state)}</span></h3>'
            f'<p class="sub">spent {_e(status.spent)} of {_e(status.budget.limit)} USD'
            f" ({_e(used)}); forecast {_e(status.forecast)} USD by the end of"
            f" {_e(status.period)}</p>{_chart(status)}</div>"
        )
    return "".join(out)


def burndown_section(store: Any) -> str:
    """The budgets section of the HTML report, from ``store``; empty without
    ``$OWNERSHIP_CTX_BUDGETS``. A bad budget file shows as a note, never fails the report."""
    path = os.environ.get(BUDGETS_ENV)
    if not path:
        return ""
    from .config import BudgetConfigError, load

    try:
        config = load(path)
    except BudgetConfigError as error:
        return f'<h2>Budgets</h2><p class="sub">{_e(error)}</p>'
    return render_burndown(budget_status(config.budgets, store, time.time()))
