"""One request start to finish: its hops, every provider attempt with its cost, the total.

The request's cost is the sum of its child calls; calls without a cost (failed attempts that
reported no usage, unpriced models) are listed and counted, never guessed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from ownership_ctx.schema.money import to_decimal
from ownership_ctx.store.api import EventQueries

from .rendering import Column, Document, Table, money_text
from .timerange import UsageError, stamp
from .tracing import REQUIRED, Loss, first_loss, steps_from_events

__all__ = ["CallLine", "HopLine", "TraceReport", "trace_report"]

_TRACE_ID: Final = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class HopLine:
    at_ms: float  # since the trace's first event
    kind: str  # "hop" or "request"
    hop: str
    unit: str
    outcome: str | None
    fields: tuple[str, ...]
    missing: tuple[str, ...]
    status: Any  # HTTP status of a request event


@dataclasses.dataclass(frozen=True)
class CallLine:
    at_ms: float
    call_id: str
    attempt: int
    status: str
    provider: str
    model: str  # served (requested when the response did not say)
    requested_model: str
    service_tier: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    latency_ms: float | None
    cost: Decimal | None
    cost_source: str | None
    unpriced_reason: str | None
    fallback_of: str | None
    app_cache_hit: bool
    cost_avoided: Decimal | None
    owner_team: str | None
    usage_status: str | None = None  # "estimated": a cancelled stream, usage estimated


@dataclasses.dataclass(frozen=True)
class TraceReport:
    trace_id: str
    started: str
    owner: dict[str, str | None]
    hops: list[HopLine]
    calls: list[CallLine]
    total: Decimal
    unpriced_calls: int
    loss: Loss | None
    other_events: int

    @property
    def found(self) -> bool:
        return bool(self.hops or self.calls or self.other_events)

    def document(self) -> Document:
        return _document(self)


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    # Event bodies are whatever was emitted: a number where a name belongs is shown as text.
    return None if value is None or value == "" else str(value)


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _unpriced_reason(event: Mapping[str, Any]) -> str | None:
    if to_decimal(event.get("cost")) is not None:
        return None
    stored = _str(event.get("unpriced_reason"))
    if stored is not None:
        return stored
    # Stored before events said why.
    if event.get("status") != "ok":
        return "failed attempt"
    return "no usage reported" if event.get("gen_ai.usage.input_tokens") is None else "unpriced"


def trace_report(source: EventQueries, trace_id: str) -> TraceReport:
    trace_id = trace_id.strip().lower()
    if not _TRACE_ID.fullmatch(trace_id):
        raise UsageError(f"a trace id is 32 lowercase hex characters, not {trace_id!r}")
    events = source.events_by_trace(trace_id)
    return build(trace_id, events)


def build(trace_id: str, events: Sequence[Mapping[str, Any]]) -> TraceReport:
    times = [t for t in (_float(e.get("ts")) for e in events) if t is not None]
    first = min(times, default=0.0)

    def at(e: Mapping[str, Any]) -> float:
        return round(((_float(e.get("ts")) or first) - first) * 1000, 3)

    hops, calls, others = [], [], 0
    owner: dict[str, str | None] = {f: None for f in (*REQUIRED, "tenant")}
    for e in events:
        kind = e.get("kind")
        if kind in ("hop", "request"):
            hops.append(
                HopLine(
                    at(e),
                    str(kind),
                    str(e.get("hop") or "http"),
                    str(e.get("unit") or e.get("route") or "?"),
                    None if e.get("outcome") is None else str(e.get("outcome")),
                    tuple(str(f) for f in e.get("fields_present") or ()),
                    tuple(str(f) for f in e.get("missing") or ()),
                    e.get("status") if kind == "request" else None,
                )
            )
            if kind == "request":
                for f in owner:
                    owner[f] = owner[f] or _str(e.get(f))
        elif kind == "provider_call":
            requested = str(e.get("gen_ai.request.model") or "?")
            calls.append(
                CallLine(
                    at(e),
                    str(e.get("call_id") or ""),
                    _int(e.get("attempt")) or 1,
                    str(e.get("status") or "?"),
                    str(e.get("gen_ai.provider.name") or "?"),
                    str(e.get("gen_ai.response.model") or requested),
                    requested,
                    _str(e.get("service_tier")),
                    _int(e.get("gen_ai.usage.input_tokens")),
                    _int(e.get("gen_ai.usage.output_tokens")),
                    _int(e.get("gen_ai.usage.cache_read.input_tokens")),
                    _float(e.get("latency_ms")),
                    to_decimal(e.get("cost")),
                    _str(e.get("cost_source")),
                    _unpriced_reason(e),
                    _str(e.get("fallback_of")),
                    bool(e.get("app_cache_hit")),
                    to_decimal(e.get("cost_avoided")),
                    _str(e.get("owner_team")),
                    usage_status=_str(e.get("usage_status")),
                )
            )
            for f in owner:
                owner[f] = owner[f] or _str(e.get(f))
        else:
            others += 1
    total = sum((c.cost for c in calls if c.cost is not None), Decimal(0))
    unpriced = sum(1 for c in calls if c.cost is None)
    loss = first_loss(steps_from_events(events), REQUIRED) if events else None
    return TraceReport(trace_id, stamp(first), owner, hops, calls, total, unpriced, loss, others)


def _document(result: TraceReport) -> Document:
    owner = ", ".join(f"{k}={v or '(none)'}" for k, v in result.owner.items())
    headline = [
        f"trace {result.trace_id} started {result.started}",
        f"owner: {owner}",
        f"total {money_text(result.total)} USD over {len(result.calls)} provider attempt(s)"
        + (f"; {result.unpriced_calls} without a cost" if result.unpriced_calls else ""),
    ]
    if result.loss is not None:
        headline.append(
            f"fields lost at {result.loss.hop} {result.loss.unit}: {result.loss.reason}"
        )
    calls = Table(
        "calls",
        "Provider attempts (children)",
        [
            Column("at_ms", "+ms", "num"),
            Column("call", "call"),
            Column("attempt", "try", "int"),
            Column("status", "status"),
            Column("provider", "provider"),
            Column("model", "model"),
            Column("service_tier", "tier"),
            Column("input_tokens", "in tok", "int"),
            Column("output_tokens", "out tok", "int"),
            Column("cache_read_tokens", "cached", "int"),
            Column("latency_ms", "ms", "num"),
            Column("cost", "cost USD", "money"),
            Column("note", "note"),
        ],
        [
            {
                **dataclasses.asdict(c),
                "call": c.call_id,
                "note": _note(c),
            }
            for c in result.calls
        ],
        {"call": "total", "cost": result.total},
    )
    hops = Table(
        "hops",
        "Hops",
        [
            Column("at_ms", "+ms", "num"),
            Column("kind", "event"),
            Column("hop", "hop"),
            Column("unit", "route/task/actor"),
            Column("outcome", "outcome"),
            Column("status", "status"),
            Column("fields", "fields present"),
            Column("missing", "missing"),
        ],
        [dataclasses.asdict(h) for h in result.hops],
    )
    data = {
        "trace_id": result.trace_id,
        "found": result.found,
        "started": result.started,
        "owner": result.owner,
        "total": result.total,
        "unpriced_calls": result.unpriced_calls,
        "hops": result.hops,
        "calls": result.calls,
        "loss": result.loss,
    }
    notes = [] if result.found else [f"no events stored for trace {result.trace_id}"]
    return Document("trace", "ownership-ctx trace", headline, [calls, hops], notes, data)


def _note(c: CallLine) -> str:
    parts = []
    if c.model != c.requested_model:
        parts.append(f"asked {c.requested_model}")
    if c.fallback_of:
        parts.append(f"fallback of {c.fallback_of}")
    if c.app_cache_hit:
        parts.append(f"app cache hit, avoided {money_text(c.cost_avoided)}")
    if c.cost is None:
        parts.append(f"no cost ({c.unpriced_reason or 'unpriced'})")
    elif c.cost_source and c.cost_source != "price_table":
        parts.append(c.cost_source)
    if c.usage_status == "estimated":
        parts.append("estimated: stream cancelled, usage estimated")
    return "; ".join(parts)
