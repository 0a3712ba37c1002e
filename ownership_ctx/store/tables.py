"""The store's tables, defined once. Both dialects generate their DDL, inserts, rollup
upserts and reads from these definitions (`ownership_ctx.store.dialect`); nothing else in the
package spells a column or a measure.

- One raw table per event kind (``provider_calls``, ``requests``, ``hops``; ``other_events``
  for any other kind): a typed column for every field reports filter or sum on, and ``body``,
  JSON with the remaining keys. ``event_id`` is unique: writes are insert-or-ignore.
- Rollups (`ROLLUPS`): ``rollup_hourly`` and ``rollup_daily``, per bucket x `DIMENSIONS`,
  summing `MEASURES`; maintained in the same transaction as the inserts, from exactly the rows
  that transaction inserted, so a replay rolls nothing up twice. Queries read the daily tier
  for whole days and the hourly one for the hours at either end.
- ``unattributed_hourly``: the calls the coverage report traces to their hops, per hour x
  trace x attribution x which ownership fields were present (it grows with unattributed
  traces, not with calls); ``unpriced_hourly``: calls without a cost, per hour x reason;
  ``loss_steps``: the hops and request events of the traces in ``unattributed_hourly``
  (within a day of their calls), copied as they are written whichever comes first, so that
  the breakdown by hop reads them by trace instead of searching the raw tables.
  Their SQL is in `ownership_ctx.store.dialect` (they are keyed counters, not measures).

On PostgreSQL the raw tables are partitioned by UTC day (`ownership_ctx.store.retention`).
"""

from __future__ import annotations

import dataclasses
from typing import Final, Literal

from ownership_ctx.schema import events as ev

__all__ = [
    "BUCKETS",
    "DIMENSIONS",
    "MEASURES",
    "PRESENCE",
    "ROLLUPS",
    "ROLLED_UP",
    "TABLES",
    "TABLE_OF_KIND",
    "TIME_DIMENSIONS",
    "UNATTRIBUTED",
    "Column",
    "ColumnKind",
    "Measure",
    "Rollup",
    "Table",
]

#: What a column holds. ``cost``: the exact decimal (text on SQLite, NUMERIC on PostgreSQL);
#: ``nanos``: integer nano-dollars beside it; ``json``: the body.
ColumnKind = Literal["text", "int", "real", "bool", "cost", "nanos", "json"]


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    key: str | None  # the event key it holds; None: computed by the row builder
    kind: ColumnKind


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def raw_keys(self) -> tuple[str, ...]:
        """The event keys copied as they are: every column before the first computed one."""
        out = []
        for column in self.columns:
            if column.key is None:
                break
            out.append(column.key)
        return tuple(out)

    @property
    def typed_keys(self) -> frozenset[str]:
        """Event keys with a typed column (``missing`` stays in the body too: its column is a
        joined string, the event's value a list)."""
        return frozenset(c.key for c in self.columns if c.key is not None and c.key != "missing")

    @property
    def read_columns(self) -> tuple[Column, ...]:
        """The typed columns an event is rebuilt from (with the body)."""
        return tuple(c for c in self.columns if c.key is not None and c.key != "missing")


def _c(name: str, key: str | None = None, kind: ColumnKind = "text") -> Column:
    return Column(name, name if key is None else key, kind)


def _computed(name: str, kind: ColumnKind) -> Column:
    return Column(name, None, kind)


_HEAD: Final = (
    _c("event_id", ev.EVENT_ID),
    _c("ts", ev.TS, "real"),
    _c("trace_id", ev.TRACE_ID),
    _c("owner_team", ev.OWNER_TEAM),
    _c("workflow_id", ev.WORKFLOW_ID),
    _c("feature", ev.FEATURE),
    _c("tenant", ev.TENANT),
    _c("user_id", ev.USER),  # "user" is reserved in PostgreSQL
    _c("attribution", ev.ATTRIBUTION),
)

PROVIDER_CALLS: Final = Table(
    "provider_calls",
    (
        *_HEAD,
        _c("call_id"),
        _c("attempt", kind="int"),
        _c("status"),
        _c("http_status", kind="int"),
        _c("error_type", ev.ERROR_TYPE),
        _c("provider", ev.PROVIDER),
        _c("operation", ev.OPERATION),
        _c("api"),
        _c("request_model", ev.REQUEST_MODEL),
        _c("response_model", ev.RESPONSE_MODEL),
        _c("service_tier"),
        _c("streaming", kind="bool"),
        _c("latency_ms", kind="real"),
        _c("input_tokens", ev.INPUT_TOKENS, "int"),
        _c("output_tokens", ev.OUTPUT_TOKENS, "int"),
        _c("cache_read_tokens", ev.CACHE_READ_TOKENS, "int"),
        _c("cache_write_tokens", ev.CACHE_WRITE_TOKENS, "int"),
        _c("reasoning_tokens", ev.REASONING_TOKENS, "int"),
        _c("usage_status"),
        _c("cost_source"),
        _c("fallback_of"),
        _c("provider_request_id"),
        _c("recorded_by"),
        # What the provider's bill groups the call under (the OpenAI project), when the call
        # showed it: a rollup dimension, so reconciliation reads the rollups.
        _c("billing_scope"),
        # Computed by the row builder, in this order:
        _computed("hour", "int"),
        _c("app_cache_hit", "app_cache_hit", "bool"),
        _c("cost", "cost", "cost"),
        _computed("cost_nanousd", "nanos"),
        _c("cost_avoided", "cost_avoided", "cost"),
        _computed("cost_avoided_nanousd", "nanos"),
        _computed("body", "json"),
    ),
)
REQUESTS: Final = Table(
    "requests",
    (
        *_HEAD,
        _c("route"),
        _c("method"),
        _c("status", kind="int"),
        _c("latency_ms", kind="real"),
        _c("outcome"),
        _computed("hour", "int"),
        _c("missing", "missing"),
        _computed("body", "json"),
    ),
)
HOPS: Final = Table(
    "hops",
    (
        *_HEAD,
        _c("hop"),
        _c("unit"),
        _c("outcome"),
        _computed("hour", "int"),
        _c("missing", "missing"),
        _computed("body", "json"),
    ),
)
OTHER_EVENTS: Final = Table(
    "other_events",
    (
        _c("event_id", ev.EVENT_ID),
        _c("ts", ev.TS, "real"),
        _c("trace_id", ev.TRACE_ID),
        _c("kind", ev.KIND),
        _computed("hour", "int"),
        _computed("body", "json"),
    ),
)

TABLES: Final = {t.name: t for t in (PROVIDER_CALLS, REQUESTS, HOPS, OTHER_EVENTS)}
TABLE_OF_KIND: Final = {
    ev.PROVIDER_CALL: "provider_calls",
    ev.REQUEST: "requests",
    ev.HOP: "hops",
    "other": "other_events",
}

# -- rollups -----------------------------------------------------------------------------------

#: What rollups are keyed by (with the bucket). ``model`` is the served model (the requested
#: one when the response did not say); ``billing_scope`` what the provider's bill groups the
#: call under (the OpenAI project, for every provider that shows one);
#: ``provider``/``model``/``service_tier``/``billing_scope`` are empty for request events.
#: Missing values are stored as ``''``.
DIMENSIONS: Final = (
    "owner_team",
    "workflow_id",
    "feature",
    "tenant",
    "provider",
    "model",
    "service_tier",
    "billing_scope",
)
TIME_DIMENSIONS: Final = ("hour", "day")

#: Where each dimension comes from in a provider_calls row; request rows have the envelope's
#: four and ``''`` for the others.
DIMENSION_SOURCES: Final = {
    "owner_team": "owner_team",
    "workflow_id": "workflow_id",
    "feature": "feature",
    "tenant": "tenant",
    "provider": "provider",
    "model": "coalesce(response_model, request_model)",
    "service_tier": "service_tier",
    "billing_scope": "billing_scope",
}
REQUEST_DIMENSIONS: Final = frozenset({"owner_team", "workflow_id", "feature", "tenant"})

#: A call's spend is unattributed when it has no owner team or was not "attributed".
UNATTRIBUTED_CALL: Final = (
    "(coalesce(attribution, '') <> 'attributed' OR coalesce(owner_team, '') = '')"
)


@dataclasses.dataclass(frozen=True)
class Measure:
    """One summed rollup column: its aggregate over the provider_calls rows a transaction
    inserted, and over the requests rows. Written in the SQL both databases share;
    ``{cost}`` / ``{cost_avoided}`` stand for the dialect's summable cost column, and
    ``{first_of_trace}`` for the dialect's test that a requests row is its trace's first."""

    name: str
    kind: Literal["count", "money"]
    calls: str
    requests: str = "0"


#: A failed attempt that reported no usage: free (the provider bills nothing), so not a call.
_FAILED: Final = "(coalesce(status, 'ok') <> 'ok' AND input_tokens IS NULL AND {cost} IS NULL)"
_HIT: Final = "app_cache_hit"
_ESTIMATED: Final = "usage_status = 'estimated'"

#: ``calls`` are provider calls made and billed: an application cache hit answered without a
#: call (its would-be usage is ``avoided_*``, never tokens consumed), and a failed attempt
#: without usage is free (``failed_attempts``). Token sums are of calls only. ``requests``
#: counts every request event (each service's own); ``user_actions`` one per trace: the
#: first request event stored for it (an action crossing a gateway and an internal service is
#: one). ``unpriced_calls``: calls whose cost is unknown (failed attempts are not).
MEASURES: Final = (
    Measure("calls", "count", f"count(CASE WHEN {_HIT} OR {_FAILED} THEN NULL ELSE 1 END)"),
    Measure("requests", "count", "0", "count(*)"),
    Measure("errors", "count", "count(CASE WHEN status = 'error' THEN 1 END)"),
    Measure("retries", "count", "count(CASE WHEN attempt > 1 THEN 1 END)"),
    Measure("fallbacks", "count", "count(fallback_of)"),
    Measure("app_cache_hits", "count", f"count(CASE WHEN {_HIT} THEN 1 END)"),
    Measure(
        "unpriced_calls",
        "count",
        f"count(CASE WHEN {_FAILED} THEN NULL WHEN {{cost}} IS NULL THEN 1 END)",
    ),
    *(
        Measure(name, "count", f"coalesce(sum(CASE WHEN {_HIT} THEN 0 ELSE {name} END), 0)")
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
        )
    ),
    Measure("cost", "money", "coalesce(sum({cost}), 0)"),
    Measure(
        "unattributed_cost",
        "money",
        f"coalesce(sum(CASE WHEN {UNATTRIBUTED_CALL} THEN {{cost}} END), 0)",
    ),
    Measure("cost_avoided", "money", "coalesce(sum({cost_avoided}), 0)"),
    Measure("user_actions", "count", "0", "count(CASE WHEN {first_of_trace} THEN 1 END)"),
    Measure("failed_attempts", "count", f"count(CASE WHEN {_FAILED} THEN 1 END)"),
    Measure(
        "avoided_input_tokens", "count", f"coalesce(sum(CASE WHEN {_HIT} THEN input_tokens END), 0)"
    ),
    Measure(
        "avoided_output_tokens",
        "count",
        f"coalesce(sum(CASE WHEN {_HIT} THEN output_tokens END), 0)",
    ),
    Measure("estimated_calls", "count", f"count(CASE WHEN {_ESTIMATED} THEN 1 END)"),
    Measure(
        "estimated_cost", "money", f"coalesce(sum(CASE WHEN {_ESTIMATED} THEN {{cost}} END), 0)"
    ),
)
MEASURE_NAMES: Final = tuple(m.name for m in MEASURES)


@dataclasses.dataclass(frozen=True)
class Rollup:
    """A rollup tier: ``bucket`` seconds per row (UTC hours or days)."""

    name: str
    bucket: int


ROLLUPS: Final = (Rollup("rollup_hourly", 3600), Rollup("rollup_daily", 86400))
BUCKETS: Final = {r.name: r.bucket for r in ROLLUPS}
#: The raw tables whose inserted rows are rolled up.
ROLLED_UP: Final = ("provider_calls", "requests")

# -- what coverage's hop breakdown reads -------------------------------------------------------

#: Ownership fields whose presence the unattributed rollup records, as bit positions: bit i
#: set when ``PRESENCE[i]`` is non-empty on the call.
PRESENCE: Final = ("owner_team", "workflow_id", "feature", "tenant", "user_id")
#: Which calls the unattributed rollup keeps: not attributed, or any requirable field absent
#: (coverage filters by the fields it is asked to require).
UNATTRIBUTED: Final = (
    "(coalesce(attribution, '') <> 'attributed' OR coalesce(owner_team, '') = ''"
    " OR coalesce(workflow_id, '') = '' OR coalesce(feature, '') = ''"
    " OR coalesce(tenant, '') = '')"
)
