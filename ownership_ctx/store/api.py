"""The typed query API: what reports (and reconciliation, budgets, ...) read from a store.

The same on SQLite and PostgreSQL; no SQL and no dialect leaks out. Every method raises
`StoreError` (one line, no traceback worth showing) when the database cannot be read.

.. code-block:: python

    store = open_store("sqlite:///ownership.db")
    for row in store.rollups(start, end, group_by=("owner_team", "model")):
        print(row.group["owner_team"], row.group["model"], row.calls, row.cost)
    store.events_by_trace(trace_id)  # every stored event of one request, oldest first

Rollups: ``rollups(start, end)`` sums the hourly buckets whose hour *starts* in
``[start, end)`` (epoch seconds), grouped by any subset of `DIMENSIONS` plus ``"hour"`` or
``"day"`` (UTC). Missing dimension values come back as ``None`` and are filtered with
``where={"owner_team": None}``. Costs are `Decimal` dollars.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, NamedTuple, Protocol, runtime_checkable

from .tables import DIMENSIONS, MEASURE_NAMES, TIME_DIMENSIONS

__all__ = [
    "DIMENSIONS",
    "MEASURES",
    "TIME_DIMENSIONS",
    "EventQueries",
    "LossShape",
    "Pruned",
    "RollupRow",
    "ShapeStep",
    "StoreError",
    "TraceSpend",
    "TraceStep",
    "UnattributedCalls",
]

#: Summed per bucket (see `ownership_ctx.store.tables.MEASURES`). ``calls`` counts provider
#: calls made (not application cache hits, not failed attempts without usage: those are
#: ``app_cache_hits`` and ``failed_attempts``), ``requests`` request events, ``user_actions``
#: traces (their first request event); ``retries`` attempts > 1; ``fallbacks`` calls standing
#: in for a failed model; ``unattributed_cost`` the cost of calls without an owner team or not
#: "attributed"; ``estimated_*`` calls whose usage is estimated (cancelled streams).
MEASURES = MEASURE_NAMES


class StoreError(RuntimeError):
    """The store cannot be opened or read (the command's exit code 2). One line."""


@dataclasses.dataclass(frozen=True)
class RollupRow:
    """One group of a rollup query: its key (``group``) and the summed measures."""

    group: Mapping[str, str | int | None]
    calls: int = 0
    requests: int = 0
    errors: int = 0
    retries: int = 0
    fallbacks: int = 0
    app_cache_hits: int = 0
    unpriced_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost: Decimal = Decimal(0)
    unattributed_cost: Decimal = Decimal(0)
    cost_avoided: Decimal = Decimal(0)
    user_actions: int = 0
    failed_attempts: int = 0
    avoided_input_tokens: int = 0
    avoided_output_tokens: int = 0
    estimated_calls: int = 0
    estimated_cost: Decimal = Decimal(0)


class UnattributedCalls(NamedTuple):
    """Calls of one trace that lack attribution, with the same attribution and the same
    ownership fields present (``trace_id`` None: calls made with no trace id at all).
    (Named tuples: the hop breakdown reads one per unattributed trace, tens of thousands.)"""

    trace_id: str | None
    attribution: str  # "" when the calls had none
    fields: frozenset[str]  # of owner_team, workflow_id, feature, tenant, user
    first_ts: float
    calls: int
    cost: Decimal
    provider: str | None
    model: str | None


class TraceStep(NamedTuple):
    """A hop or request event of a trace, as the hop breakdown reads it."""

    trace_id: str
    ts: float
    kind: str  # "hop" or "request"
    hop: str | None  # requests: "http"
    unit: str | None  # requests: the route
    outcome: str | None
    missing: tuple[str, ...]
    fields: frozenset[str]  # ownership fields the event carried


class ShapeStep(NamedTuple):
    """One step of a `LossShape`: a call, hop or request event, without its time."""

    kind: str  # "call", "hop" or "request"
    hop: str  # the hop kind; "call" for calls, "http" for request events; "?" unknown
    unit: str  # route / task / actor; "provider model" for calls
    outcome: str | None  # the hop's outcome; a call's attribution
    missing: tuple[str, ...]
    fields: frozenset[str]  # ownership fields the step carried


class LossShape(NamedTuple):
    """Traces whose unattributed calls and hops went the same way: the steps in time order,
    and how many traces, their unattributed calls and cost. ``steps`` is empty for the calls
    made with no trace id at all."""

    steps: tuple[ShapeStep, ...]
    traces: int
    calls: int
    cost: Decimal


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What a retention run removed: raw events, and (PostgreSQL) whole day partitions."""

    events: int
    partitions: int


@dataclasses.dataclass(frozen=True)
class TraceSpend:
    trace_id: str
    cost: Decimal


@runtime_checkable
class EventQueries(Protocol):
    """The read API both stores implement."""

    def rollups(
        self,
        start: float,
        end: float,
        group_by: Sequence[str] = (),
        where: Mapping[str, str | None] | None = None,
    ) -> list[RollupRow]:
        """Rollup buckets whose hour starts in ``[start, end)``, summed per ``group_by``."""
        ...

    def events_by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        """Every stored event (request, hops, provider calls, others) of one trace, by time."""
        ...

    def event_ids(self, kind: str | None = None) -> list[str]:
        """Stored event ids (``kind``: provider_call, request, hop or other): reconciliation."""
        ...

    def trace_ids(self, prefix: str, limit: int = 11) -> list[str]:
        """Stored trace ids starting with ``prefix`` (lowercase hex), at most ``limit``."""
        ...

    def extent(self) -> tuple[int, int] | None:
        """The first and last stored hour (epoch seconds), None when the store is empty."""
        ...

    def unpriced_reasons(self, start: float, end: float) -> dict[str, int]:
        """Calls without a cost in the hours starting in ``[start, end)`` (as rollups count
        them), counted by why, most frequent first."""
        ...

    def recent_traces(self, start: float, end: float, n: int) -> tuple[list[str], float]:
        """The ``n`` most recent trace ids with provider calls in the range, newest first, and
        the time of the oldest call looked at (cost grows with ``n``, not the range)."""
        ...

    def untraced_calls(self, start: float, end: float) -> int:
        """Provider calls in ``[start, end)`` with no trace id."""
        ...

    def unattributed_calls(
        self, start: float, end: float, required: Sequence[str]
    ) -> list[UnattributedCalls]:
        """Calls in the hours starting in ``[start, end)`` that are not attributed or lack
        one of the ``required`` envelope fields, per trace and field pattern."""
        ...

    def trace_steps(
        self,
        trace_ids: Sequence[str],
        near: Sequence[float] | None = None,
        window: float = 86400,
    ) -> list[TraceStep]:
        """The hop and request events of these traces; with ``near`` (a time per trace), only
        those within ``window`` seconds of it (much faster on day-partitioned tables)."""
        ...

    def loss_shapes(self, start: float, end: float, required: Sequence[str]) -> list[LossShape]:
        """The traces with calls in the hours starting in ``[start, end)`` that are not
        attributed or lack one of the ``required`` fields, grouped by shape (their steps, in
        time order, within a day of the first such call): what coverage's hop breakdown
        reads. Cost grows with those traces, done in the database; the result with shapes."""
        ...

    def top_requests(self, start: float, end: float, n: int) -> list[TraceSpend]:
        """The ``n`` traces with the highest summed call cost in ``[start, end)``."""
        ...

    def close(self) -> None: ...
