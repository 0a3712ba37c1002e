"""Join what providers billed with what we recorded, per day x provider x model (x scope).

For each group:

- billed: the cost exports' money (OpenAI Costs, Anthropic cost report, AWS CUR) and the usage
  exports' tokens (OpenAI Usage, Anthropic usage report, Bedrock invocation logs);
- ours: the provider_call events' cost, split into attributed (an owner), unattributed, and
  of which estimated (usage estimated for a stream the caller cancelled, as in the other
  reports);
- dark spend: billed money our events never saw. With billed tokens, it is the billed cost of
  the tokens we did not record (``billed x (1 - our tokens / billed tokens)``); the rest of
  the gap is price drift (our list price against the invoice). Without billed tokens the whole
  positive gap is dark. Each dark row names where the bill says it came from (project /
  workspace / account, API key, IAM identity) so someone can go and fix it;
- ours only: spend we recorded on a day the bill covers but the bill does not have.

Bedrock invocation logs are matched per request (``requestId`` = our ``provider_request_id``);
requests only the logs have are dark, priced from the price table (marked estimated).

Grain: model when the provider's bill names models (CUR does not: Bedrock compares per day
and account); scope (OpenAI project) when our events carry one. Groups are pure Python over
two GROUP BY queries: the bill rows, and our daily rollup (``rollup_daily``), so a month of
millions of calls costs as much as its groups, not its calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Iterable
from decimal import Decimal
from typing import Any, Final

from ..store.bills import BillStore

__all__ = ["Group", "Reconciliation", "reconcile"]

_COST_SOURCES: Final = {
    "openai-costs": "openai",
    "anthropic-cost": "anthropic",
    "aws-cur": "aws.bedrock",
}
_USAGE_SOURCES: Final = {
    "openai-usage": "openai",
    "anthropic-usage": "anthropic",
    "bedrock-logs": "aws.bedrock",
}
_DAY: Final = 86400


@dataclasses.dataclass
class Group:
    day: str
    provider: str
    model: str
    scope: str
    billed_cost: Decimal | None = None
    billed_tokens: int | None = None
    billed_requests: int | None = None
    ours_cost: Decimal = Decimal(0)
    attributed: Decimal = Decimal(0)
    unattributed: Decimal = Decimal(0)
    estimated: Decimal = Decimal(0)
    ours_tokens: int = 0
    ours_calls: int = 0
    unpriced_calls: int = 0
    dark: Decimal = Decimal(0)
    drift: Decimal | None = None  # billed cost of our tokens minus our cost: + we under-price
    ours_only: Decimal = Decimal(0)
    where: list[str] = dataclasses.field(default_factory=list)
    status: str = ""

    def key(self) -> tuple[str, str, str, str]:
        return (self.day, self.provider, self.model, self.scope)


@dataclasses.dataclass
class Reconciliation:
    start_day: str
    end_day: str
    groups: list[Group]
    requests: list[dict[str, Any]]  # Bedrock per-request matching, aggregated
    drift: list[dict[str, Any]]
    notes: list[str]
    threshold: Decimal | None = None

    @property
    def billed(self) -> Decimal:
        return sum((g.billed_cost or Decimal(0) for g in self.groups), Decimal(0))

    @property
    def ours(self) -> Decimal:
        return sum((g.ours_cost for g in self.groups), Decimal(0))

    @property
    def dark(self) -> Decimal:
        return sum((g.dark for g in self.groups), Decimal(0))

    @property
    def ours_only(self) -> Decimal:
        return sum((g.ours_only for g in self.groups), Decimal(0))

    @property
    def unexplained_share(self) -> Decimal:
        """Dark spend as a share of billed spend: the money nobody can name an owner for."""
        billed = self.billed
        return self.dark / billed if billed > 0 else Decimal(0)

    @property
    def breached(self) -> bool:
        return self.threshold is not None and self.unexplained_share > self.threshold


def _day(epoch_day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(epoch_day))).isoformat()


def _covered(store: BillStore, start: str, end: str) -> dict[str, set[str]]:
    """provider -> the days its cost exports cover (a day billed at zero is still covered)."""
    out: dict[str, set[str]] = defaultdict(set)
    for source, first, last in store.import_periods(start, end):
        provider = _COST_SOURCES.get(source)
        if provider is None:
            continue
        day = max(dt.date.fromisoformat(first), dt.date.fromisoformat(start))
        stop = min(dt.date.fromisoformat(last), dt.date.fromisoformat(end))
        while day < stop:
            out[provider].add(day.isoformat())
            day += dt.timedelta(days=1)
    return out


# -- the join ---------------------------------------------------------------------------------

Pricer = Callable[[str, str, int, int, int, int, str], Decimal | None]


def reconcile(
    store: BillStore,
    start: int,
    end: int,
    *,
    threshold: Decimal | None = None,
    price: Pricer | None = None,
) -> Reconciliation:
    """Reconcile the whole UTC days in ``[start, end)`` (epoch seconds, widened to days)."""
    first, stop = start // _DAY * _DAY, -(-end // _DAY) * _DAY
    start_day, end_day = _day(first // _DAY), _day(stop // _DAY)
    notes: list[str] = []
    bills = store.bill_groups(start_day, end_day)
    events = store.event_groups(first, stop)
    covered = _covered(store, start_day, end_day)

    cost_has_model: dict[str, bool] = {}
    billed_scopes: set[str] = set()
    for b in bills:
        provider = _COST_SOURCES.get(b.source)
        if provider is not None:
            cost_has_model[provider] = cost_has_model.get(provider, False) or b.model != ""
            if b.scope:
                billed_scopes.add(provider)
    # Per scope only where both sides know it (an export not grouped by project, or events
    # from clients without a project, would split one spend into "dark" and "ours only").
    scoped = {e.provider for e in events if e.scope} & billed_scopes

    def grain(day: str, provider: str, model: str, scope: str) -> tuple[str, str, str, str]:
        by_model = cost_has_model.get(provider, True)
        return (day, provider, model if by_model else "", scope if provider in scoped else "")

    groups: dict[tuple[str, str, str, str], Group] = {}

    def group(key: tuple[str, str, str, str]) -> Group:
        found = groups.get(key)
        if found is None:
            found = groups[key] = Group(*key)
        return found

    # Where the bill says a group's spend came from: labels ranked by money, then tokens.
    where: dict[tuple[str, str, str, str], dict[str, tuple[Decimal, int]]] = defaultdict(dict)
    for b in bills:
        provider = _COST_SOURCES.get(b.source) or _USAGE_SOURCES[b.source]
        if provider == "aws.bedrock":
            label = f"account {b.scope or '?'}" + (f" {b.identity}" if b.identity else "")
        else:
            kind = "project" if provider == "openai" else "workspace"
            label = f"{kind} {b.scope or '(default)'}" + (
                f" key {b.api_key_id}" if b.api_key_id else ""
            )
            if b.line_item and provider == "openai" and b.line_item.split(",")[0] != b.model:
                label += f" ({b.line_item})"
        k = grain(b.day, provider, b.model, b.scope)
        g = group(k)
        money_, tokens = where[k].get(label, (Decimal(0), 0))
        if b.source in _COST_SOURCES and b.cost is not None:
            g.billed_cost = (g.billed_cost or Decimal(0)) + b.cost
            money_ += b.cost
        if b.source in _USAGE_SOURCES and b.tokens is not None:
            g.billed_tokens = (g.billed_tokens or 0) + b.tokens
            g.billed_requests = (g.billed_requests or 0) + b.requests
            tokens += b.tokens
        where[k][label] = (money_, tokens)
    for e in events:
        g = group(grain(e.day, e.provider, e.model, e.scope))
        g.ours_calls += e.calls
        g.ours_cost += e.cost
        g.attributed += e.attributed
        g.unattributed += e.cost - e.attributed
        g.estimated += e.estimated
        g.unpriced_calls += e.unpriced_calls
        g.ours_tokens += e.tokens

    for k, g in groups.items():
        ranked = [
            label
            for label, (cost, tokens) in sorted(
                where[k].items(), key=lambda kv: (-kv[1][0], -kv[1][1])
            )
        ]
        # "project p" says less than "project p key k": keep the most specific labels.
        g.where = [a for a in ranked if not any(b != a and b.startswith(a + " ") for b in ranked)]
        g.where = g.where[:3]
        _explain(g, covered.get(g.provider, set()))
    ordered = sorted(groups.values(), key=Group.key)
    requests = _requests(store, start_day, end_day, price, notes)
    unpriced = sum(g.unpriced_calls for g in ordered)
    if unpriced:
        notes.append(
            f"{unpriced} of our calls are unpriced (cost unknown): they count as zero on our"
            " side, so their billed cost shows up as price drift or dark spend"
        )
    if not bills:
        notes.append(
            "no bills imported for this period: ownership-ctx reconcile import KIND FILE"
            " (or reconcile fetch) first"
        )
    return Reconciliation(
        start_day, end_day, ordered, requests, _drift(ordered), notes, threshold=threshold
    )


def _explain(g: Group, covered: set[str]) -> None:
    billed = g.billed_cost
    if billed is None:
        if g.ours_cost and g.day in covered:
            g.ours_only = g.ours_cost
            g.status = "ours only"
        else:
            g.status = "tokens only" if g.billed_tokens is not None else "no bill"
        return
    if g.billed_tokens:
        coverage = min(Decimal(g.ours_tokens) / Decimal(g.billed_tokens), Decimal(1))
        g.dark = (billed * (1 - coverage)).quantize(Decimal("1e-9"))
        g.drift = billed * coverage - g.ours_cost
    else:
        g.dark = max(billed - g.ours_cost, Decimal(0))
    if g.ours_calls == 0 and billed > 0:
        g.status = "dark"
        g.dark = billed
        g.drift = None
    elif g.dark > 0:
        g.status = "partly dark"
    elif g.drift is not None and g.drift != 0:
        g.status = "price drift"
    else:
        g.status = "matched"


def _drift(groups: Iterable[Group]) -> list[dict[str, Any]]:
    """Per provider x model: what the bill charged for the tokens we recorded vs our price."""
    acc: dict[tuple[str, str], list[Decimal]] = {}
    for g in groups:
        if g.drift is None or g.billed_cost is None or not g.billed_tokens:
            continue
        a = acc.setdefault((g.provider, g.model), [Decimal(0), Decimal(0)])
        a[0] += g.ours_cost
        a[1] += g.ours_cost + g.drift  # billed cost of our tokens
    out = []
    for (provider, model), (ours, billed) in sorted(acc.items()):
        out.append(
            {
                "provider": provider,
                "model": model,
                "ours": ours,
                "billed_for_our_tokens": billed,
                "drift": (ours / billed - 1) if billed else None,
            }
        )
    return out


def _requests(
    store: BillStore, start: str, end: str, price: Pricer | None, notes: list[str]
) -> list[dict[str, Any]]:
    out = []
    for r in store.request_matches(start, end):
        estimate = None
        if not r.matched and price is not None:
            estimate = price(
                "aws.bedrock",
                r.model,
                r.input_tokens,
                r.output_tokens,
                r.cache_read_tokens,
                r.cache_write_tokens,
                r.day,
            )
        out.append(
            {
                "day": r.day,
                "model": r.model,
                "account": r.account,
                "region": r.region,
                "identity": r.identity,
                "owner_team": r.owner_team,
                "matched": r.matched,
                "requests": r.requests,
                "input_tokens": r.input_tokens,
                "output_tokens": r.output_tokens,
                "ours_cost": r.ours_cost,
                "estimated_cost": estimate,
            }
        )
    if any(not r["matched"] for r in out):
        notes.append(
            "Bedrock requests only the invocation logs have were made without instrumented"
            " code; their cost is estimated from list prices (CUR has no per-request cost)"
        )
    return out
