"""Small helpers shared by the budget tests (imported, never collected)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ownership_ctx import Envelope, new_trace_id
from ownership_ctx.budgets import Budget

LIMIT = Decimal("1.00")


def envelope(**fields: Any) -> Envelope:
    values = {"owner_team": "support", "workflow_id": "ticket-triage", "feature": "summarize"}
    values.update(fields)
    return Envelope(trace_id=new_trace_id(), **values)


def team_budget(limit: Decimal = LIMIT, **kwargs: Any) -> Budget:
    return Budget("support-daily", limit, "day", {"owner_team": "support"}, **kwargs)


class Clock:
    """A settable clock (``clock()`` -> seconds) for periods and the refresh interval."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
