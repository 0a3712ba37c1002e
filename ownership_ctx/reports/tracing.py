"""One trace as ordered steps (hops, the request, provider calls), and where it lost its fields.

Shared by `trace`, `audit` and `coverage`. A hop event says what arrived at a boundary
(``outcome``, ``missing``, the envelope fields it carried); a provider call carries the
envelope bound where it was made. Walking a trace in time order, the *first loss* is the first
step where a field that the trace had (or that policy requires) is no longer there:

- ``new_trace``: the first step is a downstream hop (a worker) that received no envelope, so a
  new trace id was minted there: whatever published the work did not carry ownership;
- ``quarantined`` / ``unattributed`` / ``rejected``: the hop's policy found required fields
  missing on arrival;
- ``dropped``: fields an earlier hop had are missing after this one;
- ``never_supplied``: the origin (the gateway) never received required fields;
- ``stamped``: ownership came from policy defaults, not from the caller;
- ``call_site``: the hops were fine but the provider call ran outside the bound context;
- ``no_hop``: the call's trace has no hop at all (made outside any instrumented unit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, NamedTuple

__all__ = [
    "BAD_OUTCOMES",
    "ORIGIN_HOPS",
    "REQUIRED",
    "Loss",
    "Step",
    "first_loss",
    "steps_from_events",
]

#: Where a trace legitimately starts: the HTTP edge, or a scheduled publish (Celery beat).
ORIGIN_HOPS: Final = frozenset({"http", "celery_publish"})
BAD_OUTCOMES: Final = frozenset({"quarantined", "unattributed", "rejected"})
#: The fields every provider event must carry to count as attributed (coverage, audit Q3).
REQUIRED: Final = ("owner_team", "workflow_id", "feature")
ENVELOPE_FIELDS: Final = ("owner_team", "workflow_id", "feature", "tenant", "user")
_ORDER: Final = {"hop": 0, "request": 1, "call": 2}


class Step(NamedTuple):
    """One step of a trace. (A named tuple: coverage builds one per unattributed call and
    hop, and compares whole traces by their steps.)"""

    ts: float
    kind: str  # "hop", "request" or "call"
    hop: str  # hop kind ("http", "celery", ...); "call" for provider calls
    unit: str  # route / task / actor; provider and model for calls
    outcome: str | None  # hop outcome; a call's attribution
    missing: tuple[str, ...]
    present: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Loss:
    hop: str
    unit: str
    code: str
    fields: tuple[str, ...]
    reason: str


def _fields(event: Mapping[str, Any]) -> frozenset[str]:
    return frozenset(f for f in ENVELOPE_FIELDS if event.get(f))


def _missing(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.split(",") if v)
    if isinstance(value, (list, tuple)):
        return tuple(str(v) for v in value)
    return ()


def _ts(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def steps_from_events(events: Iterable[Mapping[str, Any]]) -> list[Step]:
    """Steps of one trace from its stored events (any order; odd values tolerated)."""
    steps = []
    for e in events:
        kind = e.get("kind")
        if kind == "provider_call":
            model = e.get("gen_ai.response.model") or e.get("gen_ai.request.model") or "?"
            steps.append(
                Step(
                    _ts(e.get("ts")),
                    "call",
                    "call",
                    f"{e.get('gen_ai.provider.name') or '?'} {model}",
                    str(e.get("attribution") or "unattributed"),
                    (),
                    _fields(e),
                )
            )
        elif kind in ("hop", "request"):
            steps.append(
                Step(
                    _ts(e.get("ts")),
                    str(kind),
                    str(e.get("hop") or ("http" if kind == "request" else "?")),
                    str(e.get("unit") or e.get("route") or "?"),
                    None if e.get("outcome") is None else str(e.get("outcome")),
                    _missing(e.get("missing")),
                    _fields(e),
                )
            )
    return sorted(steps, key=lambda s: (s.ts, _ORDER[s.kind]))


def first_loss(steps: Sequence[Step], required: Sequence[str] = REQUIRED) -> Loss | None:
    """The first step where the trace's ownership fields went missing, or None."""
    ordered = sorted(steps, key=lambda s: (s.ts, _ORDER[s.kind]))
    if any(s.kind == "hop" for s in ordered):
        # A request event repeats its edge hop; it only stands in when no hop was recorded.
        ordered = [s for s in ordered if s.kind != "request"]
    need = frozenset(required)
    seen: set[str] = set()
    last_unit: str | None = None
    for index, step in enumerate(ordered):
        if step.kind == "call":
            lost = tuple(sorted((seen | need) - step.present))
            if last_unit is None and (lost or step.outcome in BAD_OUTCOMES):
                return Loss(
                    "(none)",
                    "(no instrumented hop)",
                    "no_hop",
                    lost,
                    "no hop recorded in this trace: the call ran outside any instrumented"
                    " request, task or actor",
                )
            dropped = tuple(sorted(seen - step.present))
            if dropped or step.outcome in BAD_OUTCOMES:
                return Loss(
                    "call",
                    step.unit,
                    "call_site",
                    dropped,
                    f"fields bound after {last_unit} are not on the provider call: it ran"
                    " outside the bound context (thread, callback, ...)",
                )
            continue
        missing = tuple(sorted(set(step.missing) | (need - step.present)))
        if index == 0 and step.hop not in ORIGIN_HOPS and (missing or not step.present):
            return Loss(
                step.hop,
                step.unit,
                "new_trace",
                missing,
                "no envelope arrived: a new trace id was minted here (work published without"
                " ownership hooks?)",
            )
        if step.outcome in BAD_OUTCOMES:
            return Loss(
                step.hop,
                step.unit,
                step.outcome or "quarantined",
                missing,
                f"{step.outcome} on arrival: {', '.join(missing) or 'no usable envelope'}",
            )
        dropped = tuple(sorted(seen - step.present))
        if dropped:
            return Loss(
                step.hop,
                step.unit,
                "dropped",
                dropped,
                "present on the previous hop, missing after this one",
            )
        if index == 0 and missing:
            return Loss(
                step.hop,
                step.unit,
                "never_supplied",
                missing,
                "never supplied at the origin (not required by its policy)",
            )
        if step.outcome == "stamped":
            return Loss(
                step.hop,
                step.unit,
                "stamped",
                (),
                "ownership filled from policy defaults: the caller sent none",
            )
        seen |= step.present
        last_unit = f"{step.hop} {step.unit}"
    return None
