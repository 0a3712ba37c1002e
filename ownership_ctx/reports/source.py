"""What reports read from: the store's public rollup/trace API plus a few raw-row queries.

Aggregates come from `EventQueries.rollups` (hourly buckets: cost grows with the number of
groups, not events). What rollups cannot answer (which hop lost a trace's fields, the most
expensive requests, the most recent traces) is plain SQL over the raw tables, written once
with ``?`` placeholders and run on SQLite or PostgreSQL. Reports never write: the SQLite file
is opened read-only, and a missing file is an error rather than a new empty store.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote

from ownership_ctx.sinks.config import redacted_url
from ownership_ctx.sinks.query import EventQueries, RollupRow, open_store

__all__ = ["Source", "StoreError", "open_source"]

_NANO_EXPONENT: Final = -9


class StoreError(RuntimeError):
    """The store cannot be opened or read (exit code 2 in the command)."""


class Source:
    """One store, for the duration of a report. Use as a context manager."""

    def __init__(self, url: str, queries: EventQueries, raw: Any, dialect: str) -> None:
        self.url = url
        self.queries = queries
        self.dialect = dialect  # "sqlite" or "postgresql"
        self._raw = raw
        # Summing costs exactly: SQLite keeps integer nano-dollars, PostgreSQL exact NUMERIC.
        self.cost_column = "cost_nanousd" if dialect == "sqlite" else "cost"

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            self.queries.close()

    # -- rollups and traces (the store's own API) ---------------------------------------------

    def rollups(
        self,
        start: float,
        end: float,
        group_by: Sequence[str] = (),
        where: Mapping[str, str | None] | None = None,
    ) -> list[RollupRow]:
        try:
            return self.queries.rollups(start, end, group_by=group_by, where=where)
        except Exception as e:
            if _is_database_error(e):
                raise StoreError(f"cannot read rollups: {_one_line(e)}") from e
            raise

    def events_by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        try:
            return self.queries.events_by_trace(trace_id)
        except Exception as e:
            if _is_database_error(e):
                raise StoreError(f"cannot read trace {trace_id}: {_one_line(e)}") from e
            raise

    # -- raw rows -----------------------------------------------------------------------------

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` (``?`` placeholders) and return every row."""
        if self.dialect == "postgresql":
            sql = sql.replace("?", "%s")
        try:
            cursor = self._raw.execute(sql, list(params))
            return list(cursor.fetchall())
        except Exception as e:
            if _is_database_error(e):
                raise StoreError(f"cannot query the store: {_one_line(e)}") from e
            raise

    def trace_ids(self, prefix: str, limit: int = 11) -> list[str]:
        """Stored trace ids starting with ``prefix`` (lowercase hex), at most ``limit``."""
        # A range, not LIKE: both databases walk the trace_id index for it.
        high = prefix + "g"  # above any hex digit
        union = " UNION ".join(
            f"SELECT trace_id FROM {t} WHERE trace_id >= ? AND trace_id < ?"
            for t in ("requests", "provider_calls", "hops", "other_events")
        )
        rows = self.fetch(
            f"SELECT trace_id FROM ({union}) AS found ORDER BY trace_id LIMIT {int(limit)}",
            [prefix, high] * 4,
        )
        return [str(trace_id) for (trace_id,) in rows]

    def unpriced_reasons(self, start: float, end: float) -> dict[str, int]:
        """Calls without a cost in ``[start, end)``, counted by why (the event's
        ``unpriced_reason``; for events stored before it existed, derived from the row)."""
        if self.dialect == "sqlite":
            stored, cost = "json_extract(body, '$.unpriced_reason')", "cost_nanousd"
        else:
            stored, cost = "body->>'unpriced_reason'", "cost"
        reason = (
            f"coalesce({stored}, CASE WHEN coalesce(status, '') <> 'ok' THEN 'failed attempt'"
            " WHEN input_tokens IS NULL THEN 'no usage reported' ELSE 'unpriced' END)"
        )
        rows = self.fetch(
            f"SELECT {reason} AS reason, count(*) FROM provider_calls"
            f" WHERE {cost} IS NULL AND ts >= ? AND ts < ? GROUP BY 1 ORDER BY 2 DESC, 1",
            [start, end],
        )
        return {str(name): int(count) for name, count in rows}

    def extent(self) -> tuple[int, int] | None:
        """The first and last stored hour (epoch seconds), None when the store is empty."""
        ((first, last),) = self.fetch("SELECT min(hour), max(hour) FROM rollup_hourly")
        if first is None:
            ((first, last),) = self.fetch("SELECT min(hour), max(hour) FROM hops")
        return None if first is None else (int(first), int(last))

    def ts_column(self, calls_in_range: int) -> str:
        """``ts`` or ``+ts`` for a range filter on provider_calls. SQLite walks the ``ts`` index
        for any range, fetching rows one by one; over most of the table a plain scan is ~4x
        faster, and ``+ts`` (no index) makes it scan. PostgreSQL's planner chooses well."""
        if self.dialect != "sqlite":
            return "ts"
        ((rows,),) = self.fetch("SELECT coalesce(max(id), 0) FROM provider_calls")
        return "+ts" if calls_in_range * 4 >= int(rows) else "ts"

    def money(self, value: Any) -> Decimal:
        """A summed cost column as exact dollars (``None`` -> 0)."""
        if value is None:
            return Decimal(0)
        if self.dialect == "sqlite":
            return Decimal(int(value)).scaleb(_NANO_EXPONENT)
        return Decimal(value)

    def body(self, value: Any) -> dict[str, Any]:
        """An event body column (JSON text on SQLite, JSONB on PostgreSQL)."""
        if isinstance(value, dict):
            return value
        import json

        try:
            decoded = json.loads(value)
        except (TypeError, ValueError):
            return {}
        return decoded if isinstance(decoded, dict) else {}


def _is_database_error(error: Exception) -> bool:
    # psycopg is optional: recognise its errors by module rather than importing it.
    return isinstance(error, (sqlite3.Error, OSError)) or type(error).__module__.startswith(
        "psycopg"
    )


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def open_source(url: str) -> Source:
    """Open the store at ``url`` for reading, read-only: nothing is created or written.
    Raises `StoreError` (one line, saying what to do) when it cannot be read."""
    from ownership_ctx.sinks.config import resolve_url

    url = resolve_url(url)
    scheme = url.split(":", 1)[0].lower()
    try:
        if scheme == "sqlite":
            return _open_sqlite(url)
        if scheme in ("postgresql", "postgres"):
            return _open_postgres(url)
    except StoreError:
        raise
    except ValueError as e:
        raise StoreError(_one_line(e)) from e
    except Exception as e:
        if _is_database_error(e):
            raise StoreError(f"cannot read the store {redacted_url(url)}: {_one_line(e)}") from e
        raise
    raise StoreError(f"reports read sqlite:/// or postgresql:// stores, not {scheme}://")


def _open_sqlite(url: str) -> Source:
    from ownership_ctx.sinks.sqlite import SQLiteStore

    queries = open_store(url, readonly=True)
    assert isinstance(queries, SQLiteStore)
    if not os.path.isfile(queries.path):
        raise StoreError(
            f"no event store at {os.path.abspath(queries.path)}"
            " (pass --db URL or a path, or set OWNERSHIP_CTX_SINK_URL)"
        )
    try:
        queries.rollups(0, 1)  # opens it read-only and checks the tables are there
    except sqlite3.Error as e:
        queries.close()
        raise StoreError(_one_line(e)) from e
    raw = sqlite3.connect(
        f"file:{quote(os.path.abspath(queries.path))}?mode=ro", uri=True, timeout=5
    )
    return Source(url, queries, raw, "sqlite")


def _open_postgres(url: str) -> Source:
    try:
        import psycopg
    except ImportError:
        raise StoreError(
            'reading PostgreSQL needs psycopg: pip install "ownership-ctx[postgres]"'
        ) from None

    from ownership_ctx.sinks.postgres import PostgresStore

    queries = open_store(url, readonly=True)
    assert isinstance(queries, PostgresStore)
    try:
        queries.rollups(0, 1)  # connects read-only and checks the schema's tables are there
    except psycopg.Error as e:
        queries.close()
        raise StoreError(f"cannot read the store {redacted_url(url)}: {_one_line(e)}") from e
    options = "-c default_transaction_read_only=on"
    if queries.schema:
        options += f" -c search_path={queries.schema}"
    raw = psycopg.connect(queries.conninfo, autocommit=True, connect_timeout=5, options=options)
    return Source(url, queries, raw, "postgresql")
