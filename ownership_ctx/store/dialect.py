"""SQL per dialect, generated from the table definitions (`ownership_ctx.store.tables`).

A `Dialect` holds only what differs between SQLite and PostgreSQL: column types, the
placeholder, how money is summed (integer nano-dollars on SQLite, exact NUMERIC on
PostgreSQL), and the few spellings that differ. Every statement the stores run is built here.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from decimal import Decimal
from typing import Final

from ownership_ctx.schema import money

from .tables import (
    DIMENSION_SOURCES,
    DIMENSIONS,
    MEASURES,
    PRESENCE,
    REQUEST_DIMENSIONS,
    ROLLUPS,
    TABLES,
    UNATTRIBUTED,
    ColumnKind,
    Rollup,
)

__all__ = ["DAY_OF_ROW", "FIRSTS", "LOST_TRACES_STORED", "POSTGRESQL", "SQLITE", "Dialect"]

#: How far around a request its trace's first request is looked for (seconds): on PostgreSQL
#: the probe then reads the day partitions around the row, not all of them.
_TRACE_WINDOW: Final = 86400
#: PostgreSQL: the requests rows a statement inserted (the ``inserted`` CTE, which the table
#: does not show yet), each marked whether it is the first stored of its trace.
FIRSTS: Final = (
    "firsts AS (SELECT i.*, (i.trace_id IS NULL OR (i.nth = 1 AND s.trace_id IS NULL))"
    " AS first_of_trace FROM (SELECT inserted.*, row_number() OVER"
    " (PARTITION BY inserted.trace_id ORDER BY inserted.event_id) AS nth FROM inserted) AS i"
    # The batch's traces already stored, looked for in the day partitions around the batch
    # (bounds computed once, so PostgreSQL prunes the others when the statement starts).
    " LEFT JOIN (SELECT DISTINCT p.trace_id FROM requests p"
    " WHERE p.trace_id IN (SELECT trace_id FROM inserted)"
    f" AND p.ts > (SELECT min(ts) FROM inserted) - {_TRACE_WINDOW}"
    f" AND p.ts < (SELECT max(ts) FROM inserted) + {_TRACE_WINDOW}) AS s"
    " ON s.trace_id = i.trace_id)"
)

_UNATTRIBUTED_KEYS: Final = ("hour", "trace_id", "attribution", "present")
_STEP_COLUMNS: Final = "trace_id, event_id, ts, kind, hop, unit, outcome, missing, present"
#: A row's UTC day (days since the epoch), from its hour: what SQLite's trace indexes lead
#: with (`Dialect.trace_days`).
DAY_OF_ROW: Final = "hour / 86400"
#: Every trace of ``unattributed_hourly`` per day (an upgrade fills ``loss_steps`` from it),
#: with the time around its calls (its hours' first calls, and the hour after the last).
LOST_TRACES_STORED: Final = (
    f"SELECT trace_id, {DAY_OF_ROW} AS day, min(first_ts) - {_TRACE_WINDOW} AS lo,"
    f" max(first_ts) + {3600 + _TRACE_WINDOW} AS hi FROM unattributed_hourly"
    " WHERE trace_id <> '' GROUP BY 1, 2"
)
_UNATTRIBUTED_MEASURES: Final = ("calls", "cost", "first_ts", "provider", "model")


@dataclasses.dataclass(frozen=True)
class Dialect(abc.ABC):
    name: str
    mark: str  # the driver's placeholder
    types: dict[ColumnKind, str]
    integer: str  # the type of counters and keys
    #: Money in rollups: integer nano-dollars (SQLite, which has no decimal type: a float sum
    #: would drift) or exact NUMERIC.
    nanos: bool
    excluded: str  # how an upsert names the proposed row
    least: str  # the two-argument minimum
    keyed_table_suffix: str  # for tables with a primary key and no other use for a rowid
    #: Trace indexes on (day, trace id): a write touches the recent days' part of them, not a
    #: random page of all of it (SQLite; PostgreSQL's day partitions do that already).
    day_led_trace_index: bool

    # -- names -------------------------------------------------------------------------------

    def money_column(self, measure: str) -> str:
        """A money measure's rollup column (``cost_nanousd`` on SQLite, ``cost`` here)."""
        return f"{measure}_nanousd" if self.nanos else measure

    def measure_columns(self) -> tuple[str, ...]:
        return tuple(self.money_column(m.name) if m.kind == "money" else m.name for m in MEASURES)

    @property
    def cost(self) -> str:
        """The summable cost column of a provider_calls row."""
        return "cost_nanousd" if self.nanos else "cost"

    @property
    def cost_avoided(self) -> str:
        return "cost_avoided_nanousd" if self.nanos else "cost_avoided"

    def to_money(self, value: object) -> Decimal:
        """A summed money column as exact dollars (None -> 0)."""
        return money.from_nanos(value) if self.nanos else money.from_sum(value)

    def sql(self, text: str) -> str:
        """``text``, written with ``?`` placeholders and ``%`` for modulo, as this driver takes
        it with parameters (psycopg: ``%s``, and ``%%`` for a literal ``%``). Statements run
        without parameters are sent as written."""
        if self.mark == "?":
            return text
        return text.replace("%", "%%").replace("?", self.mark)

    # -- DDL ---------------------------------------------------------------------------------

    def rollup_ddl(self, rollup: Rollup) -> str:
        dims = ", ".join(f"{d} TEXT NOT NULL" for d in DIMENSIONS)
        measures = ", ".join(
            f"{column} "
            + (self.types["cost"] if m.kind == "money" and not self.nanos else self.integer)
            + " NOT NULL DEFAULT 0"
            for m, column in zip(MEASURES, self.measure_columns(), strict=True)
        )
        keys = ", ".join(("hour", *DIMENSIONS))
        tail = self.keyed_table_suffix
        return (
            f"CREATE TABLE IF NOT EXISTS {rollup.name} (hour {self.integer} NOT NULL, {dims},"
            f" {measures}, PRIMARY KEY ({keys})){tail}"
        )

    def unattributed_ddl(self) -> str:
        cost = self.integer if self.nanos else self.types["cost"]
        tail = self.keyed_table_suffix
        return (
            f"CREATE TABLE IF NOT EXISTS unattributed_hourly (hour {self.integer} NOT NULL,"
            " trace_id TEXT NOT NULL, attribution TEXT NOT NULL,"
            f" present {self.integer} NOT NULL, calls {self.integer} NOT NULL,"
            f" cost {cost}, first_ts {self.types['real']} NOT NULL, provider TEXT, model TEXT,"
            f" PRIMARY KEY (hour, trace_id, attribution, present)){tail}"
        )

    # -- the write path: rollups of the rows just inserted ---------------------------------

    def delta_select(self, table: str, source: str) -> str:
        """The rows of ``table`` read from ``source`` (``FROM ...``: the rows a transaction
        inserted) aggregated per hour x dimensions: the rollup columns, in rollup order."""
        if table == "provider_calls":
            dims = [f"coalesce({DIMENSION_SOURCES[d]}, '')" for d in DIMENSIONS]
            values = [m.calls for m in MEASURES]
        else:
            dims = [f"coalesce({d}, '')" if d in REQUEST_DIMENSIONS else "''" for d in DIMENSIONS]
            values = [m.requests for m in MEASURES]
        row = source.split()[1]  # "FROM <table or CTE> ...": the rows' name in the query
        values = [
            v.format(
                cost=self.cost,
                cost_avoided=self.cost_avoided,
                first_of_trace=self.first_of_trace(row),
            )
            for v in values
        ]
        named = [
            f"{expression} AS {name}"
            for expression, name in zip(
                (*dims, *values), (*DIMENSIONS, *self.measure_columns()), strict=True
            )
        ]
        positions = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 2))
        return f"SELECT {', '.join(('hour', *named))} {source} GROUP BY {positions}"

    def rollup_upsert(self, rollup: Rollup, delta: str) -> str:
        """Add ``delta`` (a table or CTE of `delta_select` rows) to ``rollup``'s buckets.
        Every measure is a sum, so a coarser tier sums the hourly delta."""
        columns = self.measure_columns()
        keys = ("hour", *DIMENSIONS)
        bucket = "hour" if rollup.bucket == 3600 else f"(hour - hour % {rollup.bucket})"
        sums = [f"sum({c})" for c in columns]
        positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
        update = ", ".join(f"{c} = {rollup.name}.{c} + {self.excluded}.{c}" for c in columns)
        # Key order: hosts updating the same buckets concurrently queue on row locks instead
        # of deadlocking (PostgreSQL). "WHERE TRUE": SQLite's upsert after a SELECT needs one.
        return (
            f"INSERT INTO {rollup.name} ({', '.join((*keys, *columns))})"
            f" SELECT {', '.join((bucket, *DIMENSIONS, *sums))} FROM {delta} WHERE 1 = 1"
            f" GROUP BY {positions} ORDER BY {positions}"
            f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update}"
        )

    def first_of_trace(self, row: str) -> str:
        """True for a requests row (named ``row`` in the query) stored before any other of
        its trace (SQLite's rowids are in insertion order). A trace is looked for within a
        day of the row: a user action does not last longer, and the probe stays small."""
        day = f"{row}.{DAY_OF_ROW}"
        return (
            "NOT EXISTS (SELECT 1 FROM requests p WHERE"
            f" {self.trace_days('p.', [f'{day} - 1', day, f'{day} + 1'])}"
            f"p.trace_id = {row}.trace_id AND p.id < {row}.id"
            f" AND p.ts > {row}.ts - {_TRACE_WINDOW} AND p.ts < {row}.ts + {_TRACE_WINDOW})"
        )

    def presence(self, prefix: str = "") -> str:
        """The bit pattern of the ownership fields a row carries (``prefix``: its alias.)."""
        return " + ".join(
            f"CASE WHEN coalesce({prefix}{c}, '') = '' THEN 0 ELSE {1 << i} END"
            for i, c in enumerate(PRESENCE)
        )

    def unattributed_select(self, source: str) -> str:
        """Unattributed calls per hour x trace x attribution x presence, from ``source``
        (``FROM ... WHERE ...``, ending in a WHERE clause)."""
        return (
            f"SELECT hour, coalesce(trace_id, ''), coalesce(attribution, ''), {self.presence()},"
            f" count(*), sum({self.cost}), min(ts), min(provider),"
            f" min(coalesce(response_model, request_model)) {source} AND {UNATTRIBUTED}"
            " GROUP BY 1, 2, 3, 4"
        )

    def unattributed_upsert(self, source: str) -> str:
        least = self.least
        x = self.excluded
        t = "unattributed_hourly"
        # A NULL sum (every call unpriced) stays NULL until a priced call adds to it.
        cost = (
            f"CASE WHEN {t}.cost IS NULL THEN {x}.cost WHEN {x}.cost IS NULL THEN {t}.cost"
            f" ELSE {t}.cost + {x}.cost END"
        )
        return (
            f"INSERT INTO {t} ({', '.join((*_UNATTRIBUTED_KEYS, *_UNATTRIBUTED_MEASURES))})"
            f" {self.unattributed_select(source)} ORDER BY 1, 2, 3, 4"
            f" ON CONFLICT ({', '.join(_UNATTRIBUTED_KEYS)}) DO UPDATE SET"
            f" calls = {t}.calls + {x}.calls, cost = {cost},"
            f" first_ts = {least}({t}.first_ts, {x}.first_ts),"
            f" provider = {self._least_text(t, x, 'provider')},"
            f" model = {self._least_text(t, x, 'model')}"
        )

    def _least_text(self, table: str, proposed: str, column: str) -> str:
        # The smaller of two values, either of which may be NULL (SQLite's min() is then NULL).
        a, b = f"{table}.{column}", f"{proposed}.{column}"
        return f"coalesce({self.least}({a}, {b}), {a}, {b})"

    def unpriced_reason(self) -> str:
        """Why a provider_calls row has no cost: what the event said, else (events stored
        before they said why) derived from the row."""
        stored = self.json_text("body", "unpriced_reason")
        return (
            f"coalesce({stored}, CASE WHEN coalesce(status, '') <> 'ok' THEN 'failed attempt'"
            " WHEN input_tokens IS NULL THEN 'no usage reported' ELSE 'unpriced' END)"
        )

    def unpriced_ddl(self) -> str:
        return (
            f"CREATE TABLE IF NOT EXISTS unpriced_hourly (hour {self.integer} NOT NULL,"
            f" reason TEXT NOT NULL, calls {self.integer} NOT NULL,"
            f" PRIMARY KEY (hour, reason)){self.keyed_table_suffix}"
        )

    def unpriced_upsert(self, source: str) -> str:
        """Count the unpriced calls of ``source`` (``FROM ... WHERE ...``) per hour and reason."""
        return (
            f"INSERT INTO unpriced_hourly (hour, reason, calls)"
            f" SELECT hour, {self.unpriced_reason()}, count(*) {source} AND {self.cost} IS NULL"
            " GROUP BY 1, 2 ORDER BY 1, 2 ON CONFLICT (hour, reason)"
            f" DO UPDATE SET calls = unpriced_hourly.calls + {self.excluded}.calls"
        )

    # -- the hop breakdown: the steps of the traces that lost their fields -----------------

    def loss_steps_ddl(self) -> list[str]:
        """``loss_steps``: the hops and request events of every trace with a call in
        ``unattributed_hourly``, copied there as they are written (what the hop breakdown
        reads, by trace, without searching the raw tables); and the index that tells the
        write path which traces those are."""
        return [
            "CREATE TABLE IF NOT EXISTS loss_steps (trace_id TEXT NOT NULL,"
            f" event_id TEXT NOT NULL, ts {self.types['real']}, kind TEXT NOT NULL,"
            " hop TEXT NOT NULL, unit TEXT NOT NULL, outcome TEXT, missing TEXT NOT NULL,"
            f" present {self.integer} NOT NULL,"
            f" PRIMARY KEY (trace_id, event_id)){self.keyed_table_suffix}",
            "CREATE INDEX IF NOT EXISTS unattributed_hourly_trace"
            " ON unattributed_hourly (trace_id, first_ts)",
        ]

    def _step_values(self, table: str, prefix: str) -> str:
        """A hops or requests row (columns prefixed ``prefix``) as a ``loss_steps`` row."""
        if table == "hops":
            kind, hop, unit = "'hop'", f"coalesce({prefix}hop, '')", f"coalesce({prefix}unit, '')"
        else:
            kind, hop, unit = "'request'", "'http'", f"coalesce({prefix}route, '')"
        return (
            f"{prefix}trace_id, coalesce({prefix}event_id, ''), {prefix}ts, {kind}, {hop},"
            f" {unit}, {prefix}outcome, coalesce({prefix}missing, ''), {self.presence(prefix)}"
        )

    def _is_loss_step(self, row: str) -> str:
        """Whether the hops or requests row ``row`` is kept in ``loss_steps``: its trace has
        an hour in ``unattributed_hourly`` whose first call is at most a day after the row and
        at most a day and an hour before it. One rule, whichever of the two was written
        first, and on upgrade."""
        return (
            f"EXISTS (SELECT 1 FROM unattributed_hourly u WHERE u.trace_id = {row}.trace_id"
            f" AND u.first_ts <= {row}.ts + {_TRACE_WINDOW}"
            f" AND u.first_ts > {row}.ts - {3600 + _TRACE_WINDOW}{self.per_row})"
        )

    def loss_steps_of_rows(self, table: str, source: str) -> str:
        """Copy the hops or requests rows of ``source`` (``FROM <name> ... WHERE ...``: the
        rows a transaction wrote) that are loss steps into ``loss_steps``."""
        return (
            f"INSERT INTO loss_steps ({_STEP_COLUMNS}) SELECT {self._step_values(table, '')}"
            f" {source} AND {self._is_loss_step(source.split()[1])}"
            " ON CONFLICT (trace_id, event_id) DO NOTHING"
        )

    def loss_steps_of_traces(self, traces: str) -> list[str]:
        """Copy the stored hops and requests rows of ``traces`` (a query of ``trace_id, day,
        lo, hi``: each trace's rows with ``lo <= ts < hi``, within a day before ``day`` and
        two after, are looked at) that are loss steps into ``loss_steps``."""
        return [
            f"INSERT INTO loss_steps ({_STEP_COLUMNS})"
            f" SELECT {self._step_values(table, alias + '.')} FROM ({traces}) AS t"
            f" {self.rows_of_trace(table, alias)} WHERE {self._is_loss_step(alias)}"
            " ON CONFLICT (trace_id, event_id) DO NOTHING"
            for table, alias in (("hops", "h"), ("requests", "r"))
        ]

    def lost_traces_of_calls(self, source: str) -> str:
        """The traces of the unattributed calls of ``source`` (``FROM ... WHERE ...``), per
        day of those calls, with the time where its loss steps may be: a day before the
        calls to a day after the hour of the last (`rows_of_trace`)."""
        # Grouped off the trace index: SQLite would walk all of it rather than sort the few.
        return (
            f"SELECT trace_id, {DAY_OF_ROW} AS day, min(ts) - {_TRACE_WINDOW} AS lo,"
            f" max(ts) + {3600 + _TRACE_WINDOW} AS hi {source} AND trace_id <> ''"
            f" AND {UNATTRIBUTED} GROUP BY {self.unindexed('trace_id')}, 2"
        )

    def loss_shapes(self) -> str:
        """Traces with unattributed calls in an hour range (parameters: first hour, end hour,
        then the required fields' presence mask twice), grouped by their *shape*: the steps
        (calls from ``unattributed_hourly``; hops and request events from ``loss_steps``,
        within a day of the trace's first such call) in time order, times left out. Per
        shape: the steps (each ``[rank, kind, hop, unit, outcome, missing, presence]``, joined
        by commas in no particular order: sort by rank), traces, calls, cost. A call's step
        holds its provider and model where a hop's holds hop and unit. Coverage works out
        where each shape lost its fields once, instead of once per trace. (No ``'?'``
        literals: PostgreSQL's driver would read them as placeholders.)"""
        window = _TRACE_WINDOW
        step = self.json_list(
            "row_number() OVER (PARTITION BY trace_id ORDER BY ts, o)",
            "kind",
            "hop",
            "unit",
            "outcome",
            "missing",
            "present",
        )
        return (
            "WITH u AS (SELECT trace_id, attribution, present, min(first_ts) AS first_ts,"
            " sum(calls) AS calls, sum(cost) AS cost, min(provider) AS provider,"
            " min(model) AS model FROM unattributed_hourly WHERE hour >= ? AND hour < ?"
            " AND trace_id <> '' AND (attribution <> 'attributed' OR (present & ?) <> ?)"
            " GROUP BY trace_id, attribution, present),"
            " t AS (SELECT trace_id, min(first_ts) AS first_ts FROM u GROUP BY trace_id),"
            " s AS (SELECT trace_id, first_ts AS ts, 2 AS o, 'call' AS kind,"
            " coalesce(provider, '') AS hop, coalesce(model, '') AS unit,"
            " attribution AS outcome, '' AS missing, present, calls, cost FROM u"
            " UNION ALL SELECT l.trace_id, l.ts, CASE WHEN l.kind = 'hop' THEN 0 ELSE 1 END,"
            " l.kind, l.hop, l.unit, l.outcome, l.missing, l.present, 0, 0"
            " FROM t JOIN loss_steps l ON l.trace_id = t.trace_id"
            f" AND l.ts >= t.first_ts - {window} AND l.ts < t.first_ts + {window}),"
            f" ranked AS (SELECT trace_id, {step} AS step, calls, cost FROM s),"
            f" shapes AS (SELECT {self.text_agg('step')} AS shape, sum(calls) AS calls,"
            " sum(cost) AS cost FROM ranked GROUP BY trace_id)"
            " SELECT shape, count(*), sum(calls), sum(cost) FROM shapes GROUP BY shape"
        )

    def unindexed(self, column: str) -> str:
        """``column`` in a WHERE clause that must not choose its index (SQLite would walk the
        ``ts`` index for a range rather than the trace index for a list of ids)."""
        return f"+{column}" if self.name == "sqlite" else column

    def insert_columns(self, table: str) -> str:
        return ", ".join(TABLES[table].names)

    # -- what differs beyond names ----------------------------------------------------------

    @abc.abstractmethod
    def raw_table_ddl(self, table: str) -> list[str]:
        """CREATE statements of one raw table, its indexes and its ``<table>_json`` view."""

    @abc.abstractmethod
    def json_text(self, column: str, key: str) -> str:
        """A top-level key of a JSON column as text."""

    @abc.abstractmethod
    def rows_of_trace(self, table: str, alias: str) -> str:
        """A join of ``t`` (``trace_id``, ``day``, ``lo``, ``hi``) to the rows of ``table``
        (as ``alias``) of each trace with ``lo <= ts < hi`` (from the day before ``day`` to
        two days after it), found by the trace index, one trace at a time."""

    def trace_days(self, prefix: str, days: Sequence[str]) -> str:
        """What a lookup by trace id adds before its ``trace_id`` condition (``... AND``)
        where the trace indexes lead with the day (`day_led_trace_index`): the row (columns
        prefixed ``prefix``) is on one of ``days`` (SQL expressions of UTC days since the
        epoch, or one subquery). Elsewhere nothing."""
        if not self.day_led_trace_index:
            return ""
        return f"{prefix}{DAY_OF_ROW} IN ({', '.join(days)}) AND "

    @property
    @abc.abstractmethod
    def per_row(self) -> str:
        """What keeps a correlated subquery one (an index probe per row), rather than a join
        that reads the whole table."""

    @abc.abstractmethod
    def json_list(self, *values: str) -> str:
        """A JSON array of ``values`` (SQL expressions), as text."""

    @abc.abstractmethod
    def text_agg(self, value: str) -> str:
        """The texts of a group joined by commas (in no particular order)."""

    def schema(self) -> list[str]:
        """Every CREATE statement of the store, in order."""
        statements = []
        for table in TABLES:
            statements += self.raw_table_ddl(table)
        statements += [self.rollup_ddl(r) for r in ROLLUPS]
        statements.append(self.unattributed_ddl())
        statements.append(self.unpriced_ddl())
        statements += self.loss_steps_ddl()
        return statements


_JSON_BOOL: Final = "json(CASE WHEN {c} IS NULL THEN 'null' WHEN {c} THEN 'true' ELSE 'false' END)"


@dataclasses.dataclass(frozen=True)
class _SQLite(Dialect):
    def raw_table_ddl(self, table: str) -> list[str]:
        t = TABLES[table]
        body = ", ".join(f"{c.name} {self.types[c.kind]}" for c in t.columns)
        pairs = ", ".join(
            f"'{c.key}', " + (_JSON_BOOL.format(c=c.name) if c.kind == "bool" else c.name)
            for c in t.read_columns
        )
        return [
            f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {body})",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_event_id ON {table} (event_id)",
            f"CREATE INDEX IF NOT EXISTS {table}_day_trace ON {table} ({DAY_OF_ROW}, trace_id)",
            f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)",
            f"CREATE VIEW IF NOT EXISTS {table}_json AS SELECT id, event_id, ts, trace_id,"
            f" json_patch(json_object({pairs}), body) AS event FROM {table}",
        ]

    def json_text(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"

    def rows_of_trace(self, table: str, alias: str) -> str:
        # SQLite loops over t and looks each trace up; "+ts" keeps it off the ts index.
        ts = self.unindexed(f"{alias}.ts")
        days = ["t.day - 1", "t.day", "t.day + 1", "t.day + 2"]
        return (
            f"JOIN {table} {alias} ON {self.trace_days(alias + '.', days)}"
            f"{alias}.trace_id = t.trace_id AND {ts} >= t.lo AND {ts} < t.hi"
        )

    @property
    def per_row(self) -> str:
        return ""  # SQLite runs a correlated EXISTS as it is written

    def json_list(self, *values: str) -> str:
        return f"json_array({', '.join(values)})"

    def text_agg(self, value: str) -> str:
        return f"group_concat({value}, ',')"


@dataclasses.dataclass(frozen=True)
class _Postgres(Dialect):
    def raw_table_ddl(self, table: str) -> list[str]:
        # Partitioned by day on ts (`partition_ddl`): retention drops whole days. The primary
        # key must hold the partition key: (event_id, ts) -- a replayed event has both.
        t = TABLES[table]
        body = ", ".join(
            f"{c.name} {self.types[c.kind]}" + (" NOT NULL" if c.name in ("event_id", "ts") else "")
            for c in t.columns
        )
        pairs = ", ".join(
            f"'{c.key}', " + (f"{c.name}::text" if c.kind == "cost" else c.name)
            for c in t.read_columns
        )
        return [
            f"CREATE TABLE IF NOT EXISTS {table} ({body}, PRIMARY KEY (event_id, ts))"
            " PARTITION BY RANGE (ts)",
            f"CREATE INDEX IF NOT EXISTS {table}_trace ON {table} (trace_id)",
            f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)",
            # The whole event as JSON for SQL users (the body holds only what has no column).
            f"CREATE OR REPLACE VIEW {table}_json AS SELECT event_id, ts, trace_id,"
            f" jsonb_strip_nulls(jsonb_build_object({pairs})) || body AS event FROM {table}",
        ]

    def json_text(self, column: str, key: str) -> str:
        return f"{column}->>'{key}'"

    def rows_of_trace(self, table: str, alias: str) -> str:
        # A lateral lookup per trace (OFFSET 0 keeps the planner from turning it into a hash
        # join over every partition: measured 3.5 s at 10M events): the trace index of only
        # the day partitions within the window (pruned at run time, per trace).
        return (
            f"CROSS JOIN LATERAL (SELECT * FROM {table} x WHERE x.trace_id = t.trace_id"
            f" AND x.ts >= t.lo AND x.ts < t.hi OFFSET 0) AS {alias}"
        )

    @property
    def per_row(self) -> str:
        # An EXISTS with an OFFSET is not turned into a semi-join (a hash of the whole table
        # for a few rows): it stays an index probe per row.
        return " OFFSET 0"

    def json_list(self, *values: str) -> str:
        return f"json_build_array({', '.join(values)})::text"

    def text_agg(self, value: str) -> str:
        return f"string_agg({value}, ',')"

    def first_of_trace(self, row: str) -> str:
        """No rowids here. A batch's rows come from `FIRSTS` (the inserted rows, each marked
        first when no stored row has its trace and it has the smallest event id of its trace
        in the batch: a window, not a per-row search of the batch); over the stored table (an
        upgrade), by event id."""
        if row == "firsts":
            return "firsts.first_of_trace"
        return (
            f"NOT EXISTS (SELECT 1 FROM requests p WHERE p.trace_id = {row}.trace_id"
            f" AND p.event_id < {row}.event_id AND p.ts > {row}.ts - {_TRACE_WINDOW}"
            f" AND p.ts < {row}.ts + {_TRACE_WINDOW})"
        )

    @staticmethod
    def partition_name(table: str, day: int) -> str:
        """The partition of ``table`` holding UTC day ``day`` (days since the epoch)."""
        return f"{table}_d{day}"

    def partition_ddl(self, table: str, day: int) -> str:
        """Create and attach the day's partition unless it is there. Attaching locks the
        parent against other DDL only; ``CREATE TABLE ... PARTITION OF`` would lock out its
        writers until commit, and with several hosts, one writing a day while another
        creates the next, deadlock against their inserts (which lock the tables in another
        order). The index and key of the parent are built on the empty table as it attaches."""
        name, start = self.partition_name(table, day), day * 86400
        return (
            f"DO $$ BEGIN IF to_regclass('{name}') IS NULL THEN"
            f" CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS);"
            f" ALTER TABLE {table} ATTACH PARTITION {name}"
            f" FOR VALUES FROM ({start}) TO ({start + 86400}); END IF; END $$"
        )


SQLITE: Final = _SQLite(
    name="sqlite",
    mark="?",
    types={
        "text": "TEXT",
        "int": "INTEGER",
        "real": "REAL",
        "bool": "INTEGER",
        "cost": "TEXT",
        "nanos": "INTEGER",
        "json": "TEXT",
    },
    integer="INTEGER",
    nanos=True,
    excluded="excluded",
    least="min",
    keyed_table_suffix=" WITHOUT ROWID",
    day_led_trace_index=True,
)
POSTGRESQL: Final = _Postgres(
    name="postgresql",
    mark="%s",
    types={
        "text": "TEXT",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "cost": "NUMERIC",
        "nanos": "BIGINT",
        "json": "JSONB",
    },
    integer="BIGINT",
    nanos=False,
    excluded="EXCLUDED",
    least="least",
    keyed_table_suffix="",
    day_led_trace_index=False,
)
