"""What a budget is: whose spend it limits, over which UTC period, and what happens near the end.

Standard library only. Amounts are `Decimal` dollars at the edges of the API and integer
nano-dollars (billionths, the store's unit) inside counters, so that Redis and the in-process
backend add exactly.
"""

from __future__ import annotations

import calendar
import dataclasses
import json
import math
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Final, Literal

from ..envelope import Envelope, check_field
from ..schema import money

__all__ = [
    "MATCH_FIELDS",
    "PERIODS",
    "Budget",
    "BudgetExceeded",
    "Period",
    "Refusal",
    "from_nanos",
    "period_bounds",
    "period_label",
    "to_nanos",
]

Period = Literal["day", "week", "month"]
PERIODS: Final = ("day", "week", "month")
#: Envelope fields a budget can be scoped by (tenant in its hashed form only).
MATCH_FIELDS: Final = ("owner_team", "workflow_id", "feature", "tenant")


def to_nanos(amount: Decimal) -> int:
    """Dollars -> integer nano-dollars (the store's unit, `ownership_ctx.schema.money`)."""
    nanos = money.nano_parts(amount)[1]
    if nanos is None:
        raise ValueError(f"not an amount counters can hold: {amount!r}")
    return nanos


def from_nanos(nanos: int) -> Decimal:
    return money.from_nanos(nanos)


def period_bounds(period: Period, ts: float) -> tuple[float, float]:
    """[start, end) of the UTC ``period`` (day; ISO week from Monday; calendar month) holding
    ``ts`` (epoch seconds)."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start, end = day, day + timedelta(days=1)
    elif period == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    else:
        start = day.replace(day=1)
        days = calendar.monthrange(start.year, start.month)[1]
        end = start + timedelta(days=days)
    return start.timestamp(), end.timestamp()


def period_label(period: Period, start: float) -> str:
    """``2026-11-27``, ``2026-W48`` or ``2026-11``: the period in counter keys and reports."""
    moment = datetime.fromtimestamp(start, timezone.utc)
    if period == "day":
        return moment.strftime("%Y-%m-%d")
    if period == "week":
        year, week, _ = moment.isocalendar()
        return f"{year}-W{week:02d}"
    return moment.strftime("%Y-%m")


@dataclasses.dataclass(frozen=True, slots=True)
class Budget:
    """A spend limit for the owners an envelope names.

    ``match``: envelope fields that must equal the given values (any combination of
    ``owner_team``, ``workflow_id``, ``feature``, ``tenant``; tenant as its ``h1:`` hash).
    ``each``: fields that split the budget, one limit per distinct value (``("tenant",)``:
    every tenant of the team gets its own ``limit``). A budget with neither covers all
    attributed spend. ``limit`` is the hard limit in USD; ``soft`` (optional, below
    ``limit``) the warning threshold; ``webhook`` an URL that gets a JSON POST when the soft
    threshold is crossed (once per owner and period).
    """

    name: str
    limit: Decimal
    period: Period = "month"
    match: Mapping[str, str] = dataclasses.field(default_factory=dict)
    each: tuple[str, ...] = ()
    soft: Decimal | None = None
    webhook: str | None = None

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(f"budget {self.name!r}: {problem}")
        object.__setattr__(self, "match", dict(self.match))
        object.__setattr__(self, "each", tuple(self.each))

    def problem(self) -> str | None:
        """What is wrong with this budget, in words, or None."""
        if not self.name or not all(c.isalnum() or c in "._-" for c in self.name):
            return "name must be letters, digits, '.', '_' or '-'"
        if self.period not in PERIODS:
            return "period must be day, week or month"
        for name, amount in (("limit", self.limit), ("soft", self.soft)):
            if name == "soft" and amount is None:
                continue
            if not isinstance(amount, Decimal) or money.nano_parts(amount)[1] is None:
                return f"{name} must be an amount in USD"
            if amount < 0:
                return f"{name} must be >= 0"
        if self.soft is not None and self.soft > self.limit:
            return "soft must not exceed limit"
        for name, value in self.match.items():
            if name not in MATCH_FIELDS:
                return f"cannot match on {name!r} (fields: {', '.join(MATCH_FIELDS)})"
            if not isinstance(value, str):
                return f"{name}: must be text"
            field_problem = check_field(name, value)
            if field_problem is not None:
                return f"{name}: {field_problem.detail}"
        for name in self.each:
            if name not in MATCH_FIELDS or name in self.match:
                return f"each: {name!r} must be one of {', '.join(MATCH_FIELDS)} not matched"
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            return "webhook must be an http:// or https:// URL"
        return None

    def owner_of(self, envelope: Envelope) -> str | None:
        """The counter's owner part for ``envelope`` (``""`` without ``each``), or None when
        the budget does not apply to it. Only attributed, stamped envelopes count: spend that
        has no owner is coverage's problem, not a budget's."""
        for name, value in self.match.items():
            if getattr(envelope, name) != value:
                return None
        if not self.each:
            return ""
        values = [getattr(envelope, name) for name in self.each]
        if any(v is None for v in values):
            return None
        return "|".join(values)

    def owner_fields(self, owner: str) -> dict[str, str]:
        """The envelope fields that identify one owner of this budget."""
        fields = dict(self.match)
        if self.each:
            fields.update(zip(self.each, owner.split("|"), strict=True))
        return fields


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """Why a unit of work was refused: the budget and when its period ends. Safe to show to
    the caller: it holds no amounts, so nobody learns another owner's spend."""

    budget: str
    period: Period
    resets_at: float  # epoch seconds: the period's end (Retry-After)
    owner: Mapping[str, str]
    reason: Literal["spent", "unavailable"] = "spent"

    def detail(self) -> str:
        if self.reason == "unavailable":
            return f"budget {self.budget!r} cannot be checked now (its counters are unreachable)"
        return f"budget {self.budget!r} ({self.period}) is spent; it resets at {self.resets()}"

    def retry_after(self, now: float) -> str:
        """Seconds until the period ends, for a ``Retry-After`` header (at least 1)."""
        return str(max(1, math.ceil(self.resets_at - now)))

    def problem_body(self, trace_id: str | None = None) -> bytes:
        """An RFC 9457 ``application/problem+json`` body for a 429: the budget, its period
        and when it resets; never any amount."""
        document = {
            "type": "about:blank",
            "title": "Budget exceeded",
            "status": 429,
            "detail": self.detail(),
            "budget": self.budget,
            "period": self.period,
            "resets_at": self.resets(),
            "trace_id": trace_id,
        }
        return json.dumps(document).encode()

    def resets(self) -> str:
        """The period's end, RFC 3339 UTC."""
        return datetime.fromtimestamp(self.resets_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class BudgetExceeded(Exception):
    """Raised where work is refused (a publish, a provider call) for an owner over a hard
    limit. ``refusal`` names the budget and when it resets."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.detail())
        self.refusal = refusal

    def __reduce__(self) -> tuple[type[BudgetExceeded], tuple[Refusal]]:
        return type(self), (self.refusal,)  # pickles (result backends) with its refusal
