"""``ownership-ctx budgets``: where each budget stands, as a table / CSV / JSON document."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..budgets.report import BudgetReport
from .rendering import Column, Document, Table

__all__ = ["budgets_document"]


def budgets_document(report: BudgetReport) -> Document:
    at = datetime.fromtimestamp(report.at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    over = report.over
    budgets, owners = len(report.budgets), len(report.rows)
    headline = [
        f"{budgets} budget{'s' * (budgets != 1)}, {owners} owner{'s' * (owners != 1)};"
        f" {len(over)} over the hard limit"
    ]
    headline += [f"  over: {r.budget.name} ({r.owner_text})" for r in over]
    columns = [
        Column("budget", "budget"),
        Column("owner", "owner"),
        Column("period", "period"),
        Column("spent", "spent USD", "money"),
        Column("limit", "limit USD", "money"),
        Column("used", "used", "pct"),
        Column("forecast", "forecast USD", "money"),
        Column("state", "state"),
    ]
    rows: list[dict[str, Any]] = [
        {
            "budget": r.budget.name,
            "owner": r.owner_text,
            "period": r.period,
            "spent": r.spent,
            "limit": r.budget.limit,
            "used": r.share,
            "forecast": r.forecast,
            "state": r.state,
        }
        for r in report.rows
    ]
    shown = {r.budget.name for r in report.rows}
    notes = [
        f"{b.name}: no owner has spend this period (split by {', '.join(b.each)})"
        for b in report.budgets
        if b.each and b.name not in shown
    ]
    if any(r.budget.each for r in report.rows):
        notes.append("budgets split by owner list only the owners with spend this period")
    return Document(
        report="budgets",
        title=f"Budgets at {at}",
        headline=headline,
        tables=[Table("budgets", "Budgets in their current period", columns, rows)],
        notes=notes,
        data={"at": at, "budgets": rows, "over": [r for r in rows if r["state"] == "over"]},
    )
