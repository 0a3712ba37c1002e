"""The events an admitted unit of work emits: its ``hop`` and, at the edge, its ``request``.

Built from anything shaped like an `ownership_ctx.entry.Entry` (see `Admitted`). Standard
library only.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from .envelope import OWNERSHIP_FIELDS, Envelope, Problem
from .units import shown

__all__ = ["Admitted", "hop_event", "request_event"]


class Admitted(Protocol):
    """What the events read of an admitted unit of work."""

    @property
    def envelope(self) -> Envelope | None: ...
    @property
    def hop(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def trace_id(self) -> str: ...
    @property
    def outcome(self) -> str: ...
    @property
    def missing(self) -> tuple[str, ...]: ...
    @property
    def problems(self) -> tuple[Problem, ...]: ...


def hop_event(entry: Admitted) -> dict[str, Any]:
    """The ``hop`` event: a boundary crossing, which fields it carried and what was wrong."""
    envelope = entry.envelope
    return {
        "kind": "hop",
        "hop": entry.hop,
        "unit": shown(entry.unit),
        "outcome": entry.outcome,
        "trace_id": entry.trace_id,
        "missing": list(entry.missing),
        "fields_present": [
            n for n in OWNERSHIP_FIELDS if envelope is not None and getattr(envelope, n)
        ],
        "problems": [f"{p.field or '-'}:{p.code}" for p in entry.problems],
        **(envelope.as_dict() if envelope is not None else {}),
    }


def request_event(
    entry: Admitted,
    method: str,
    status: int | None,
    latency_ms: float,
    route: str | None = None,
) -> dict[str, Any]:
    """The ``request`` event of an edge unit (the parent of its provider calls), stamped with
    the time the request started. ``route``: the framework's route template, when known."""
    event = hop_event(entry)
    event.update(
        kind="request",
        ts=time.time() - latency_ms / 1000,
        route=shown(route or entry.unit),
        method=method,
        status=status,
        latency_ms=round(latency_ms, 3),
    )
    return event
