"""Anomaly review: why a team's spend changed between two periods.

Spend is written as a product of factors,

    spend = requests x calls/request x sum over models m of (share_m x tokens/call_m x price_m)

where ``share_m`` is model m's share of the calls (a model is provider/model@tier, so a move
to a priority tier is a mix change; only billed calls count: a failed attempt that reported no
usage is free and an application cache hit is no call, so neither moves calls per request or
the mix), requests are user actions, ``tokens/call_m`` its (input + output) tokens per call and
``price_m`` its spend per token. The change is split by *sequential substitution* in a fixed
order — traffic volume, calls per request (retries, fan-out), model/tier mix, tokens per call,
price — each factor switched from its baseline to its current value in turn. The steps
telescope, and every step is an exact `Decimal` subtraction, so the contributions add up
exactly to the total change. Spend the product cannot see (a cost reported with no token
counts) is its own ``unmodeled`` line, so that nothing is silently folded into the others.

Undefined factors (no calls in a period, a model that appears or disappears, a model with no
tokens) take the other period's value, which moves the whole effect into the step where the
factor becomes defined (a new model's spend shows up as mix). Without request events in a
period, traffic is measured in calls and calls/request is 1 in both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal, localcontext
from typing import Final

from ownership_ctx.store.api import EventQueries

from .rendering import Column, Document, Table, money_text
from .timerange import TimeRange

__all__ = ["FACTORS", "Anomaly", "ModelStats", "PeriodStats", "anomaly", "decompose"]

FACTORS: Final = ("volume", "calls_per_request", "mix", "tokens_per_call", "price", "unmodeled")
_PRECISION: Final = 90
# Intermediate products are rounded to a pico-dollar: the contributions then have few enough
# digits to add up exactly even in Decimal's default 28-digit context for any real amounts
# (extreme synthetic ratios may need a wider context to sum, never to be exact).
_QUANTUM: Final = Decimal(1).scaleb(-12)


@dataclasses.dataclass(frozen=True)
class ModelStats:
    calls: int
    tokens: int
    spend: Decimal


@dataclasses.dataclass(frozen=True)
class PeriodStats:
    requests: int
    models: Mapping[str, ModelStats]
    retries: int = 0
    fallbacks: int = 0
    unpriced_calls: int = 0

    @property
    def calls(self) -> int:
        return sum(m.calls for m in self.models.values())

    @property
    def tokens(self) -> int:
        return sum(m.tokens for m in self.models.values())

    @property
    def spend(self) -> Decimal:
        return sum((m.spend for m in self.models.values()), Decimal(0))


@dataclasses.dataclass(frozen=True)
class Decomposition:
    basis: str  # "requests" or "calls"
    contributions: dict[str, Decimal]
    change: Decimal


def _pick(mine: Decimal | None, other: Decimal | None) -> Decimal:
    if mine is not None:
        return mine
    return other if other is not None else Decimal(0)


def decompose(base: PeriodStats, cur: PeriodStats) -> Decomposition:
    """Contributions of each factor to ``cur.spend - base.spend``; they sum to it exactly."""
    with localcontext() as ctx:
        ctx.prec = _PRECISION
        basis = "requests" if base.requests > 0 and cur.requests > 0 else "calls"
        r = {"b": Decimal(base.requests if basis == "requests" else base.calls)}
        r["c"] = Decimal(cur.requests if basis == "requests" else cur.calls)

        def per_request(p: PeriodStats) -> Decimal | None:
            if basis == "calls":
                return Decimal(1)
            return Decimal(p.calls) / p.requests

        k = {"b": per_request(base), "c": per_request(cur)}
        keys = sorted(set(base.models) | set(cur.models))
        raw: dict[str, dict[str, dict[str, Decimal | None]]] = {}
        for side, p in (("b", base), ("c", cur)):
            total_calls = p.calls
            raw[side] = {}
            for key in keys:
                m = p.models.get(key, ModelStats(0, 0, Decimal(0)))
                raw[side][key] = {
                    "w": Decimal(m.calls) / total_calls if total_calls else None,
                    "t": Decimal(m.tokens) / m.calls if m.calls else None,
                    "p": m.spend / m.tokens if m.tokens else None,
                }
        factor = {
            side: {
                key: {f: _pick(raw[side][key][f], raw[other][key][f]) for f in ("w", "t", "p")}
                for key in keys
            }
            for side, other in (("b", "c"), ("c", "b"))
        }

        def value(rs: str, ks: str, ws: str, ts: str, ps: str) -> Decimal:
            kk = _pick(k[ks], k["c" if ks == "b" else "b"])
            inner = sum(
                (
                    factor[ws][key]["w"] * factor[ts][key]["t"] * factor[ps][key]["p"]
                    for key in keys
                ),
                Decimal(0),
            )
            return (r[rs] * kk * inner).quantize(_QUANTUM)

        v0 = value("b", "b", "b", "b", "b")
        v1 = value("c", "b", "b", "b", "b")
        v2 = value("c", "c", "b", "b", "b")
        v3 = value("c", "c", "c", "b", "b")
        v4 = value("c", "c", "c", "c", "b")
        v5 = value("c", "c", "c", "c", "c")
        s0, s1 = base.spend, cur.spend
        contributions = {
            "volume": v1 - v0,
            "calls_per_request": v2 - v1,
            "mix": v3 - v2,
            "tokens_per_call": v4 - v3,
            "price": v5 - v4,
            "unmodeled": (s1 - v5) - (s0 - v0),
        }
        change = s1 - s0
    return Decomposition(basis, contributions, change)


def period_stats(source: EventQueries, team: str, period: TimeRange) -> PeriodStats:
    """A team's period from the rollups, per provider/model@tier."""
    rows = source.rollups(
        period.start,
        period.end,
        group_by=("provider", "model", "service_tier"),
        where={"owner_team": team},
    )
    models: dict[str, ModelStats] = {}
    requests = retries = fallbacks = unpriced = 0
    for row in rows:
        requests += row.user_actions  # a user action, however many services it crossed
        retries += row.retries
        fallbacks += row.fallbacks
        unpriced += row.unpriced_calls
        if row.calls == 0:
            continue  # requests only, failed attempts (free) or cache hits: no model to mix
        g = row.group
        key = f"{g['provider'] or '?'}/{g['model'] or '?'}" + (
            f"@{g['service_tier']}" if g["service_tier"] else ""
        )
        tokens = row.input_tokens + row.output_tokens
        models[key] = ModelStats(row.calls, tokens, row.cost)
    return PeriodStats(requests, models, retries, fallbacks, unpriced)


@dataclasses.dataclass(frozen=True)
class Anomaly:
    team: str
    baseline_range: TimeRange
    current_range: TimeRange
    baseline: PeriodStats
    current: PeriodStats
    decomposition: Decomposition

    def document(self) -> Document:
        return _document(self)


def anomaly(source: EventQueries, team: str, baseline: TimeRange, current: TimeRange) -> Anomaly:
    base = period_stats(source, team, baseline)
    cur = period_stats(source, team, current)
    return Anomaly(team, baseline, current, base, cur, decompose(base, cur))


def _ratio(a: Decimal | int, b: Decimal | int, places: str = "0.01") -> Decimal | None:
    return (Decimal(a) / Decimal(b)).quantize(Decimal(places)) if b else None


def _text(value: Decimal | None) -> str:
    return "-" if value is None else str(value)


def _document(result: Anomaly) -> Document:
    b, c, d = result.baseline, result.current, result.decomposition

    def price(p: PeriodStats) -> str:
        if not p.tokens:
            return "- (no tokens)"
        return f"{(p.spend * 1_000_000 / p.tokens).quantize(Decimal('0.0001'))} USD/Mtok blended"

    def traffic(p: PeriodStats) -> str:
        if d.basis == "requests":
            return f"{p.requests} requests"
        # Measured in calls because one of the periods has no request events: say which.
        return f"{p.calls} calls" + ("" if p.requests else " (no request events)")

    def top(p: PeriodStats) -> str:
        if not p.calls:
            return "-"
        best = max(p.models.items(), key=lambda kv: kv[1].calls)
        return f"{best[0]} {_ratio(best[1].calls * 100, p.calls, '0.1')}%"

    evidence = {
        "volume": (traffic(b), traffic(c)),
        "calls_per_request": (
            f"{_ratio(b.calls, b.requests) if d.basis == 'requests' else 1}"
            f" (retries {b.retries}, fallbacks {b.fallbacks})",
            f"{_ratio(c.calls, c.requests) if d.basis == 'requests' else 1}"
            f" (retries {c.retries}, fallbacks {c.fallbacks})",
        ),
        "mix": (top(b), top(c)),
        "tokens_per_call": (_text(_ratio(b.tokens, b.calls)), _text(_ratio(c.tokens, c.calls))),
        "price": (price(b), price(c)),
        "unmodeled": ("cost without tokens", "cost without tokens"),
    }
    rows = [
        {
            "factor": name,
            "baseline": evidence[name][0],
            "current": evidence[name][1],
            "contribution": d.contributions[name],
            "share": (d.contributions[name] / d.change).quantize(Decimal("0.0001"))
            if d.change
            else None,
        }
        for name in FACTORS
        if name != "unmodeled" or d.contributions[name]
    ]
    factors = Table(
        "factors",
        f"Spend change of {result.team}: {money_text(b.spend)} -> {money_text(c.spend)} USD",
        [
            Column("factor", "factor"),
            Column("baseline", "baseline"),
            Column("current", "current"),
            Column("contribution", "contribution USD", "money"),
            Column("share", "of change", "pct"),
        ],
        rows,
        {"factor": "total change", "contribution": d.change},
    )
    keys = sorted(set(b.models) | set(c.models))
    zero = ModelStats(0, 0, Decimal(0))
    models = Table(
        "models",
        "Per model/tier",
        [
            Column("model", "provider/model@tier"),
            Column("calls_b", "calls (base)", "int"),
            Column("calls_c", "calls (cur)", "int"),
            Column("tpc_b", "tok/call (base)", "num"),
            Column("tpc_c", "tok/call (cur)", "num"),
            Column("spend_b", "spend base", "money"),
            Column("spend_c", "spend cur", "money"),
        ],
        [
            {
                "model": key,
                "calls_b": b.models.get(key, zero).calls,
                "calls_c": c.models.get(key, zero).calls,
                "tpc_b": _ratio(b.models.get(key, zero).tokens, b.models.get(key, zero).calls),
                "tpc_c": _ratio(c.models.get(key, zero).tokens, c.models.get(key, zero).calls),
                "spend_b": b.models.get(key, zero).spend,
                "spend_c": c.models.get(key, zero).spend,
            }
            for key in keys
        ],
    )
    headline = [
        f"team {result.team}: baseline {result.baseline_range.label()},"
        f" current {result.current_range.label()}",
        f"spend {money_text(b.spend)} -> {money_text(c.spend)} USD"
        f" (change {money_text(d.change)}); contributions add up exactly to the change",
    ]
    notes = []
    if b.unpriced_calls or c.unpriced_calls:
        notes.append(
            f"unpriced calls (no cost, not in spend): baseline {b.unpriced_calls},"
            f" current {c.unpriced_calls}"
        )
    if d.basis == "calls":
        which = [name for name, p in (("baseline", b), ("current", c)) if not p.requests]
        notes.append(
            f"the {' and '.join(which)} period{'s have' if len(which) > 1 else ' has'} no"
            " request events: traffic is measured in calls in both"
        )
    data = {
        "team": result.team,
        "baseline_range": result.baseline_range.as_json(),
        "current_range": result.current_range.as_json(),
        "baseline_spend": b.spend,
        "current_spend": c.spend,
        "change": d.change,
        "basis": d.basis,
        "contributions": d.contributions,
        "baseline": _period_json(b),
        "current": _period_json(c),
    }
    return Document("anomaly", "ownership-ctx anomaly", headline, [factors, models], notes, data)


def _period_json(p: PeriodStats) -> dict[str, object]:
    return {
        "requests": p.requests,
        "calls": p.calls,
        "tokens": p.tokens,
        "spend": p.spend,
        "retries": p.retries,
        "fallbacks": p.fallbacks,
        "unpriced_calls": p.unpriced_calls,
        "models": {k: dataclasses.asdict(m) for k, m in p.models.items()},
    }
