"""Bill tables in the event store (SQLite or PostgreSQL), next to ``provider_calls``.

- ``bill_imports``: one row per import, kept for audit: the source, the file (or API URL) it
  came from with its SHA-256, the period it covers, when it was fetched and imported, how many
  rows it added and how many older rows it replaced.
- ``bill_rows``: the `BillRow`s. Aggregate exports replace what the same source had for the
  days they cover (importing an export twice, or a longer one over a shorter one, counts each
  day once); Bedrock invocation logs are unique per request id (a log file imported twice,
  or two files that overlap, count each request once).

Each import is one transaction: all of it is stored or none. Costs are kept as the exact
decimal text plus ``cost_nanousd`` (integer billionths of a dollar, half-even), which SQL
sums exactly on both databases.

This module speaks SQL to the two databases through a tiny `Dialect`; it reads our
``provider_calls`` table for the join (see `ownership_ctx.reconcile.join`).
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .bills import BillBatch, BillRow

__all__ = ["BillStore", "ImportRecord", "StoreMissing", "nanos", "open_bill_store"]

_NANO: Final = Decimal(1_000_000_000)

_ROW_COLUMNS: Final = (
    "source",
    "day",
    "model",
    "scope",
    "api_key_id",
    "service_tier",
    "line_item",
    "region",
    "cost",
    "cost_nanousd",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "requests",
    "request_id",
    "identity",
    "owner_team",
)


class StoreMissing(LookupError):
    """The store (or its bill tables) does not exist: nothing was imported there yet."""


def nanos(cost: Decimal | None) -> int | None:
    """Integer billionths of a dollar, rounded half-even (exact sums in SQL)."""
    if cost is None:
        return None
    return int((cost * _NANO).to_integral_value(ROUND_HALF_EVEN))


@dataclasses.dataclass(frozen=True, slots=True)
class ImportRecord:
    import_id: int
    source: str
    origin: str
    sha256: str
    period_start: str
    period_end: str
    fetched_at: float | None
    imported_at: float
    rows: int
    replaced: int


def _schema(big: str, serial: str) -> list[str]:
    return [
        f"CREATE TABLE IF NOT EXISTS bill_imports (import_id {serial}, source TEXT NOT NULL,"
        " origin TEXT NOT NULL, sha256 TEXT NOT NULL, period_start TEXT NOT NULL,"
        " period_end TEXT NOT NULL, fetched_at DOUBLE PRECISION, imported_at DOUBLE PRECISION"
        f" NOT NULL, rows {big} NOT NULL, replaced {big} NOT NULL)",
        f"CREATE TABLE IF NOT EXISTS bill_rows (import_id {big} NOT NULL, source TEXT NOT NULL,"
        " day TEXT NOT NULL, model TEXT NOT NULL, scope TEXT NOT NULL, api_key_id TEXT NOT NULL,"
        " service_tier TEXT NOT NULL, line_item TEXT NOT NULL, region TEXT NOT NULL, cost TEXT,"
        f" cost_nanousd {big}, input_tokens {big}, output_tokens {big},"
        f" cache_read_tokens {big}, cache_write_tokens {big}, requests {big}, request_id TEXT,"
        " identity TEXT NOT NULL, owner_team TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS bill_rows_day ON bill_rows (source, day)",
        # NULL request ids (aggregate rows) never collide: only invocation-log rows are unique.
        "CREATE UNIQUE INDEX IF NOT EXISTS bill_rows_request ON bill_rows (source, request_id)",
    ]


class BillStore:
    """The bill tables of one store. ``readonly`` stores run no DDL and write nothing."""

    def __init__(self, conn: Any, dialect: str, *, readonly: bool) -> None:
        self.conn = conn
        self.dialect = dialect  # "sqlite" or "postgresql"
        self.readonly = readonly
        self.mark = "?" if dialect == "sqlite" else "%s"

    # -- SQL helpers ---------------------------------------------------------------------------

    def sql(self, text: str) -> str:
        return text if self.mark == "?" else text.replace("?", "%s")

    def fetch(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(self.sql(text), tuple(params))
        rows: list[tuple[Any, ...]] = cur.fetchall()
        return rows

    def has_bills(self) -> bool:
        if self.dialect == "sqlite":
            found = self.fetch("SELECT name FROM sqlite_master WHERE name = 'bill_rows'")
        else:
            found = self.fetch("SELECT to_regclass('bill_rows') IS NOT NULL")
            found = [r for r in found if r[0]]
        return bool(found)

    def create(self) -> None:
        if self.dialect == "sqlite":
            serial, big = "INTEGER PRIMARY KEY AUTOINCREMENT", "INTEGER"
        else:
            serial, big = "BIGSERIAL PRIMARY KEY", "BIGINT"
        with self._transaction():
            if self.dialect == "postgresql":
                self.conn.execute("SELECT pg_advisory_xact_lock(727272)")
            for statement in _schema(big, serial):
                self.conn.execute(statement)

    # -- writing -------------------------------------------------------------------------------

    def _transaction(self) -> Any:
        if self.dialect == "sqlite":
            return _SQLiteTransaction(self.conn)
        return self.conn.transaction()

    def store(self, batch: BillBatch, *, now: float | None = None) -> ImportRecord:
        """Store one import in one transaction; returns its audit record."""
        if self.readonly:
            raise PermissionError("a read-only bill store")
        imported_at = time.time() if now is None else now
        with self._transaction():
            replaced = 0
            if batch.source != "bedrock-logs":
                cur = self.conn.execute(
                    self.sql("DELETE FROM bill_rows WHERE source = ? AND day >= ? AND day < ?"),
                    (batch.source, batch.period_start, batch.period_end),
                )
                replaced = max(cur.rowcount, 0)
            cur = self.conn.execute(
                self.sql(
                    "INSERT INTO bill_imports (source, origin, sha256, period_start, period_end,"
                    " fetched_at, imported_at, rows, replaced) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)"
                    " RETURNING import_id"
                ),
                (
                    batch.source,
                    batch.origin,
                    batch.sha256,
                    batch.period_start,
                    batch.period_end,
                    batch.fetched_at,
                    imported_at,
                    replaced,
                ),
            )
            import_id = int(cur.fetchone()[0])
            names = ", ".join(("import_id", *_ROW_COLUMNS))
            marks = ", ".join("?" * (len(_ROW_COLUMNS) + 1))
            cursor = self.conn.cursor()
            cursor.executemany(
                self.sql(
                    f"INSERT INTO bill_rows ({names}) VALUES ({marks})"
                    " ON CONFLICT (source, request_id) DO NOTHING"
                ),
                [(import_id, *_values(row)) for row in batch.rows],
            )
            added = max(cursor.rowcount, 0)  # the sum over the rows; conflicts add none
            self.conn.execute(
                self.sql("UPDATE bill_imports SET rows = ? WHERE import_id = ?"),
                (added, import_id),
            )
        return ImportRecord(
            import_id,
            batch.source,
            batch.origin,
            batch.sha256,
            batch.period_start,
            batch.period_end,
            batch.fetched_at,
            imported_at,
            added,
            replaced,
        )

    # -- reading -------------------------------------------------------------------------------

    def imports(self) -> list[ImportRecord]:
        rows = self.fetch(
            "SELECT import_id, source, origin, sha256, period_start, period_end, fetched_at,"
            " imported_at, rows, replaced FROM bill_imports ORDER BY import_id"
        )
        return [ImportRecord(*r) for r in rows]

    def close(self) -> None:
        self.conn.close()


def _values(row: BillRow) -> tuple[Any, ...]:
    return (
        row.source,
        row.day,
        row.model,
        row.scope,
        row.api_key_id,
        row.service_tier,
        row.line_item,
        row.region,
        None if row.cost is None else format(row.cost, "f"),
        nanos(row.cost),
        row.input_tokens,
        row.output_tokens,
        row.cache_read_tokens,
        row.cache_write_tokens,
        row.requests,
        row.request_id,
        row.identity,
        row.owner_team,
    )


class _SQLiteTransaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def _sqlite_path(url: str) -> str:
    path = urlsplit(url).path
    return path[1:] if path.startswith("/") else path


def open_bill_store(url: str, *, readonly: bool = False) -> BillStore:
    """The bill tables of the store at ``url`` (``sqlite:///...`` or ``postgresql://...``).

    Read-only: the store must exist (`StoreMissing` otherwise); bill tables may be absent
    (`BillStore.has_bills`). Writable: the bill tables are created when missing.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "sqlite":
        path = _sqlite_path(url)
        if readonly:
            try:
                conn = sqlite3.connect(
                    f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=30
                )
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                # The join's GROUP BY sorts a month of calls: keep the sorter off the disk.
                conn.execute("PRAGMA temp_store = MEMORY")
                conn.execute("PRAGMA cache_size = -65536")
            except sqlite3.OperationalError:
                raise StoreMissing(f"no event store at {path}") from None
        else:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
        store = BillStore(conn, "sqlite", readonly=readonly)
    elif scheme in ("postgresql", "postgres"):
        import psycopg

        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        schema = params.pop("schema", None)
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(params), ""))
        options = f"-c search_path={schema}" if schema else ""
        pg = psycopg.connect(conninfo, autocommit=True, connect_timeout=5, options=options)
        if readonly:
            pg.execute("SET default_transaction_read_only = on")
        elif schema:
            pg.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        store = BillStore(pg, "postgresql", readonly=readonly)
    else:
        raise StoreMissing(f"reconcile needs a sqlite:// or postgresql:// store, not {scheme}://")
    if not readonly:
        store.create()
    return store
