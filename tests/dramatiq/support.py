"""Small helpers shared by the Dramatiq tests (imported, never collected)."""

from __future__ import annotations

import itertools
import uuid
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ownership_ctx import Envelope, new_trace_id
from tests.dramatiq.app import env_from

SESSION = uuid.uuid4().hex[:8]
_counter = itertools.count()


def unique(name: str) -> str:
    """A recorder key or tag unique to this session."""
    return f"oc-dramatiq:{SESSION}:{name}:{next(_counter)}"


def envelope(**fields: Any) -> Envelope:
    """A fully attributed envelope with a fresh trace id (fields can be overridden)."""
    values = {"owner_team": "search", "workflow_id": "ticket-flow", "feature": "triage"}
    values.update(fields)
    return Envelope(trace_id=new_trace_id(), **values)


def seen(records: Iterable[dict[str, Any]]) -> list[Envelope | None]:
    return [env_from(r["env"]) for r in records]


def nodes(records: Iterable[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """How many times each (actor, node) ran."""
    return Counter((r["actor"], r["node"]) for r in records)


def bare(trace_id: str, attribution: str) -> Envelope:
    """What a unit with no ownership fields sees: only a trace id and its attribution."""
    return Envelope(trace_id=trace_id, attribution=attribution)  # type: ignore[arg-type]
