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

This is the only place reconciliation speaks SQL: the bill tables, and the reads of our side
the join needs: `BillStore.event_groups` (the daily rollup, ``rollup_daily``: it grows with
the groups, not with the calls) and `BillStore.request_matches` (raw ``provider_calls`` rows
joined per request id). `ownership_ctx.reconcile.join` is pure Python over what these return.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import os
import sqlite3
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ownership_ctx.reconcile.bills import BillBatch, BillRow
from ownership_ctx.schema import money

from .api import StoreError
from .dialect import POSTGRESQL, SQLITE, Dialect
from .sqlite import connect_for_reading

__all__ = [
    "BillGroup",
    "BillStore",
    "EventGroup",
    "ImportRecord",
    "RequestMatch",
    "StoreMissing",
    "StoreOutdated",
    "open_bill_store",
]

#: Only OpenAI bills show a scope our calls can match (the project): the rollups keep every
#: provider's billing scope, reconciliation reads it for OpenAI alone.
_SCOPE: Final = "CASE WHEN provider = 'openai' THEN billing_scope ELSE '' END"
_DAY: Final = 86400

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


class StoreOutdated(StoreError):
    """The event store's rollups are from an older layout: it must be opened for writing
    once (which upgrades it) before reconciliation can read it. The CLI reports it in one
    line, as any store it cannot read."""


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


# -- the reads reconciliation needs ----------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class BillGroup:
    """Bill rows of one source summed per day x model x scope x key x line item x identity."""

    source: str
    day: str
    model: str
    scope: str
    api_key_id: str
    line_item: str
    identity: str
    cost: Decimal | None  # None: no row of the group carries money
    tokens: int | None  # None: no row of the group carries tokens
    requests: int


@dataclasses.dataclass(frozen=True, slots=True)
class EventGroup:
    """Our provider_call events per UTC day x provider x model x billing scope."""

    day: str
    provider: str
    model: str
    scope: str
    calls: int
    cost: Decimal
    attributed: Decimal
    estimated: Decimal
    unpriced_calls: int
    tokens: int


@dataclasses.dataclass(frozen=True, slots=True)
class RequestMatch:
    """Bedrock invocation-log requests, grouped, and whether our events have them."""

    day: str
    model: str
    account: str
    region: str
    identity: str
    owner_team: str
    matched: bool
    requests: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    ours_cost: Decimal | None


_BILL_SQL: Final = (
    "SELECT source, day, model, scope, api_key_id, line_item, identity, sum(cost_nanousd),"
    " count(cost_nanousd), sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)),"
    " count(input_tokens), sum(coalesce(requests, 0))"
    " FROM bill_rows WHERE day >= ? AND day < ?"
    " GROUP BY source, day, model, scope, api_key_id, line_item, identity"
)

_REQUEST_SQL: Final = (
    "SELECT b.day, b.model, b.scope, b.region, b.identity, b.owner_team,"
    " CASE WHEN p.event_id IS NULL THEN 0 ELSE 1 END AS matched, count(*),"
    " sum(b.input_tokens), sum(b.output_tokens), sum(b.cache_read_tokens),"
    " sum(b.cache_write_tokens), sum(p.cost_nanousd)"
    " FROM bill_rows b LEFT JOIN provider_calls p"
    " ON p.provider_request_id = b.request_id AND p.provider = 'aws.bedrock'"
    " WHERE b.source = 'bedrock-logs' AND b.day >= ? AND b.day < ?"
    " GROUP BY 1, 2, 3, 4, 5, 6, 7"
)


def _epoch_day(value: Any) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(value))).isoformat()


class _Reads(abc.ABC):
    """The query half of `BillStore` (kept apart from the writes for reading)."""

    conn: Any
    dialect: str

    @abc.abstractmethod
    def fetch(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one query (``?`` placeholders on both databases)."""

    def bill_groups(self, start_day: str, end_day: str) -> list[BillGroup]:
        out = []
        for row in self.fetch(_BILL_SQL, (start_day, end_day)):
            source, day, model, scope, key, line_item, identity = row[:7]
            cost, n_cost, tokens, n_tokens, requests = row[7:]
            out.append(
                BillGroup(
                    source,
                    day,
                    model,
                    scope,
                    key,
                    line_item,
                    identity,
                    money.from_nanos(cost) if n_cost else None,
                    int(tokens or 0) if n_tokens else None,
                    int(requests or 0),
                )
            )
        return out

    @property
    def rollup_dialect(self) -> Dialect:
        """The event store's SQL dialect (rollup columns, how money is summed)."""
        return SQLITE if self.dialect == "sqlite" else POSTGRESQL

    def event_groups(self, start: int, end: int) -> list[EventGroup]:
        """Our calls in the whole UTC days of ``[start, end)`` (epoch seconds, widened to
        days) per day x provider x model x scope, from the daily rollup."""
        self.check_rollups()
        first, stop = start // _DAY * _DAY, -(-end // _DAY) * _DAY
        d = self.rollup_dialect
        out = []
        for row in self.fetch(_event_sql(d), (first, stop)):
            day, provider, model, scope, calls, cost, unattributed, estimated = row[:8]
            unpriced, tokens = row[8:]
            out.append(
                EventGroup(
                    _epoch_day(day),
                    provider,
                    model,
                    scope,
                    int(calls),
                    d.to_money(cost),
                    d.to_money(cost) - d.to_money(unattributed),
                    d.to_money(estimated),
                    int(unpriced or 0),
                    int(tokens or 0),
                )
            )
        return out

    def check_rollups(self) -> None:
        """Raise `StoreOutdated` when the event store's rollups are not keyed by billing scope
        yet (a store written by an older ownership_ctx, not opened for writing since)."""
        if self.dialect == "sqlite":
            found = self.fetch("SELECT name FROM pragma_table_info('rollup_daily')")
        else:
            found = self.fetch(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = current_schema() AND table_name = 'rollup_daily'"
            )
        if "billing_scope" not in {name for (name,) in found}:
            raise StoreOutdated(
                "the event store was written by an older ownership_ctx (or has no event tables):"
                " open it once for writing (any application with sinks.install, or"
                " reconcile import) to upgrade it"
            )

    def request_matches(self, start_day: str, end_day: str) -> list[RequestMatch]:
        out = []
        for row in self.fetch(_REQUEST_SQL, (start_day, end_day)):
            day, model, account, region, identity, owner = row[:6]
            matched, n, inp, outp, read, write, cost = row[6:]
            out.append(
                RequestMatch(
                    day,
                    model,
                    account,
                    region,
                    identity,
                    owner,
                    bool(matched),
                    int(n),
                    int(inp or 0),
                    int(outp or 0),
                    int(read or 0),
                    int(write or 0),
                    money.from_nanos(cost) if matched else None,
                )
            )
        return out

    def import_periods(self, start_day: str, end_day: str) -> list[tuple[str, str, str]]:
        """(source, first day, end day) of every import overlapping ``[start_day, end_day)``."""
        rows = self.fetch(
            "SELECT source, period_start, period_end FROM bill_imports"
            " WHERE period_end > ? AND period_start < ?",
            (start_day, end_day),
        )
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    def daily_traffic(self) -> list[tuple[str, str, str, str, int, int, int, int, int, Decimal]]:
        """Calls per day x provider x model x scope, from the daily rollup: (day, provider,
        model, scope, input, output, cache read, cache write, calls, cost). ``calls`` and the
        tokens are the rollup's (no application cache hits, no free failed attempts; unpriced
        calls count, at cost 0). The demo bills from this."""
        self.check_rollups()
        d = self.rollup_dialect
        rows = self.fetch(
            f"SELECT hour / {_DAY}, provider, model, {_SCOPE}, sum(input_tokens),"
            " sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens), sum(calls),"
            f" sum({d.money_column('cost')}) FROM rollup_daily GROUP BY 1, 2, 3, 4"
            " HAVING sum(calls) > 0 ORDER BY 1, 2, 3, 4"
        )
        return [
            (_epoch_day(day), p, m, sc, int(i), int(o), int(r), int(w), int(n), d.to_money(c))
            for day, p, m, sc, i, o, r, w, n, c in rows
        ]


def _event_sql(d: Dialect) -> str:
    """Our side of the join per day x provider x model x scope, from ``rollup_daily``.

    Where this differs from the raw-row aggregate it replaced (the rollups' definitions, as
    every report reads them; `ownership_ctx.store.tables.MEASURES`):

    - ``calls``: calls made and billed (no application cache hits, no free failed attempts);
      tokens are input + output of those calls. A group is ours when it has a call or a
      failed attempt (request rows, and groups of cache hits alone, are not).
    - ``cost`` includes application cache hits, which metering records at cost 0 (their
      would-be cost is ``cost_avoided``); a hand-made event claiming a cost for a hit counts.
    - attributed = cost - unattributed cost: an owner team and attribution "attributed".
    - ``estimated``: spend whose usage was estimated (``usage_status = 'estimated'``: a stream
      the caller cancelled), as in chargeback, FOCUS and the HTML report. Usage a stream left
      ``partial`` is the provider's own (lower-bound) count and counts as reported, as there.
    - ``unpriced_calls``: calls without a cost, failed attempts without usage excepted
      (before: only calls with status "ok" and no cost, cache hits excepted).
    """
    cost = d.money_column("cost")
    return (
        f"SELECT hour / {_DAY}, provider, model, {_SCOPE}, sum(calls), sum({cost}),"
        f" sum({d.money_column('unattributed_cost')}), sum({d.money_column('estimated_cost')}),"
        " sum(unpriced_calls), sum(input_tokens) + sum(output_tokens)"
        " FROM rollup_daily WHERE hour >= ? AND hour < ?"
        " GROUP BY 1, 2, 3, 4 HAVING sum(calls) + sum(failed_attempts) > 0"
    )


class BillStore(_Reads):
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
        *money.nano_parts(row.cost),
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
                if not os.path.isfile(path):
                    raise StoreMissing(f"no event store at {path}")
                conn = connect_for_reading(path, 30)
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                # A month of Bedrock invocation logs is a row per request: their GROUP BY
                # (`request_matches`) sorts in memory, not on disk.
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
