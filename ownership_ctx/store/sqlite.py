"""The default event store: one SQLite file (stdlib ``sqlite3``), safe for several processes.

Tables and rollups: `ownership_ctx.store.tables`. Costs: raw rows keep the event's exact
decimal string (``cost``) plus ``cost_nanousd``, the cost in integer billionths of a dollar
(rounded half-even), which the rollups sum exactly (SQLite has no decimal type; a float sum
would drift). The query API returns `Decimal`.

Concurrency: WAL journal, ``BEGIN IMMEDIATE`` per batch, a busy timeout; every process (a
prefork child, an ASGI server) opens its own connection. A batch that still finds the
database locked, read-only or failing raises, and the pipeline spools it and retries.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import quote

from .api import Pruned
from .base import StoreBase
from .dialect import LOST_TRACES_STORED, SQLITE
from .rows import Rows, split_rows
from .tables import ROLLED_UP, ROLLUPS, TABLES

__all__ = ["SCHEMA_VERSION", "SQLiteStore", "connect_for_reading"]

#: ``PRAGMA user_version`` of the current layout. 1: raw tables and rollup_hourly;
#: 2: + rollup_daily, unattributed_hourly and unpriced_hourly (built from the raw rows on
#: upgrade); 3: rollups measure user actions, failed attempts, avoided and estimated usage,
#: and calls without cache hits (every tier rebuilt from the raw rows on upgrade);
#: 4: ``provider_calls.billing_scope`` (filled from the body on upgrade) and the rollups keyed
#: by it (every tier rebuilt); 5: ``loss_steps``, the steps of the traces with unattributed
#: calls (filled from the raw rows on upgrade), and trace indexes led by the day.
SCHEMA_VERSION: Final = 5

_INSERTS: Final = {
    table: f"INSERT OR IGNORE INTO {table} ({SQLITE.insert_columns(table)})"
    f" VALUES ({', '.join('?' * len(TABLES[table].columns))})"
    for table in TABLES
}
#: Per rolled-up table: the statements that roll up the rows this transaction inserted
#: (``id > ?``: new rows get ids above the maximum before the transaction): aggregate them
#: once into a per-connection delta table, add the delta to every tier.
_DELTA: Final = "temp.oc_delta"
_ROLLUPS: Final = {
    table: [
        (f"DELETE FROM {_DELTA}", False),
        (f"INSERT INTO {_DELTA} {SQLITE.delta_select(table, f'FROM {table} WHERE id > ?')}", True),
        *[(SQLITE.rollup_upsert(r, _DELTA), False) for r in ROLLUPS],
        *(
            [
                (SQLITE.unattributed_upsert(f"FROM {table} WHERE id > ?"), True),
                (SQLITE.unpriced_upsert(f"FROM {table} WHERE id > ?"), True),
            ]
            if table == "provider_calls"
            else []
        ),
    ]
    for table in ROLLED_UP
}
#: Per table: what copies the steps of the traces with unattributed calls into ``loss_steps``
#: (``id > ?``: the rows this transaction inserted). A hop or request of such a trace, and for
#: each trace of a new unattributed call its steps stored before it.
_LOSS_STEPS: Final = {
    "hops": [SQLITE.loss_steps_of_rows("hops", "FROM hops WHERE id > ?")],
    "requests": [SQLITE.loss_steps_of_rows("requests", "FROM requests WHERE id > ?")],
    "provider_calls": SQLITE.loss_steps_of_traces(
        SQLITE.lost_traces_of_calls("FROM provider_calls WHERE id > ?")
    ),
}
#: Before version 4 the billing scope was only in the body: the column is added (at the end
#: of the table: inserts name their columns) and filled from it; the body keeps its copy
#: (an event read back is the same). The ``_json`` view is made again to read the column.
_ADD_BILLING_SCOPE: Final = [
    "ALTER TABLE provider_calls ADD COLUMN billing_scope TEXT",
    "UPDATE provider_calls SET billing_scope = json_extract(body, '$.billing_scope')"
    " WHERE body LIKE '%billing_scope%' AND json_valid(body)",
    "DROP VIEW IF EXISTS provider_calls_json",
]
#: From version 2: the rollup tiers (dropped first) rebuilt from the raw rows; from version 1,
#: the unattributed and unpriced tiers built too (every step).
_REBUILD_3: Final = [
    step
    for table in ROLLED_UP
    for step in _ROLLUPS[table]
    if "unattributed_hourly" not in step[0] and "unpriced_hourly" not in step[0]
]
_UPGRADE_1: Final = [step for table in ROLLED_UP for step in _ROLLUPS[table]]
_DATA_ERRORS: Final = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    OverflowError,
    TypeError,
    ValueError,
)


def _connect_existing_file(
    path: str, mode: Literal["rw", "ro"], timeout: float
) -> sqlite3.Connection:
    """A connection to the file that is there (a URI ``mode`` never creates one)."""
    return sqlite3.connect(
        f"file:{quote(os.path.abspath(path))}?mode={mode}",
        uri=True,
        timeout=timeout,
        isolation_level=None,
        check_same_thread=False,
    )


def connect_for_reading(path: str, timeout: float) -> sqlite3.Connection:
    """A connection that reads the SQLite file at ``path`` and can write nothing.

    Reading a WAL database needs its ``-wal`` and ``-shm`` files, which SQLite creates if no
    writer has them open; a ``mode=ro`` connection cannot remove them afterwards, so every
    report would leave two files behind. When the file and its directory are writable, the
    connection is read-write with ``query_only`` on instead: as the last one to close, SQLite
    removes what it created, and ``query_only`` refuses any write. Otherwise ``mode=ro``.
    """
    absolute = os.path.abspath(path)
    writable = os.access(absolute, os.W_OK) and os.access(os.path.dirname(absolute), os.W_OK)
    conn = _connect_existing_file(absolute, "rw" if writable else "ro", timeout)
    try:
        conn.execute("PRAGMA query_only = ON")
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteStore(StoreBase):
    """Backend (``write_batch``) and reader (`EventQueries`) for one SQLite file."""

    dialect = SQLITE

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        cache_mb: int = 32,
        synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL",
        readonly: bool = False,
        create: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        # A read-only store (reports) never creates the file or its tables, leaves no file
        # behind (`connect_for_reading`), and writing through it raises.
        self.readonly = readonly
        # create=False (retention): write to the store that is there, never create one.
        self.create = create
        self.busy_timeout = busy_timeout
        self.cache_mb = cache_mb
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly or not self.create:
            return self._connect_existing()
        conn = sqlite3.connect(
            self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL: a commit survives the process dying; a power cut may lose the
            # last transactions (FULL fsyncs every commit instead).
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA cache_size=-{int(self.cache_mb) * 1024}")
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version < SCHEMA_VERSION:
                self._create(conn)
            self._create_delta(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()  # under the lock now
            if version < SCHEMA_VERSION:
                if 0 < version < 4:
                    for rollup in ROLLUPS:
                        conn.execute(f"DROP TABLE IF EXISTS {rollup.name}")
                    conn.execute(f"DROP TABLE IF EXISTS {_DELTA}")  # it copies their columns
                    columns = {
                        name
                        for (name,) in conn.execute(
                            "SELECT name FROM pragma_table_info('provider_calls')"
                        )
                    }
                    if columns and "billing_scope" not in columns:
                        for statement in _ADD_BILLING_SCOPE:
                            conn.execute(statement)
                if version > 0:
                    # Replaced by the day-led trace indexes (built by the schema statements).
                    for table in TABLES:
                        conn.execute(f"DROP INDEX IF EXISTS {table}_trace")
                for statement in SQLITE.schema():
                    conn.execute(statement)
                if 0 < version < 4:
                    # Built once from the raw rows already stored.
                    self._create_delta(conn)
                    for statement, with_id in _UPGRADE_1 if version == 1 else _REBUILD_3:
                        conn.execute(statement, (0,) if with_id else ())
                if version > 0:
                    for statement in SQLITE.loss_steps_of_traces(LOST_TRACES_STORED):
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @staticmethod
    def _create_delta(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_DELTA.partition('.')[2]}"
            " AS SELECT * FROM rollup_hourly WHERE 0"
        )

    def _connect_existing(self) -> sqlite3.Connection:
        """The store that is there (read-only, or read-write without creating anything)."""
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no event store at {self.path!r}")
        if self.readonly:
            conn = connect_for_reading(self.path, self.busy_timeout)
        else:
            conn = _connect_existing_file(self.path, "rw", self.busy_timeout)
        try:
            names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
            (version,) = conn.execute("PRAGMA user_version").fetchone()
        except BaseException:
            conn.close()
            raise
        missing = [t for t in (*TABLES, "rollup_hourly") if t not in names]
        if missing:
            conn.close()
            raise sqlite3.OperationalError(
                f"{self.path!r} is not an ownership_ctx event store (no table {missing[0]})"
            )
        if version < SCHEMA_VERSION:
            conn.close()
            raise sqlite3.OperationalError(
                f"{self.path!r} was written by an older ownership_ctx: open it once for writing"
                " (any application with sinks.install) to upgrade it"
            )
        if not self.readonly:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            self._create_delta(conn)
        return conn

    # -- writing -----------------------------------------------------------------------------

    def write_batch(self, events: list[Mapping[str, Any]]) -> None:
        """Insert the batch (ignoring event ids already stored) and roll it up, atomically.

        Raises on operational errors (locked, read-only, I/O): the pipeline spools and retries.
        An empty batch only checks the database can be opened.
        """
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            if not events:
                return
            try:
                try:
                    self._insert(conn, split_rows(events))
                except _DATA_ERRORS:
                    # One odd value (a list where a number belongs, an int beyond 64 bits)
                    # must not hold back its batch: coerce everything and try once more.
                    self._insert(conn, split_rows(events, sanitize=True))
            except sqlite3.Error:
                # After an I/O or read-only error SQLite may keep the file read-only: start
                # from a fresh connection on the next try.
                self._drop_connection()
                raise

    def _insert(self, conn: sqlite3.Connection, rows: Rows) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            befores = {}
            for table, table_rows in rows.items():
                if not table_rows:
                    continue
                if table in _LOSS_STEPS:
                    # New rows get ids above the current maximum: the rows this transaction
                    # inserted, and only those.
                    (before,) = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
                    befores[table] = (before,)
                conn.executemany(_INSERTS[table], table_rows)
                for statement, with_id in _ROLLUPS.get(table, ()):
                    conn.execute(statement, befores[table] if with_id else ())
            # After every table: a call's trace finds the hops written with it, and a hop finds
            # the calls (copies meet on the key).
            for table, before in befores.items():
                for statement in _LOSS_STEPS[table]:
                    conn.execute(statement, before)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop_connection()
            raise

    def prune(self, before: float) -> Pruned:
        """Delete the events older than ``before`` (epoch seconds), and the unattributed
        rollup's rows and the loss steps before it, in one transaction. Rollups (hourly,
        daily, unpriced) are kept. The file does not shrink: SQLite reuses the freed pages
        (VACUUM returns them)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                conn = self._conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            try:
                events = sum(
                    conn.execute(f"DELETE FROM {table} WHERE ts < ?", (before,)).rowcount
                    for table in TABLES
                )
                conn.execute("DELETE FROM unattributed_hourly WHERE hour < ?", (before,))
                conn.execute("DELETE FROM loss_steps WHERE ts < ?", (before,))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return Pruned(events, 0)

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._drop_connection()
        with self._read_lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()

    # -- reading (StoreBase) -----------------------------------------------------------------

    def _execute(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._reader is None:
                self._reader = self._connect()
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error:
                reader, self._reader = self._reader, None
                reader.close()
                raise

    def _is_database_error(self, error: BaseException) -> bool:
        return isinstance(error, (sqlite3.Error, OSError))

    def _full_scan_hint(self, calls_in_range: int) -> str:
        # SQLite walks the ``ts`` index for any range, fetching rows one by one; over most of
        # the table a plain scan is ~4x faster, and ``+ts`` (no index) makes it scan.
        ((rows,),) = self.fetch("SELECT coalesce(max(id), 0) FROM provider_calls")
        return "+ts" if calls_in_range * 4 >= int(rows) else "ts"
