"""What the SQLite and PostgreSQL stores share: the query API over the generated SQL.

A store subclass supplies a `Dialect`, a connection (``_execute``), and its write path; every
read is written once here, with ``?`` placeholders and ``%`` for modulo, and adapted to the
driver by the dialect.
"""

from __future__ import annotations

import abc
import json
import threading
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final

from .api import (
    DIMENSIONS,
    TIME_DIMENSIONS,
    EventQueries,
    LossShape,
    Pruned,
    RollupRow,
    ShapeStep,
    StoreError,
    TraceSpend,
    TraceStep,
    UnattributedCalls,
)
from .dialect import DAY_OF_ROW, Dialect
from .rows import by_time, rebuild
from .tables import MEASURES, PRESENCE, TABLE_OF_KIND, TABLES

__all__ = ["StoreBase", "one_line"]

_DAY: Final = 86400
_HOUR: Final = 3600
_FAR: Final = 1 << 62
#: Beyond this many days between a store's first and last event, a lookup by trace reads
#: which days are there rather than naming every day between.
_MAX_DAYS: Final = 36600
_CHUNK: Final = 400  # trace ids per IN (...) query: well under SQLite's 32766 parameters
#: Presence bits (`tables.PRESENCE`) by envelope field name.
_BIT: Final = {("user" if c == "user_id" else c): 1 << i for i, c in enumerate(PRESENCE)}
_FIELD_NAMES: Final = ("owner_team", "workflow_id", "feature", "tenant", "user")
_ALL_FIELDS: Final = (1 << len(PRESENCE)) - 1
#: The present fields of every presence mask, built once (a breakdown reads tens of thousands).
_FIELDS_OF_MASK: Final = tuple(
    frozenset(f for f in _FIELD_NAMES if mask & _BIT[f]) for mask in range(_ALL_FIELDS + 1)
)

#: Connections inherited by a fork child: never used there and never closed there (closing one
#: would end the parent's PostgreSQL session, or checkpoint / unlink a SQLite WAL), only kept
#: from the garbage collector.
_ABANDONED: list[object] = []


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


class StoreBase(EventQueries):
    """The query API (`EventQueries`) on top of ``_execute``."""

    dialect: Dialect
    _conn: Any
    _reader: Any
    _lock: threading.Lock
    _read_lock: threading.Lock

    # -- what subclasses provide -------------------------------------------------------------

    @abc.abstractmethod
    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Run one read on the reader connection (``sql`` already in the driver's form)."""

    @abc.abstractmethod
    def _is_database_error(self, error: BaseException) -> bool:
        """Whether ``error`` came from this store's driver or file system."""

    def is_database_error(self, error: BaseException) -> bool:
        """Whether ``error`` came from the database (its driver, or the file system)."""
        return self._is_database_error(error)

    @abc.abstractmethod
    def prune(self, before: float) -> Pruned:
        """Remove the events older than ``before`` (`ownership_ctx.store.retention`)."""

    def _full_scan_hint(self, calls_in_range: int) -> str:
        """The ``ts`` column as a range filter on provider_calls over ``calls_in_range`` rows
        (a dialect may ask for a scan instead of an index walk)."""
        return "ts"

    @abc.abstractmethod
    def close(self) -> None:
        """Close the store's connections."""

    # -- plumbing ----------------------------------------------------------------------------

    def __enter__(self) -> StoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def after_fork_in_child(self) -> None:
        _ABANDONED.extend(c for c in (self._conn, self._reader) if c is not None)
        self._conn = self._reader = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def fetch(
        self, sql: str, params: Sequence[Any] = (), *, what: str = "query the store"
    ) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders, ``%`` modulo); database errors as `StoreError`."""
        try:
            return self._execute(self.dialect.sql(sql), list(params))
        except Exception as e:
            if self._is_database_error(e):
                raise StoreError(f"cannot {what}: {one_line(e)}") from e
            raise

    def _money(self, value: object) -> Decimal:
        return self.dialect.to_money(value)

    # -- rollups -----------------------------------------------------------------------------

    def _tiers(self, start: float, end: float, by_hour: bool) -> list[tuple[str, int, int]]:
        """(table, first bucket, end) parts covering the hours that start in [start, end):
        whole days from the daily tier, the hours at either end from the hourly one."""
        if end <= start:
            return [("rollup_hourly", 0, 0)]
        first = -(-_ceil(start) // _HOUR) * _HOUR  # hours are whole: h >= start <=> h >= ceil
        last = -(-_ceil(end) // _HOUR) * _HOUR
        if by_hour:
            return [("rollup_hourly", first, last)]
        day_first = -(-first // _DAY) * _DAY
        day_last = last // _DAY * _DAY
        if day_first >= day_last:
            return [("rollup_hourly", first, last)]
        parts = [("rollup_hourly", first, day_first), ("rollup_daily", day_first, day_last)]
        parts.append(("rollup_hourly", day_last, last))
        return [p for p in parts if p[1] < p[2]]

    def rollups(
        self,
        start: float,
        end: float,
        group_by: Sequence[str] = (),
        where: Mapping[str, str | None] | None = None,
    ) -> list[RollupRow]:
        group = tuple(dict.fromkeys(group_by))
        for name in group:
            if name not in DIMENSIONS and name not in TIME_DIMENSIONS:
                raise ValueError(f"cannot group by {name!r}: use {DIMENSIONS + TIME_DIMENSIONS}")
        if "hour" in group and "day" in group:
            raise ValueError("group by hour or day, not both")
        conditions: list[str] = []
        filters: list[Any] = []
        for name, value in (where or {}).items():
            if name not in DIMENSIONS:
                raise ValueError(f"cannot filter on {name!r}: use one of {DIMENSIONS}")
            conditions.append(f"{name} = ?")
            filters.append("" if value is None else value)
        columns = self.dialect.measure_columns()
        selects, params = [], []
        for table, lo, hi in self._tiers(start, end, "hour" in group):
            where_sql = " AND ".join(["hour >= ?", "hour < ?", *conditions])
            selects.append(f"SELECT * FROM {table} WHERE {where_sql}")
            params += [lo, hi, *filters]
        source = selects[0] if len(selects) == 1 else " UNION ALL ".join(selects)
        expressions = [f"(hour - hour % {_DAY})" if n == "day" else n for n in group]
        sums = [f"sum({c})" for c in columns]
        sql = f"SELECT {', '.join([*expressions, *sums])} FROM ({source}) AS r"
        if expressions:
            listed = ", ".join(expressions)
            sql += f" GROUP BY {listed} ORDER BY {listed}"
        # Without grouping: one row, even when nothing matched (NULL sums: zeros below).
        return self._rollup_rows(group, self.fetch(sql, params, what="read rollups"))

    def _rollup_rows(
        self, group_by: Sequence[str], fetched: Sequence[Sequence[Any]]
    ) -> list[RollupRow]:
        width = len(group_by)
        timed = [name in TIME_DIMENSIONS for name in group_by]
        to_money = self.dialect.to_money
        money = [m.kind == "money" for m in MEASURES]
        out = []
        for record in fetched:
            group: dict[str, str | int | None] = {
                name: int(value) if is_time else (value if value != "" else None)
                for name, value, is_time in zip(group_by, record[:width], timed, strict=True)
            }
            values: list[Any] = [
                to_money(value) if is_money else int(value or 0)
                for value, is_money in zip(record[width:], money, strict=True)
            ]
            out.append(RollupRow(group, *values))
        return out

    # -- events and traces -------------------------------------------------------------------

    def _body(self, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            return {}
        return decoded if isinstance(decoded, dict) else {}

    def _trace_days(self, low: float | None = None, high: float | None = None) -> str:
        """`Dialect.trace_days` for a lookup by trace id: the days from ``low`` to ``high``
        (epoch seconds), else every day the store holds events on."""
        if not self.dialect.day_led_trace_index:
            return ""
        if low is None or high is None:
            # One aggregate per SELECT: SQLite reads min or max alone off the ts index, but
            # scans the table for both at once.
            spans = self.fetch(
                " UNION ALL ".join(
                    f"SELECT (SELECT min(ts) FROM {t}), (SELECT max(ts) FROM {t})" for t in TABLES
                )
            )
            lows = [float(a) for a, _ in spans if a is not None]
            highs = [float(b) for _, b in spans if b is not None]
            if not lows:
                return self.dialect.trace_days("", [])
            low, high = min(lows), max(highs)
        first, last = _floor(low / _DAY), _floor(high / _DAY)
        if last - first > _MAX_DAYS:
            # Events centuries apart (a clock gone wrong): the days that are there instead.
            union = " UNION ".join(f"SELECT DISTINCT {DAY_OF_ROW} FROM {t}" for t in TABLES)
            return self.dialect.trace_days("", [union])
        return self.dialect.trace_days("", [str(d) for d in range(first, last + 1)])

    def events_by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        found = []
        days = self._trace_days()
        for name, table in TABLES.items():
            columns = ", ".join(c.name for c in table.read_columns)
            rows = self.fetch(
                f"SELECT {columns}, body FROM {name} WHERE {days}trace_id = ?",
                [trace_id],
                what=f"read trace {trace_id}",
            )
            found += [rebuild(name, row[:-1], self._body(row[-1])) for row in rows]
        return sorted(found, key=by_time)

    def event_ids(self, kind: str | None = None) -> list[str]:
        if kind is None:
            sql = " UNION ALL ".join(f"SELECT event_id FROM {t}" for t in TABLES)
        elif kind in TABLE_OF_KIND:
            sql = f"SELECT event_id FROM {TABLE_OF_KIND[kind]}"
        else:
            raise ValueError(f"unknown kind {kind!r}: use one of {tuple(TABLE_OF_KIND)}")
        return [str(eid) for (eid,) in self.fetch(sql)]

    def trace_ids(self, prefix: str, limit: int = 11) -> list[str]:
        # A range, not LIKE: both databases walk the trace_id index for it.
        high = prefix + "g"  # above any hex digit
        days = self._trace_days()
        union = " UNION ".join(
            f"SELECT trace_id FROM {t} WHERE {days}trace_id >= ? AND trace_id < ?"
            for t in ("requests", "provider_calls", "hops", "other_events")
        )
        rows = self.fetch(
            f"SELECT trace_id FROM ({union}) AS found ORDER BY trace_id LIMIT {int(limit)}",
            [prefix, high] * 4,
        )
        return [str(trace_id) for (trace_id,) in rows]

    def extent(self) -> tuple[int, int] | None:
        ((first, last),) = self.fetch("SELECT min(hour), max(hour) FROM rollup_hourly")
        if first is None:
            ((first, last),) = self.fetch("SELECT min(hour), max(hour) FROM hops")
        return None if first is None else (int(first), int(last))

    def unpriced_reasons(self, start: float, end: float) -> dict[str, int]:
        (_, lo, hi), *_ = self._tiers(start, end, by_hour=True)
        rows = self.fetch(
            "SELECT reason, sum(calls) FROM unpriced_hourly WHERE hour >= ? AND hour < ?"
            " GROUP BY reason ORDER BY 2 DESC, 1",
            [lo, hi],
        )
        return {str(name): int(count) for name, count in rows}

    def recent_traces(self, start: float, end: float, n: int) -> tuple[list[str], float]:
        limit = max(64, n * 16)
        while True:
            rows = self.fetch(
                "SELECT trace_id, ts FROM provider_calls WHERE ts >= ? AND ts < ?"
                " AND trace_id IS NOT NULL ORDER BY ts DESC LIMIT ?",
                (start, end, limit),
            )
            seen: dict[str, float] = {}
            oldest = float(end)
            for trace, ts in rows:
                oldest = float(ts)
                if trace not in seen:
                    seen[trace] = float(ts)
                    if len(seen) == n:
                        return list(seen), oldest
            if len(rows) < limit:
                return list(seen), float(start) if not rows else oldest
            limit *= 4

    def untraced_calls(self, start: float, end: float) -> int:
        ((count,),) = self.fetch(
            "SELECT count(*) FROM provider_calls WHERE ts >= ? AND ts < ? AND trace_id IS NULL",
            (start, end),
        )
        return int(count)

    def unattributed_calls(
        self, start: float, end: float, required: Sequence[str]
    ) -> list[UnattributedCalls]:
        mask = 0
        for name in required:
            mask |= _BIT[name]
        (_, lo, hi), *_ = self._tiers(start, end, by_hour=True)
        rows = self.fetch(
            "SELECT trace_id, attribution, present, min(first_ts), sum(calls), sum(cost),"
            " min(provider), min(model) FROM unattributed_hourly"
            " WHERE hour >= ? AND hour < ? AND (attribution <> 'attributed' OR (present & ?) <> ?)"
            " GROUP BY trace_id, attribution, present",
            (lo, hi, mask, mask),
        )
        money, fields = self._money, _FIELDS_OF_MASK
        return [
            UnattributedCalls(
                str(trace) or None,
                str(attribution),
                fields[int(present) & _ALL_FIELDS],
                float(first_ts or 0),
                int(calls),
                money(cost),
                provider,
                model,
            )
            for trace, attribution, present, first_ts, calls, cost, provider, model in rows
        ]

    def loss_shapes(self, start: float, end: float, required: Sequence[str]) -> list[LossShape]:
        mask = 0
        for name in required:
            mask |= _BIT[name]
        (_, lo, hi), *_ = self._tiers(start, end, by_hour=True)
        params = (lo, hi, mask, mask)
        # The same shape may come back more than once (its steps joined in another order).
        found: dict[tuple[ShapeStep, ...], list[Any]] = {}
        for shape, traces, calls, cost in self.fetch(self.dialect.loss_shapes(), params):
            steps = tuple(
                _shape_step(*step)
                for step in sorted(json.loads(f"[{shape}]"), key=lambda s: int(s[0]))
            )
            acc = found.setdefault(steps, [0, 0, Decimal(0)])
            acc[0] += int(traces)
            acc[1] += int(calls)
            acc[2] += self._money(cost)
        ((calls, cost),) = self.fetch(
            "SELECT coalesce(sum(calls), 0), sum(cost) FROM unattributed_hourly"
            " WHERE hour >= ? AND hour < ? AND trace_id = ''"
            " AND (attribution <> 'attributed' OR (present & ?) <> ?)",
            params,
        )
        out = [LossShape(steps, *acc) for steps, acc in found.items()]
        if calls:
            out.append(LossShape((), 0, int(calls), self._money(cost)))
        return out

    def trace_steps(
        self,
        trace_ids: Sequence[str],
        near: Sequence[float] | None = None,
        window: float = _DAY,
    ) -> list[TraceStep]:
        out: list[TraceStep] = []
        if near is None:
            pairs = [(0.0, t) for t in trace_ids]
        else:
            # In time order, so that each chunk's window is narrow: on PostgreSQL it then reads
            # the trace index of a few day partitions instead of all of them.
            pairs = sorted(zip(near, trace_ids, strict=True))
        ts_column = self.dialect.unindexed("ts")  # the trace index finds the rows; ts narrows
        every_day = self._trace_days() if near is None else ""  # once, not per chunk
        fields_of, no_missing = _FIELDS_OF_MASK, ()
        for i in range(0, len(pairs), _CHUNK):
            chunk = [t for _, t in pairs[i : i + _CHUNK]]
            slots = ", ".join("?" * len(chunk))
            params: list[Any] = list(chunk)
            bounds = ""
            if near is not None:
                bounds = f" AND {ts_column} >= ? AND {ts_column} < ?"
                low, high = pairs[i][0] - window, pairs[i + len(chunk) - 1][0] + window
                params += [low, high]
                days = self._trace_days(low, high)
            else:
                days = every_day
            rows = self.fetch(
                "SELECT trace_id, ts, hop, unit, outcome, missing, owner_team, workflow_id,"
                f" feature, tenant, user_id, 'hop' FROM hops WHERE {days}trace_id IN ({slots})"
                f"{bounds} UNION ALL SELECT trace_id, ts, 'http', route, outcome, missing,"
                " owner_team, workflow_id, feature, tenant, user_id, 'request' FROM requests"
                f" WHERE {days}trace_id IN ({slots}){bounds}",
                params * 2,
            )
            for (
                trace,
                ts,
                hop,
                unit,
                outcome,
                missing,
                team,
                workflow,
                feature,
                tenant,
                user,
                kind,
            ) in rows:
                mask = (
                    (1 if team else 0)
                    | (2 if workflow else 0)
                    | (4 if feature else 0)
                    | (8 if tenant else 0)
                    | (16 if user else 0)
                )
                out.append(
                    TraceStep(
                        str(trace),
                        float(ts or 0),
                        str(kind),
                        hop,
                        unit,
                        outcome,
                        tuple(m for m in missing.split(",") if m) if missing else no_missing,
                        fields_of[mask],
                    )
                )
        return out

    def top_requests(self, start: float, end: float, n: int) -> list[TraceSpend]:
        ((calls,),) = self.fetch(
            "SELECT coalesce(sum(calls), 0) FROM rollup_hourly WHERE hour >= ? AND hour < ?",
            (start - start % _HOUR, end),
        )
        ts = self._full_scan_hint(int(calls))
        rows = self.fetch(
            f"SELECT trace_id, sum({self.dialect.cost}) AS spend FROM provider_calls"
            f" WHERE {ts} >= ? AND {ts} < ? AND trace_id IS NOT NULL"
            " GROUP BY trace_id ORDER BY spend DESC, trace_id LIMIT ?",
            (start, end, n),
        )
        return [TraceSpend(str(t), self._money(s)) for t, s in rows if s is not None]


def _shape_step(
    rank: int, kind: str, hop: str, unit: str, outcome: str | None, missing: str, present: int
) -> ShapeStep:
    """One step of `Dialect.loss_shapes`' JSON; ``?`` for what is not known."""
    if kind == "call":  # hop and unit hold the provider and the model
        hop, unit = "call", f"{hop or '?'} {unit or '?'}"
    return ShapeStep(
        kind,
        hop or "?",
        unit or "?",
        outcome,
        tuple(m for m in missing.split(",") if m),
        _FIELDS_OF_MASK[int(present) & _ALL_FIELDS],
    )


def _ceil(value: float) -> int:
    if not -_FAR < value < _FAR:  # infinities, and beyond any bucket a 64-bit column holds
        return _FAR if value > 0 else -_FAR
    whole = int(value)
    return whole + 1 if whole < value else whole


def _floor(value: float) -> int:
    return -_ceil(-value)
