"""Audit: the seven chargeback-readiness questions, answered from the N most recent traces.

The sample is the N most recent traces that reached a provider (that is where money goes).
Each question is answered with the evidence behind it; every failing trace names the first hop
where its fields disappeared. The verdict is *ready* when at least six questions hold. With no
traces to look at, questions 1-6 do not hold: there is no evidence.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from ownership_ctx.schema.money import to_decimal
from ownership_ctx.store.api import EventQueries

from .coverage import coverage
from .rendering import Column, Document, Table, money_text
from .timerange import TimeRange, stamp
from .tracing import ORIGIN_HOPS, REQUIRED, Loss, first_loss, steps_from_events

__all__ = ["QUESTIONS", "Answer", "Audit", "TraceAudit", "audit", "recent_traces"]

QUESTIONS: Final = (
    "Every request traces from the user action to every provider call",
    "The same trace id appears on gateway, queue, worker and provider events",
    "Owner team, workflow and feature are on every provider event",
    "Tenant is identifiable without personal data (only hashed forms stored)",
    "Request cost can be rebuilt from tokens and prices",
    "Retries, fallbacks and cache effects are explained",
    "Unattributed spend is under the threshold",
)
READY_AT: Final = 6
_HASHED: Final = re.compile(r"h\d+:[0-9a-f]{16,128}")
_PRICED: Final = frozenset({"price_table", "override", "provider"})
Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Answer:
    number: int
    question: str
    holds: bool
    evidence: str
    failing_traces: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class TraceAudit:
    trace_id: str
    started: str
    path: str
    calls: int
    spend: Decimal
    failed: tuple[int, ...]  # question numbers this trace fails
    loss: Loss | None


@dataclasses.dataclass(frozen=True)
class Audit:
    range: TimeRange
    sample: int
    traces: list[TraceAudit]
    untraced_calls: int
    answers: list[Answer]
    threshold: Decimal
    unattributed_share: Decimal

    @property
    def held(self) -> int:
        return sum(a.holds for a in self.answers)

    @property
    def ready(self) -> bool:
        return self.held >= READY_AT

    def document(self) -> Document:
        return _document(self)


def recent_traces(source: EventQueries, time_range: TimeRange, n: int) -> tuple[list[str], float]:
    """The ``n`` most recent trace ids with provider calls, newest first, and the time of the
    oldest call looked at (cost grows with ``n``)."""
    return source.recent_traces(time_range.start, time_range.end, n)


@dataclasses.dataclass
class _Check:
    failing: list[str] = dataclasses.field(default_factory=list)
    counts: Counter[str] = dataclasses.field(default_factory=Counter)

    def fail(self, trace: str) -> None:
        if trace not in self.failing:
            self.failing.append(trace)


def audit(
    source: EventQueries,
    time_range: TimeRange,
    *,
    sample: int = 10,
    threshold: Decimal = Decimal("0.02"),
    progress: Progress | None = None,
) -> Audit:
    say = progress or (lambda _: None)
    say("finding recent traces")
    traces, oldest = recent_traces(source, time_range, sample)
    untraced = source.untraced_calls(oldest if traces else time_range.start, time_range.end)
    checks = [_Check() for _ in range(6)]
    paths: Counter[str] = Counter()
    audited = []
    for i, trace in enumerate(traces, 1):
        say(f"auditing trace {i}/{len(traces)}")
        events = source.events_by_trace(trace)
        audited.append(_audit_trace(trace, events, checks, paths))
    say("measuring coverage")
    cov = coverage(source, time_range, hops=False)
    answers = _answers(
        traces, int(untraced), checks, paths, cov.share, threshold, cov.total, cov.unattributed
    )
    failed_by: dict[str, list[int]] = {}
    for answer in answers:
        for trace in answer.failing_traces:
            failed_by.setdefault(trace, []).append(answer.number)
    audited = [dataclasses.replace(t, failed=tuple(failed_by.get(t.trace_id, ()))) for t in audited]
    return Audit(time_range, sample, audited, int(untraced), answers, threshold, cov.share)


def _audit_trace(
    trace: str, events: list[dict[str, Any]], checks: list[_Check], paths: Counter[str]
) -> TraceAudit:
    calls = [e for e in events if e.get("kind") == "provider_call"]
    hops = [e for e in events if e.get("kind") == "hop"]
    requests = [e for e in events if e.get("kind") == "request"]
    steps = steps_from_events(events)
    loss = first_loss(steps, REQUIRED)
    origin = bool(requests) or any(h.get("hop") in ORIGIN_HOPS for h in hops)
    kinds = list(dict.fromkeys(s.hop for s in steps if s.kind == "hop"))
    path = " → ".join([*kinds, "provider"]) if kinds else "provider only"
    paths[path] += 1
    q1, q2, q3, q4, q5, q6 = checks
    # Q1: a user action (request / origin hop) at the start, reaching the calls.
    if not origin or (loss is not None and loss.code in ("new_trace", "no_hop")):
        q1.fail(trace)
    # Q2: one id across the hops: no downstream hop started the trace afresh.
    if not hops or (loss is not None and loss.code == "new_trace"):
        q2.fail(trace)
    for call in calls:
        # Q3: the three ownership fields on every provider event.
        lacking = [f for f in REQUIRED if not call.get(f)]
        q3.counts["calls"] += 1
        if lacking:
            q3.counts.update(f"no {f}" for f in lacking)
            q3.fail(trace)
        # Q4: tenant present, hashed; user (when present) hashed.
        tenant, user = call.get("tenant"), call.get("user")
        if not tenant:
            q4.counts["no tenant"] += 1
            q4.fail(trace)
        elif not _HASHED.fullmatch(str(tenant)):
            q4.counts["tenant not hashed"] += 1
            q4.fail(trace)
        else:
            q4.counts["hashed tenant"] += 1
        if user and not _HASHED.fullmatch(str(user)):
            q4.counts["user not hashed"] += 1
            q4.fail(trace)
        _cost_check(trace, call, q5)
    _explained(trace, calls, q6)
    spend = sum((to_decimal(c.get("cost")) or Decimal(0) for c in calls), Decimal(0))
    started = min((s.ts for s in steps), default=0.0)
    return TraceAudit(trace, stamp(started), path, len(calls), spend, (), loss)


def _cost_check(trace: str, call: Mapping[str, Any], check: _Check) -> None:
    """Q5: a successful call needs tokens and a cost from a known source; a failed attempt
    that reported no usage is free (providers do not bill it)."""
    cost = to_decimal(call.get("cost"))
    tokens = call.get("gen_ai.usage.input_tokens")
    source = call.get("cost_source")
    if call.get("status") != "ok" and tokens is None:
        check.counts["failed attempts without usage (free)"] += 1
    elif call.get("app_cache_hit"):
        check.counts["app cache hits (cost 0)"] += 1
    elif cost is None or source not in _PRICED:
        check.counts["unpriced"] += 1
        check.fail(trace)
    elif tokens is None:
        check.counts["cost without token counts"] += 1
        check.fail(trace)
    else:
        check.counts[f"priced ({source})"] += 1


def _explained(trace: str, calls: Sequence[Mapping[str, Any]], check: _Check) -> None:
    """Q6: every retry has its earlier attempts, every fallback names what it replaced and
    that call is in the trace, every application cache hit says what it avoided."""
    attempts: dict[str, set[int]] = {}
    for call in calls:
        call_id = str(call.get("call_id") or "")
        try:
            attempt = int(call.get("attempt") or 1)
        except (TypeError, ValueError):
            attempt = 1
        attempts.setdefault(call_id, set()).add(attempt)
    for numbers in attempts.values():
        if max(numbers) > 1:
            check.counts["retried calls"] += 1
            check.counts["retries"] += max(numbers) - 1
        if numbers != set(range(1, max(numbers) + 1)):
            check.counts["retries missing earlier attempts"] += 1
            check.fail(trace)
    for call in calls:
        if call.get("fallback_of"):
            check.counts["fallbacks"] += 1
            original = call.get("fallback_of_call_id")
            if original and str(original) not in attempts:
                check.counts["fallbacks whose failed call is missing"] += 1
                check.fail(trace)
        if call.get("app_cache_hit"):
            check.counts["app cache hits"] += 1
            if to_decimal(call.get("cost_avoided")) is None:
                check.counts["cache hits without cost avoided"] += 1
                check.fail(trace)
        if call.get("gen_ai.usage.cache_read.input_tokens"):
            check.counts["provider cache reads"] += 1


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{counter[name]} {name}" for name in sorted(counter)) or "none seen"


def _answers(
    traces: Sequence[str],
    untraced: int,
    checks: list[_Check],
    paths: Counter[str],
    share: Decimal,
    threshold: Decimal,
    total: Decimal,
    unattributed: Decimal,
) -> list[Answer]:
    n = len(traces)
    q1, q2, q3, q4, q5, q6 = checks
    path_text = "; ".join(f"{p} x{k}" for p, k in paths.most_common())
    none = "no traces with provider calls in this range: nothing to examine"
    out = []

    def add(number: int, check: _Check, evidence: str, extra_ok: bool = True) -> None:
        holds = n > 0 and not check.failing and extra_ok
        out.append(
            Answer(
                number, QUESTIONS[number - 1], holds, evidence if n else none, tuple(check.failing)
            )
        )

    add(
        1,
        q1,
        f"{n - len(q1.failing)}/{n} traces start at a user action and reach their calls;"
        f" {untraced} call(s) in the sampled window carry no trace id",
        untraced == 0,
    )
    add(2, q2, f"{n - len(q2.failing)}/{n} traces keep one id across hops: {path_text}")
    lacking = Counter({k: v for k, v in q3.counts.items() if k != "calls"})
    add(
        3,
        q3,
        f"{q3.counts['calls']} calls: {_counts(lacking) if lacking else 'all carry them'}",
    )
    add(4, q4, _counts(q4.counts))
    add(5, q5, _counts(q5.counts) + "; a request's cost is the sum of its calls")
    add(6, q6, _counts(q6.counts))
    pct = (share * 100).quantize(Decimal("0.01"))
    limit = (threshold * 100).quantize(Decimal("0.01"))
    holds7 = total > 0 and unattributed <= threshold * total  # exact, not the rounded share
    evidence7 = (
        f"{pct}% of {money_text(total)} USD unattributed over the range (threshold {limit}%)"
        if total
        else "no priced spend in this range"
    )
    out.append(Answer(7, QUESTIONS[6], holds7, evidence7, ()))
    return out


def _document(result: Audit) -> Document:
    verdict = "READY" if result.ready else "NOT READY"
    headline = [
        f"range {result.range.label()}; sample: {len(result.traces)} most recent trace(s)"
        f" (asked for {result.sample})",
        f"verdict: {verdict} — {result.held}/7 questions hold (ready at {READY_AT})",
    ]
    answers = Table(
        "answers",
        "Readiness questions",
        [
            Column("line", "question"),
            Column("evidence", "evidence"),
            Column("failing", "failing traces"),
        ],
        [
            {
                "line": f"{a.number}. [{'yes' if a.holds else 'NO '}] {a.question}",
                "evidence": a.evidence,
                "failing": ", ".join(a.failing_traces),
                "number": a.number,
                "holds": a.holds,
            }
            for a in result.answers
        ],
        records=True,
    )
    failing = [t for t in result.traces if t.failed]
    traces = Table(
        "failing_traces",
        "Failing traces: first hop where fields disappear",
        [
            Column("trace_id", "trace"),
            Column("failed", "fails"),
            Column("hop", "hop"),
            Column("unit", "route/task/actor"),
            Column("fields", "fields"),
            Column("reason", "why"),
        ],
        [
            {
                "trace_id": t.trace_id,
                "failed": ",".join(map(str, t.failed)),
                "hop": t.loss.hop if t.loss else "-",
                "unit": t.loss.unit if t.loss else "-",
                "fields": ",".join(t.loss.fields) if t.loss else "",
                "reason": t.loss.reason if t.loss else "(see the answers)",
            }
            for t in failing
        ],
        records=True,
    )
    data = {
        "range": result.range.as_json(),
        "sample": result.sample,
        "verdict": "ready" if result.ready else "not ready",
        "ready": result.ready,
        "held": result.held,
        "answers": result.answers,
        "traces": result.traces,
        "untraced_calls": result.untraced_calls,
        "threshold": result.threshold,
        "unattributed_share": result.unattributed_share,
    }
    return Document("audit", "ownership-ctx audit", headline, [answers, traces], [], data)
