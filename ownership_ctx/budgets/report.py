"""Where each budget stands, from the event store: spend, share used, forecast, who is over.

Pure functions of the store's hourly rollups (never the live counters: a report reads what
was recorded, like every other report). ``ownership-ctx budgets`` prints `budget_status`;
`ownership_ctx.budgets.html` draws its burn-down; `ownership_ctx.reports.budgets` renders it as a
table.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Literal

from .model import Budget, period_bounds, period_label
from .rebuild import Rollups

__all__ = ["BudgetReport", "BudgetStatus", "budget_status"]

State = Literal["ok", "soft", "over"]
_HOUR = 3600


@dataclasses.dataclass(frozen=True)
class BudgetStatus:
    """One owner of one budget in its current period."""

    budget: Budget
    owner: dict[str, str]
    period: str
    start: float
    end: float
    spent: Decimal
    share: Decimal | None  # of the limit (None for a zero limit)
    forecast: Decimal  # spend at the period's end at the rate so far
    state: State
    hourly: list[tuple[int, Decimal]]  # (hour, spend in that hour), for the burn-down

    @property
    def owner_text(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.owner.items()) or "(everyone)"


@dataclasses.dataclass(frozen=True)
class BudgetReport:
    at: float
    rows: list[BudgetStatus]
    budgets: tuple[Budget, ...] = ()  # every budget asked about, with rows or not

    @property
    def over(self) -> list[BudgetStatus]:
        return [r for r in self.rows if r.state == "over"]


def budget_status(budgets: Sequence[Budget], store: Rollups, at: float) -> BudgetReport:
    """Each budget's owners in the period holding ``at`` (epoch seconds)."""
    rows: list[BudgetStatus] = []
    for budget in budgets:
        start, end = period_bounds(budget.period, at)
        group_by = (*budget.each, "hour")
        found = store.rollups(start, at + _HOUR, group_by=group_by, where=dict(budget.match))
        hourly: dict[tuple[Any, ...], dict[int, Decimal]] = defaultdict(
            lambda: defaultdict(Decimal)
        )
        for row in found:
            owner = tuple(row.group.get(name) for name in budget.each)
            if any(v is None for v in owner):
                continue
            hourly[owner][int(row.group["hour"])] += Decimal(row.cost)
        if not budget.each and () not in hourly:
            hourly[()] = defaultdict(Decimal)
        for owner, hours in sorted(hourly.items(), key=lambda item: str(item[0])):
            spent = sum(hours.values(), Decimal(0))
            elapsed = max(at - start, _HOUR)
            forecast = (spent * Decimal(end - start) / Decimal(elapsed)).quantize(
                Decimal("0.000001")
            )
            share = spent / budget.limit if budget.limit > 0 else None
            state: State = "ok"
            if spent >= budget.limit:
                state = "over"
            elif budget.soft is not None and spent >= budget.soft:
                state = "soft"
            fields = budget.owner_fields("|".join(str(v) for v in owner))
            rows.append(
                BudgetStatus(
                    budget,
                    fields,
                    period_label(budget.period, start),
                    start,
                    end,
                    spent,
                    share,
                    forecast,
                    state,
                    sorted(hours.items()),
                )
            )
    return BudgetReport(at, rows, tuple(budgets))
