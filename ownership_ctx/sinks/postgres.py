"""The event store on PostgreSQL (psycopg 3), for many hosts writing to one database.

Same tables, columns and rollups as `ownership_ctx.sinks.sqlite` (costs as exact ``NUMERIC``
here, bodies as ``JSONB``). A batch is one transaction:

1. ``COPY`` each table's rows into a per-connection temporary staging table;
2. ``INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING RETURNING ...`` moves them into
   the table, and in the same statement the returned rows (exactly the ones inserted, never a
   replayed duplicate) are aggregated and upserted into ``rollup_hourly``, in key order so
   that hosts updating the same buckets concurrently queue on row locks instead of
   deadlocking.

psycopg is imported when the store first connects, so the module imports without it.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from ownership_ctx.sinks.query import (
    DIMENSIONS,
    EventQueries,
    ForkSafeConnections,
    RollupRow,
    event_ids_sql,
    rollup_query,
)
from ownership_ctx.sinks.sqlite import (
    COLUMNS,
    READ_COLUMNS,
    ROLLUP_MEASURES,
    Kind,
    Rows,
    by_time,
    read_sql,
    rebuild,
    split_rows,
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore"]

_PG_TYPES: Final[dict[Kind, str]] = {
    "text": "TEXT",
    "int": "BIGINT",
    "real": "DOUBLE PRECISION",
    "bool": "BOOLEAN",
    "cost": "NUMERIC",
    "nanos": "BIGINT",
    "json": "JSONB",
}
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SCHEMA_LOCK: Final = 0x6F776E6572736870  # advisory lock id: b"ownershp"


def _schema_sql() -> list[str]:
    statements = []
    for table, cols in COLUMNS.items():
        body = ", ".join(
            f"{name} {_PG_TYPES[kind]}" + (" PRIMARY KEY" if name == "event_id" else "")
            for name, _, kind in cols
        )
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_trace ON {table} (trace_id)")
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")
        pairs = ", ".join(
            f"'{key}', " + (f"{column}::text" if kind == "cost" else column)
            for column, key, kind in READ_COLUMNS[table]
        )
        # The whole event as JSON for SQL users (the body holds only what has no column).
        statements.append(
            f"CREATE OR REPLACE VIEW {table}_json AS SELECT event_id, ts, trace_id,"
            f" jsonb_strip_nulls(jsonb_build_object({pairs})) || body AS event FROM {table}"
        )
    dims = ", ".join(f"{d} TEXT NOT NULL" for d in DIMENSIONS)
    measures = ", ".join(
        f"{m} {'NUMERIC' if kind == 'cost' else 'BIGINT'} NOT NULL DEFAULT 0"
        for m, kind in ROLLUP_MEASURES.items()
    )
    statements.append(
        f"CREATE TABLE IF NOT EXISTS rollup_hourly (hour BIGINT NOT NULL, {dims}, {measures},"
        f" PRIMARY KEY (hour, {', '.join(DIMENSIONS)}))"
    )
    return statements


def _stage(table: str) -> str:
    return f"_oc_stage_{table}"


def _columns(table: str) -> str:
    return ", ".join(name for name, _, _ in COLUMNS[table])


_UNATTRIBUTED: Final = "attribution IS DISTINCT FROM 'attributed' OR coalesce(owner_team, '') = ''"


def _move_sql(table: str) -> str:
    """Staging -> table (duplicates ignored), and for rolled-up tables the rollup upsert."""
    cols = _columns(table)
    insert = (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {_stage(table)}"
        " ON CONFLICT (event_id) DO NOTHING"
    )
    if table not in ("provider_calls", "requests"):
        return insert
    keys = ("hour", *DIMENSIONS)
    if table == "provider_calls":
        dims = [
            "coalesce(owner_team, '')",
            "coalesce(workflow_id, '')",
            "coalesce(feature, '')",
            "coalesce(tenant, '')",
            "coalesce(provider, '')",
            "coalesce(response_model, request_model, '')",
            "coalesce(service_tier, '')",
        ]
        values = {
            "calls": "count(*)",
            "requests": "0",
            "errors": "count(*) FILTER (WHERE status = 'error')",
            "retries": "count(*) FILTER (WHERE attempt > 1)",
            "fallbacks": "count(*) FILTER (WHERE fallback_of IS NOT NULL)",
            "app_cache_hits": "count(*) FILTER (WHERE app_cache_hit)",
            "unpriced_calls": "count(*) FILTER (WHERE cost IS NULL)",
            "input_tokens": "coalesce(sum(input_tokens), 0)",
            "output_tokens": "coalesce(sum(output_tokens), 0)",
            "cache_read_tokens": "coalesce(sum(cache_read_tokens), 0)",
            "cache_write_tokens": "coalesce(sum(cache_write_tokens), 0)",
            "reasoning_tokens": "coalesce(sum(reasoning_tokens), 0)",
            "cost": "coalesce(sum(cost), 0)",
            "unattributed_cost": f"coalesce(sum(cost) FILTER (WHERE {_UNATTRIBUTED}), 0)",
            "cost_avoided": "coalesce(sum(cost_avoided), 0)",
        }
    else:
        dims = [
            "coalesce(owner_team, '')",
            "coalesce(workflow_id, '')",
            "coalesce(feature, '')",
            "coalesce(tenant, '')",
            "''",
            "''",
            "''",
        ]
        values = {m: "0" for m in ROLLUP_MEASURES}
        values["requests"] = "count(*)"
    positions = ", ".join(str(i) for i in range(1, len(keys) + 1))
    select = ", ".join(("hour", *dims, *(values[m] for m in ROLLUP_MEASURES)))
    update = ", ".join(f"{m} = rollup_hourly.{m} + EXCLUDED.{m}" for m in ROLLUP_MEASURES)
    return (
        f"WITH inserted AS ({insert} RETURNING *)"
        f" INSERT INTO rollup_hourly ({', '.join((*keys, *ROLLUP_MEASURES))})"
        f" SELECT {select} FROM inserted GROUP BY {positions} ORDER BY {positions}"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {update}"
    )


_MOVES: Final = {table: _move_sql(table) for table in COLUMNS}
_COPIES: Final = {
    table: f"COPY {_stage(table)} ({_columns(table)}) FROM STDIN" for table in COLUMNS
}


class PostgresStore(ForkSafeConnections, EventQueries):
    """Backend (``write_batch``) and reader (`EventQueries`) for one PostgreSQL schema."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float = 60.0,
        readonly: bool = False,
    ) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema must be a plain SQL identifier, not {schema!r}")
        self.conninfo = conninfo
        self.schema = schema
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        # A read-only store (reports) runs no DDL: a missing schema or table is an error, and
        # every session is read-only, so a role with SELECT alone can read.
        self.readonly = readonly
        self._conn: psycopg.Connection[Any] | None = None
        self._reader: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PostgresStore(schema={self.schema!r})"

    def _connect(self, *, autocommit: bool) -> psycopg.Connection[Any]:
        import psycopg

        options = f"-c statement_timeout={int(self.statement_timeout * 1000)}"
        if self.schema:
            options += f" -c search_path={self.schema}"
        conn = psycopg.connect(
            self.conninfo,
            connect_timeout=max(1, int(self.connect_timeout)),
            options=options,
            autocommit=True,
        )
        if self.readonly:
            try:
                conn.execute("SET default_transaction_read_only = on")
                missing = [
                    t
                    for t in (*COLUMNS, "rollup_hourly")
                    if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None  # type: ignore[index]
                ]
            except BaseException:
                conn.close()
                raise
            if missing:
                conn.close()
                where = f"schema {self.schema!r}" if self.schema else "the search path"
                raise psycopg.errors.UndefinedTable(
                    f"no ownership_ctx table {missing[0]} in {where} (check the URL's ?schema=)"
                )
            conn.autocommit = autocommit
            return conn
        try:
            with conn.transaction():
                # One creator at a time: CREATE ... IF NOT EXISTS races between hosts.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if self.schema:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                for statement in _schema_sql():
                    conn.execute(statement)
            if not autocommit:
                for table in COLUMNS:
                    conn.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS {_stage(table)}"
                        f" (LIKE {table}) ON COMMIT DELETE ROWS"
                    )
            conn.autocommit = autocommit
        except BaseException:
            conn.close()
            raise
        return conn

    # -- writing -----------------------------------------------------------------------------

    def write_batch(self, events: list[Mapping[str, Any]]) -> None:
        """Insert the batch (ignoring stored event ids) and roll it up, in one transaction.

        Raises on operational errors (server down, ...): the pipeline spools and retries.
        An empty batch checks the server answers.
        """
        import psycopg

        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = self._connect(autocommit=False)
            try:
                if not events:
                    conn.execute("SELECT 1")
                    conn.rollback()
                    return
                try:
                    self._insert(conn, split_rows(events))
                except (
                    psycopg.DataError,
                    psycopg.IntegrityError,
                    psycopg.ProgrammingError,
                    TypeError,
                    ValueError,
                    OverflowError,
                ) as e:
                    if isinstance(e, psycopg.errors.UndefinedTable):
                        raise  # schema dropped under us: reconnecting recreates it
                    # An odd value must not hold back its batch: coerce and try once more.
                    self._insert(conn, _nul_free(split_rows(events, sanitize=True)))
            except psycopg.Error:
                self._drop(conn)
                raise

    def _insert(self, conn: psycopg.Connection[Any], rows: Rows) -> None:
        try:
            with conn.cursor() as cur:
                for table, table_rows in rows.items():
                    if not table_rows:
                        continue
                    with cur.copy(_COPIES[table]) as copy:
                        for row in table_rows:
                            copy.write_row(row)
                    cur.execute(_MOVES[table])
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise

    def _drop(self, conn: psycopg.Connection[Any]) -> None:
        if self._conn is conn:
            self._conn = None
        # Closing a broken connection may fail: it is gone either way.
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._drop(self._conn)
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    # -- reading (EventQueries) --------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        import psycopg

        with self._read_lock:
            if self._reader is None or self._reader.closed:
                self._reader = self._connect(autocommit=True)
            try:
                return self._reader.execute(sql, params).fetchall()
            except psycopg.OperationalError:
                reader, self._reader = self._reader, None
                reader.close()
                raise

    def rollups(
        self,
        start: float,
        end: float,
        group_by: Sequence[str] = (),
        where: Mapping[str, str | None] | None = None,
    ) -> list[RollupRow]:
        query = rollup_query(group_by, where, start, end, "%s", {})
        return query.rows(self._fetch(query.sql, query.params), nanos=False)

    def events_by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        found = [
            rebuild(table, row[:-1], row[-1])
            for table in COLUMNS
            for row in self._fetch(read_sql(table, "%s"), [trace_id])
        ]
        return sorted(found, key=by_time)

    def event_ids(self, kind: str | None = None) -> list[str]:
        return [eid for (eid,) in self._fetch(event_ids_sql(kind), [])]


def _nul_free(rows: Rows) -> Rows:
    """PostgreSQL text and JSONB cannot hold NUL: strip it from the JSON bodies too (where it
    is escaped; the typed columns lost theirs in sanitizing)."""
    out: Rows = {}
    for table, table_rows in rows.items():
        fixed = []
        for row in table_rows:
            values = list(row)
            body = values[-1]
            if isinstance(body, str) and "\\u0000" in body:
                values[-1] = body = body.replace("\\u0000", "")
            fixed.append(tuple(values))
        out[table] = fixed
    return out
