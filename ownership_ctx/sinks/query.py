"""Reading the event store: the same small, typed API on SQLite and PostgreSQL.

.. code-block:: python

    store = open_store("sqlite:///ownership.db")
    for row in store.rollups(start, end, group_by=("owner_team", "model")):
        print(row.group["owner_team"], row.group["model"], row.calls, row.cost)
    store.events_by_trace(trace_id)  # every stored event of one request, oldest first

Rollups are hourly: ``rollups(start, end)`` sums the buckets whose hour *starts* in
``[start, end)`` (epoch seconds), grouped by any subset of `DIMENSIONS` plus ``"hour"`` or
``"day"`` (UTC). Missing dimension values come back as ``None`` and are filtered with
``where={"owner_team": None}``. Costs are `Decimal` dollars.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final, Protocol, runtime_checkable

__all__ = [
    "DIMENSIONS",
    "MEASURES",
    "TIME_DIMENSIONS",
    "EventQueries",
    "ForkSafeConnections",
    "RollupRow",
    "open_store",
]

#: What rollups are keyed by (with the hour). ``model`` is the served model (the requested one
#: when the response did not say); ``provider``/``model``/``service_tier`` are empty for
#: request events.
DIMENSIONS: Final = (
    "owner_team",
    "workflow_id",
    "feature",
    "tenant",
    "provider",
    "model",
    "service_tier",
)
TIME_DIMENSIONS: Final = ("hour", "day")

#: Summed per bucket. ``calls`` counts provider_call events (every attempt), ``requests``
#: request events; ``retries`` attempts > 1; ``fallbacks`` calls standing in for a failed
#: model; ``unattributed_cost`` the cost of calls without an owner team or not "attributed".
MEASURES: Final = (
    "calls",
    "requests",
    "errors",
    "retries",
    "fallbacks",
    "app_cache_hits",
    "unpriced_calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "unattributed_cost",
    "cost_avoided",
)
_BILLION: Final = Decimal(10**9)
_COSTS: Final = frozenset({"cost", "unattributed_cost", "cost_avoided"})
_TABLES: Final = {
    "provider_call": "provider_calls",
    "request": "requests",
    "hop": "hops",
    "other": "other_events",
}


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


@dataclasses.dataclass(frozen=True)
class RollupQuery:
    sql: str
    params: list[Any]
    group_by: tuple[str, ...]

    def rows(self, fetched: Sequence[Sequence[Any]], *, nanos: bool) -> list[RollupRow]:
        """Typed rows from the database's tuples (costs: integer nano-dollars or decimals)."""
        width = len(self.group_by)
        out = []
        for record in fetched:
            group: dict[str, str | int | None] = {}
            for name, value in zip(self.group_by, record[:width], strict=True):
                if name in TIME_DIMENSIONS:
                    group[name] = int(value)
                else:
                    group[name] = value if value != "" else None
            measures: dict[str, Any] = {}
            for name, value in zip(MEASURES, record[width:], strict=True):
                if name in _COSTS:
                    if value is None:
                        measures[name] = Decimal(0)
                    elif nanos:
                        measures[name] = Decimal(int(value)) / _BILLION  # exact below 28 digits
                    else:
                        measures[name] = Decimal(value)
                else:
                    measures[name] = int(value or 0)
            out.append(RollupRow(group=group, **measures))
        return out


def rollup_query(
    group_by: Sequence[str],
    where: Mapping[str, str | None] | None,
    start: float,
    end: float,
    mark: str,
    cost_columns: Mapping[str, str],
) -> RollupQuery:
    """The SQL (identical on both databases but for the ``mark`` placeholder)."""
    group = tuple(dict.fromkeys(group_by))
    for name in group:
        if name not in DIMENSIONS and name not in TIME_DIMENSIONS:
            raise ValueError(f"cannot group by {name!r}: use {DIMENSIONS + TIME_DIMENSIONS}")
    if "hour" in group and "day" in group:
        raise ValueError("group by hour or day, not both")
    # psycopg's placeholders are %-style: its modulo operator must be doubled.
    modulo = "%%" if mark == "%s" else "%"
    expressions = [f"(hour - hour {modulo} 86400)" if name == "day" else name for name in group]
    sums = [f"sum({cost_columns.get(m, m)})" for m in MEASURES]
    conditions = [f"hour >= {mark}", f"hour < {mark}"]
    params: list[Any] = [start, end]
    for name, value in (where or {}).items():
        if name not in DIMENSIONS:
            raise ValueError(f"cannot filter on {name!r}: use one of {DIMENSIONS}")
        conditions.append(f"{name} = {mark}")
        params.append("" if value is None else value)
    sql = f"SELECT {', '.join([*expressions, *sums])} FROM rollup_hourly"
    sql += f" WHERE {' AND '.join(conditions)}"
    if expressions:
        listed = ", ".join(expressions)
        sql += f" GROUP BY {listed} ORDER BY {listed}"
    # Without grouping: one row, even when nothing matched (NULL sums; rows() makes them 0).
    return RollupQuery(sql, params, group)


def event_ids_sql(kind: str | None) -> str:
    if kind is None:
        return " UNION ALL ".join(f"SELECT event_id FROM {t}" for t in _TABLES.values())
    if kind not in _TABLES:
        raise ValueError(f"unknown kind {kind!r}: use one of {tuple(_TABLES)}")
    return f"SELECT event_id FROM {_TABLES[kind]}"


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

    def close(self) -> None: ...


#: Connections inherited by a fork child: never used there and never closed there (closing one
#: would end the parent's PostgreSQL session, or checkpoint / unlink a SQLite WAL), only kept
#: from the garbage collector.
_ABANDONED: list[object] = []


class ForkSafeConnections:
    """What both stores do with their writer and reader connections in a forked child."""

    _conn: Any
    _reader: Any
    _lock: threading.Lock
    _read_lock: threading.Lock

    def after_fork_in_child(self) -> None:
        _ABANDONED.extend(c for c in (self._conn, self._reader) if c is not None)
        self._conn = self._reader = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()


def open_store(url: str, *, readonly: bool = False) -> EventQueries:
    """A reader for the store at ``url`` (``sqlite:///...`` or ``postgresql://...``).
    ``readonly``: never write or create anything; a missing store or table raises."""
    from ownership_ctx.sinks.config import open_backend

    backend = open_backend(url, readonly=readonly)
    if not isinstance(backend, EventQueries):
        raise ValueError(f"{url.split(':', 1)[0]}: sinks are write-only; no queries")
    return backend
