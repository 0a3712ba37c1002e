"""The event store on PostgreSQL (psycopg 3), for many hosts writing to one database.

Same tables, columns and rollups as the SQLite store (`ownership_ctx.store.tables`; costs as
exact ``NUMERIC`` here, bodies as ``JSONB``). A batch is one transaction:

1. ``COPY`` each table's rows into a per-connection temporary staging table;
2. ``INSERT ... SELECT ... ON CONFLICT (event_id) DO NOTHING RETURNING ...`` moves them into
   the table, and in the same statement the returned rows (exactly the ones inserted, never a
   replayed duplicate) are aggregated and upserted into every rollup, in key order so that
   hosts updating the same buckets concurrently queue on row locks instead of deadlocking.

psycopg is imported when the store first connects, so the module imports without it.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from .api import Pruned
from .base import StoreBase
from .dialect import FIRSTS, LOST_TRACES_STORED, POSTGRESQL
from .rows import Rows, split_rows
from .tables import ROLLED_UP, ROLLUPS, TABLES

if TYPE_CHECKING:
    import psycopg

__all__ = ["PostgresStore"]

_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SCHEMA_LOCK: Final = 0x6F776E6572736870  # advisory lock id: b"ownershp"
#: Held from the copy into ``loss_steps`` to the commit: a hop and the unattributed call of
#: its trace written at once by two hosts would each miss the other's uncommitted row.
_LOSS_LOCK: Final = 0x6F632D6C6F737373  # b"oc-losss"
_REQUIRED_TABLES: Final = (
    *TABLES,
    *(r.name for r in ROLLUPS),
    "unattributed_hourly",
    "unpriced_hourly",
    "loss_steps",
)


def _stage(table: str) -> str:
    return f"_oc_stage_{table}"


def _move_sql(table: str, key: str) -> str:
    """Staging -> table (duplicates ignored: ``key`` is the table's unique key), and for
    rolled-up tables every rollup upsert."""
    cols = POSTGRESQL.insert_columns(table)
    insert = (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {_stage(table)}"
        f" ON CONFLICT ({key}) DO NOTHING"
    )
    if table not in ROLLED_UP:
        return insert
    # Requests: which inserted rows start a trace (user actions), marked once for the batch.
    rows = "FROM firsts" if table == "requests" else "FROM inserted"
    steps = [
        f"inserted AS ({insert} RETURNING *)",
        *([FIRSTS] if table == "requests" else []),
        f"delta AS ({POSTGRESQL.delta_select(table, rows)})",
    ]
    for i, rollup in enumerate(ROLLUPS):
        steps.append(f"r{i} AS ({POSTGRESQL.rollup_upsert(rollup, 'delta')})")
    if table == "provider_calls":
        steps.append(f"u AS ({POSTGRESQL.unattributed_upsert('FROM inserted WHERE TRUE')})")
        steps.append(f"p AS ({POSTGRESQL.unpriced_upsert('FROM inserted WHERE TRUE')})")
    return f"WITH {', '.join(steps)} SELECT 1"


#: Per table: what copies the steps of the traces with unattributed calls into ``loss_steps``
#: from the staged rows (a replayed duplicate is copied again: the key ignores it).
_LOSS_STEPS: Final = {
    "hops": [POSTGRESQL.loss_steps_of_rows("hops", f"FROM {_stage('hops')} WHERE TRUE")],
    "requests": [
        POSTGRESQL.loss_steps_of_rows("requests", f"FROM {_stage('requests')} WHERE TRUE")
    ],
    "provider_calls": POSTGRESQL.loss_steps_of_traces(
        POSTGRESQL.lost_traces_of_calls(f"FROM {_stage('provider_calls')} WHERE TRUE")
    ),
}
_UPGRADE: Final = [
    POSTGRESQL.unattributed_upsert("FROM provider_calls WHERE TRUE"),
    POSTGRESQL.unpriced_upsert("FROM provider_calls WHERE TRUE"),
]
#: Rollups from before they measured user actions, failed attempts, avoided and estimated
#: usage (and counted cache hits as calls), or before they were keyed by billing scope: every
#: tier dropped and rebuilt from the raw rows.
_REBUILD: Final = [
    f"WITH delta AS ({POSTGRESQL.delta_select(t, f'FROM {t}')})"
    f" {POSTGRESQL.rollup_upsert(rollup, 'delta')}"
    for rollup in ROLLUPS
    for t in ROLLED_UP
]


#: Raw calls from before ``billing_scope`` had a column (it was only in the body): the column
#: is added (on the partitioned parent: every day partition gets it) and filled from the body,
#: which keeps its copy (an event read back is the same).
_ADD_BILLING_SCOPE: Final = [
    "ALTER TABLE provider_calls ADD COLUMN billing_scope TEXT",
    "UPDATE provider_calls SET billing_scope = body->>'billing_scope'"
    " WHERE body->>'billing_scope' IS NOT NULL",
]


def _has_column(conn: psycopg.Connection[Any], table: str, column: str) -> bool:
    found = conn.execute(
        "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND table_name = %s AND column_name = %s",
        (table, column),
    ).fetchone()
    return found is not None


def _outdated_rollups(conn: psycopg.Connection[Any]) -> bool:
    """Rollups of an older layout: without the user action measures (and the others added
    with them), or not keyed by billing scope."""
    return _exists(conn, "rollup_hourly") and not all(
        _has_column(conn, "rollup_hourly", column) for column in ("user_actions", "billing_scope")
    )


def _add_billing_scope(conn: psycopg.Connection[Any]) -> bool:
    """Add and fill ``provider_calls.billing_scope`` in a store from before it; whether it
    did (the rollups are then rebuilt)."""
    if not _exists(conn, "provider_calls") or _has_column(conn, "provider_calls", "billing_scope"):
        return False
    for statement in _ADD_BILLING_SCOPE:
        conn.execute(statement)
    return True


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    return conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is not None  # type: ignore[index]


#: Per layout: day-partitioned tables (key event_id, ts), or the unpartitioned tables of
#: stores created before partitioning (key event_id; pruned with DELETE).
_MOVES: Final = {
    True: {table: _move_sql(table, "event_id, ts") for table in TABLES},
    False: {table: _move_sql(table, "event_id") for table in TABLES},
}
_COPIES: Final = {
    table: f"COPY {_stage(table)} ({POSTGRESQL.insert_columns(table)}) FROM STDIN"
    for table in TABLES
}


class PostgresStore(StoreBase):
    """Backend (``write_batch``) and reader (`EventQueries`) for one PostgreSQL schema."""

    dialect = POSTGRESQL

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        connect_timeout: float = 5.0,
        statement_timeout: float = 60.0,
        readonly: bool = False,
        create: bool = True,
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
        # create=False (retention): write to the store that is there, never create one.
        self.create = create
        self._partitioned = True
        self._partitions: set[tuple[str, int]] = set()
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
        if self.readonly or not self.create:
            try:
                if self.readonly:
                    conn.execute("SET default_transaction_read_only = on")
                missing = [
                    t
                    for t in _REQUIRED_TABLES
                    if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0] is None  # type: ignore[index]
                ]
            except BaseException:
                conn.close()
                raise
            if missing:
                conn.close()
                where = f"schema {self.schema!r}" if self.schema else "the search path"
                if missing == ["loss_steps"]:
                    raise psycopg.errors.UndefinedTable(
                        f"the store in {where} was written by an older ownership_ctx: open it"
                        " once for writing (any application with sinks.install) to upgrade it"
                    )
                raise psycopg.errors.UndefinedTable(
                    f"no ownership_ctx table {missing[0]} in {where} (check the URL's ?schema=)"
                )
            self._partitioned = _is_partitioned(conn)
            conn.autocommit = autocommit
            return conn
        try:
            with conn.transaction():
                # One creator at a time: CREATE ... IF NOT EXISTS races between hosts.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                if self.schema:
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                upgrading = _exists(conn, "provider_calls") and not _exists(conn, "rollup_daily")
                no_loss_steps = _exists(conn, "provider_calls") and not _exists(conn, "loss_steps")
                # Before the schema statements: the provider_calls_json view reads the column.
                scoped = _add_billing_scope(conn)
                rebuild = upgrading or scoped or _outdated_rollups(conn)
                if rebuild:
                    for rollup in ROLLUPS:
                        conn.execute(f"DROP TABLE IF EXISTS {rollup.name}")
                for statement in POSTGRESQL.schema():
                    conn.execute(statement)
                if rebuild:
                    # Built once from the raw rows already stored (the unattributed and
                    # unpriced tiers too, for a store from before them).
                    for statement in _REBUILD + (_UPGRADE if upgrading else []):
                        conn.execute(statement)
                if no_loss_steps:
                    for statement in POSTGRESQL.loss_steps_of_traces(LOST_TRACES_STORED):
                        conn.execute(statement)
            self._partitioned = _is_partitioned(conn)
            self._partitions = set()  # a new connection may see a recreated schema
            if not autocommit:
                for table in TABLES:
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
                    # A day partition dropped under us (retention by another process) is
                    # created again: forget what this store believed exists.
                    self._partitions.clear()
                    # An odd value must not hold back its batch: coerce and try once more.
                    self._insert(conn, _nul_free(split_rows(events, sanitize=True)))
            except psycopg.Error:
                self._drop(conn)
                raise

    def _ensure_partitions(self, conn: psycopg.Connection[Any], rows: Rows) -> None:
        """The day partitions these rows go to, created in a transaction of their own (short:
        it locks the parent table) before the rows are written."""
        wanted = {
            (table, int(row[1] // 86400))
            for table, table_rows in rows.items()
            for row in table_rows
            if isinstance(row[1], (int, float)) and math.isfinite(row[1])
        } - self._partitions
        if not wanted:
            return
        try:
            # One creator at a time: CREATE ... IF NOT EXISTS races between hosts.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            for table, day in sorted(wanted):
                conn.execute(POSTGRESQL.partition_ddl(table, day))
            conn.commit()
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        self._partitions |= wanted

    def _insert(self, conn: psycopg.Connection[Any], rows: Rows) -> None:
        if self._partitioned:
            self._ensure_partitions(conn, rows)
        moves = _MOVES[self._partitioned]
        try:
            with conn.cursor() as cur:
                for table, table_rows in rows.items():
                    if not table_rows:
                        continue
                    with cur.copy(_COPIES[table]) as copy:
                        for row in table_rows:
                            copy.write_row(row)
                    cur.execute(moves[table])
                copies = [s for table in _LOSS_STEPS if rows.get(table) for s in _LOSS_STEPS[table]]
                if copies:
                    # After every table (a call's trace finds the hops written with it), and
                    # one host at a time (each sees what the one before committed).
                    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOSS_LOCK,))
                    for statement in copies:
                        cur.execute(statement)
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

    def prune(self, before: float) -> Pruned:
        """Remove the events older than ``before`` (a UTC midnight, epoch seconds): drop the
        day partitions that end by then (and delete older rows of an unpartitioned store);
        the unattributed rollup's rows and the loss steps too. Rollups (hourly, daily,
        unpriced) are kept."""
        import psycopg

        with self._lock:
            conn = self._conn
            if conn is None or conn.closed:
                conn = self._conn = self._connect(autocommit=False)
            events = partitions = 0
            try:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for table in TABLES:
                    for (name,) in conn.execute(_PARTITIONS, (table,)).fetchall():
                        day = _day_of(table, str(name))
                        if day is None or (day + 1) * 86400 > before:
                            continue
                        (count,) = conn.execute(f"SELECT count(*) FROM {name}").fetchone()  # type: ignore[misc]
                        conn.execute(f"DROP TABLE {name}")
                        events += int(count)
                        partitions += 1
                        self._partitions.discard((table, day))
                    # Rows older than that in an unpartitioned store, or in a partition that
                    # is not a whole day (none are created so, but a DBA may attach one).
                    events += conn.execute(f"DELETE FROM {table} WHERE ts < %s", (before,)).rowcount
                conn.execute("DELETE FROM unattributed_hourly WHERE hour < %s", (before,))
                conn.execute("DELETE FROM loss_steps WHERE ts < %s", (before,))
                conn.commit()
            except psycopg.Error:
                self._drop(conn)
                raise
            except BaseException:
                if not conn.closed:
                    conn.rollback()
                raise
        return Pruned(events, partitions)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._drop(self._conn)
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    # -- reading (StoreBase) -----------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
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

    def _is_database_error(self, error: BaseException) -> bool:
        # psycopg is optional: recognise its errors by module rather than importing it.
        return isinstance(error, OSError) or type(error).__module__.startswith("psycopg")


_PARTITIONS: Final = (
    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname"
)


def _day_of(table: str, partition: str) -> int | None:
    prefix = POSTGRESQL.partition_name(table, 0)[:-1]
    digits = partition[len(prefix) :] if partition.startswith(prefix) else ""
    return int(digits) if digits.lstrip("-").isdigit() else None


def _is_partitioned(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute(
        "SELECT relkind FROM pg_class WHERE oid = to_regclass('provider_calls')"
    ).fetchone()
    return row is not None and row[0] == "p"


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
