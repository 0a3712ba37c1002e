"""The default event store: one SQLite file (stdlib ``sqlite3``), safe for several processes.

Tables (the same on PostgreSQL, see `ownership_ctx.sinks.postgres`):

- ``provider_calls``, ``requests``, ``hops``: one row per event, typed columns for what reports
  filter and sum on, and ``body``: the whole event as JSON. ``other_events`` keeps events of
  any other kind. ``event_id`` is unique in each table: writes are insert-or-ignore, so a
  replayed or duplicated event is stored once.
- ``rollup_hourly``: per hour x owner_team x workflow_id x feature x tenant x provider x model
  x service_tier (missing values as ``''``): calls, requests, tokens by kind, cost, retries,
  fallbacks, app cache hits, unattributed cost, ... updated in the same transaction as the
  inserts, from exactly the rows that transaction inserted (``id > max(id)`` before it), so a
  replay rolls nothing up twice.

Costs: raw rows keep the event's exact decimal string (``cost``) plus ``cost_nanousd``, the
cost in integer billionths of a dollar (rounded half-even), which the rollups sum exactly
(SQLite has no decimal type; a float sum would drift). The query layer returns `Decimal`.

Concurrency: WAL journal, ``BEGIN IMMEDIATE`` per batch, a busy timeout; every process (a
prefork child, an ASGI server) opens its own connection. A batch that still finds the
database locked, read-only or failing raises, and the pipeline spools it and retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final, Literal
from urllib.parse import quote

from ownership_ctx.sinks.pipeline import encode_event
from ownership_ctx.sinks.query import (
    DIMENSIONS,
    EventQueries,
    ForkSafeConnections,
    RollupRow,
    event_ids_sql,
    rollup_query,
)

__all__ = [
    "COLUMNS",
    "ROLLUP_MEASURES",
    "SQLiteStore",
    "cost_parts",
    "split_rows",
]

Kind = Literal["text", "int", "real", "bool", "cost", "nanos", "json"]
Row = tuple[Any, ...]

# ---------------------------------------------------------------------------------------------
# The schema, shared with the PostgreSQL store: (column, event key or None if computed, kind).

_ENVELOPE: Final[tuple[tuple[str, str | None, Kind], ...]] = (
    ("trace_id", "trace_id", "text"),
    ("owner_team", "owner_team", "text"),
    ("workflow_id", "workflow_id", "text"),
    ("feature", "feature", "text"),
    ("tenant", "tenant", "text"),
    ("user_id", "user", "text"),  # "user" is reserved in PostgreSQL
    ("attribution", "attribution", "text"),
)
_HEAD: Final[tuple[tuple[str, str | None, Kind], ...]] = (
    ("event_id", "event_id", "text"),
    ("ts", "ts", "real"),
    *_ENVELOPE,
)

COLUMNS: Final[dict[str, tuple[tuple[str, str | None, Kind], ...]]] = {
    "provider_calls": (
        *_HEAD,
        ("call_id", "call_id", "text"),
        ("attempt", "attempt", "int"),
        ("status", "status", "text"),
        ("http_status", "http_status", "int"),
        ("error_type", "error.type", "text"),
        ("provider", "gen_ai.provider.name", "text"),
        ("operation", "gen_ai.operation.name", "text"),
        ("api", "api", "text"),
        ("request_model", "gen_ai.request.model", "text"),
        ("response_model", "gen_ai.response.model", "text"),
        ("service_tier", "service_tier", "text"),
        ("streaming", "streaming", "bool"),
        ("latency_ms", "latency_ms", "real"),
        ("input_tokens", "gen_ai.usage.input_tokens", "int"),
        ("output_tokens", "gen_ai.usage.output_tokens", "int"),
        ("cache_read_tokens", "gen_ai.usage.cache_read.input_tokens", "int"),
        ("cache_write_tokens", "gen_ai.usage.cache_creation.input_tokens", "int"),
        ("reasoning_tokens", "gen_ai.usage.reasoning.output_tokens", "int"),
        ("usage_status", "usage_status", "text"),
        ("cost_source", "cost_source", "text"),
        ("fallback_of", "fallback_of", "text"),
        ("provider_request_id", "provider_request_id", "text"),
        ("recorded_by", "recorded_by", "text"),
        # Computed by the row builder, in this order:
        ("hour", None, "int"),
        ("app_cache_hit", "app_cache_hit", "bool"),
        ("cost", "cost", "cost"),
        ("cost_nanousd", None, "nanos"),
        ("cost_avoided", "cost_avoided", "cost"),
        ("cost_avoided_nanousd", None, "nanos"),
        ("body", None, "json"),
    ),
    "requests": (
        *_HEAD,
        ("route", "route", "text"),
        ("method", "method", "text"),
        ("status", "status", "int"),
        ("latency_ms", "latency_ms", "real"),
        ("outcome", "outcome", "text"),
        ("hour", None, "int"),
        ("missing", "missing", "text"),
        ("body", None, "json"),
    ),
    "hops": (
        *_HEAD,
        ("hop", "hop", "text"),
        ("unit", "unit", "text"),
        ("outcome", "outcome", "text"),
        ("hour", None, "int"),
        ("missing", "missing", "text"),
        ("body", None, "json"),
    ),
    "other_events": (
        ("event_id", "event_id", "text"),
        ("ts", "ts", "real"),
        ("trace_id", "trace_id", "text"),
        ("kind", "kind", "text"),
        ("hour", None, "int"),
        ("body", None, "json"),
    ),
}

#: The event keys copied as they are, per table (everything before the computed columns).
_RAW_KEYS: Final = {
    table: tuple(key for column, key, _ in cols[: [c for c, _, _ in cols].index("hour")])
    for table, cols in COLUMNS.items()
}
_TABLE_OF_KIND: Final = {"provider_call": "provider_calls", "request": "requests", "hop": "hops"}

#: Rollup measures: name -> (SQLite column, kind). ``nanos`` sums are costs in 1e-9 USD.
ROLLUP_MEASURES: Final[dict[str, str]] = {
    "calls": "int",
    "requests": "int",
    "errors": "int",
    "retries": "int",
    "fallbacks": "int",
    "app_cache_hits": "int",
    "unpriced_calls": "int",
    "input_tokens": "int",
    "output_tokens": "int",
    "cache_read_tokens": "int",
    "cache_write_tokens": "int",
    "reasoning_tokens": "int",
    "cost": "cost",
    "unattributed_cost": "cost",
    "cost_avoided": "cost",
}

# ---------------------------------------------------------------------------------------------
# Rows

_NANO: Final = Decimal(1).scaleb(-9)
_INT64: Final = 1 << 63


def cost_parts(value: object) -> tuple[str | None, int | None]:
    """A cost as (exact decimal text, integer nano-dollars); (None, None) when not a finite
    decimal (absent, garbage, NaN, or beyond what 64 bits of nano-dollars hold)."""
    if value is None:
        return None, None
    if type(value) is str:
        # Fast path for what metering writes: plain "123.456" with at most 9 decimals.
        whole, _, frac = value.partition(".")
        digits = whole[1:] if whole[:1] == "-" else whole
        if digits.isdigit() and len(frac) <= 9 and (not frac or frac.isdigit()):
            nanos = int(whole + frac.ljust(9, "0"))
            if -_INT64 < nanos < _INT64:
                return value, nanos
            return None, None
    if isinstance(value, bool):
        return None, None
    try:
        number = Decimal(value) if isinstance(value, (str, int, Decimal)) else None
        if number is None and isinstance(value, float) and math.isfinite(value):
            number = Decimal(repr(value))
    except (InvalidOperation, ValueError):
        return None, None
    if number is None or not number.is_finite() or number.adjusted() > 9:
        return None, None  # beyond $10^10 (what int64 nano-dollars hold) is not a cost
    nanos = int(number.quantize(_NANO, rounding=ROUND_HALF_EVEN).scaleb(9))
    if not -_INT64 < nanos < _INT64:
        return None, None
    return format(number, "f"), nanos


def _hour(ts: Any) -> int:
    return int(ts // 3600) * 3600


#: Event keys with a typed column, per table (``missing`` stays in the body too: its column is
#: a joined string, the event's value a list).
_TYPED: Final = {
    table: frozenset(key for _, key, _ in cols if key is not None and key != "missing")
    for table, cols in COLUMNS.items()
}


def _rest(event: Mapping[str, Any], typed: frozenset[str]) -> dict[str, Any]:
    """What the body stores: keys without a typed column, and None values (so that a key
    that was present but null comes back, and an absent key stays absent)."""
    return {k: v for k, v in event.items() if v is None or k not in typed}


def _pc_row(
    event: Mapping[str, Any],
    keys: tuple[str | None, ...] = _RAW_KEYS["provider_calls"],
    typed: frozenset[str] = _TYPED["provider_calls"],
) -> Row:
    get = event.get
    raw_cost, raw_avoided = get("cost"), get("cost_avoided")
    cost, nanos = cost_parts(raw_cost)
    avoided, avoided_nanos = cost_parts(raw_avoided)
    rest = _rest(event, typed)
    # The typed cost is normalised ("1E-7" -> "0.0000001", garbage -> NULL): keep the
    # original in the body when it differs, so the event reads back as it was emitted.
    if cost is not raw_cost and raw_cost is not None:
        rest["cost"] = raw_cost
    if avoided is not raw_avoided and raw_avoided is not None:
        rest["cost_avoided"] = raw_avoided
    return (
        *map(get, keys),  # type: ignore[arg-type]
        _hour(get("ts")),
        get("app_cache_hit"),
        cost,
        nanos,
        avoided,
        avoided_nanos,
        encode_event(rest),
    )


def _joined(value: Any) -> Any:
    # Lists of field names ("missing") as "a,b": easy to filter with LIKE, readable in a shell.
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def _rq_row(
    event: Mapping[str, Any],
    keys: tuple[str | None, ...] = _RAW_KEYS["requests"],
    typed: frozenset[str] = _TYPED["requests"],
) -> Row:
    get = event.get
    return (
        *map(get, keys),  # type: ignore[arg-type]
        _hour(get("ts")),
        _joined(get("missing")),
        encode_event(_rest(event, typed)),
    )


def _hop_row(
    event: Mapping[str, Any],
    keys: tuple[str | None, ...] = _RAW_KEYS["hops"],
    typed: frozenset[str] = _TYPED["hops"],
) -> Row:
    get = event.get
    return (
        *map(get, keys),  # type: ignore[arg-type]
        _hour(get("ts")),
        _joined(get("missing")),
        encode_event(_rest(event, typed)),
    )


def _other_row(event: Mapping[str, Any], typed: frozenset[str] = _TYPED["other_events"]) -> Row:
    get = event.get
    return (
        get("event_id"),
        get("ts"),
        get("trace_id"),
        get("kind"),
        _hour(get("ts")),
        encode_event(_rest(event, typed)),
    )


_ROW_OF_TABLE: Final[dict[str, Callable[[Mapping[str, Any]], Row]]] = {
    "provider_calls": _pc_row,
    "requests": _rq_row,
    "hops": _hop_row,
    "other_events": _other_row,
}

Rows = dict[str, list[Row]]


def split_rows(events: Iterable[Mapping[str, Any]], *, sanitize: bool = False) -> Rows:
    """Rows per table. Fast path trusts the event's types; with ``sanitize`` every value is
    coerced to its column's kind first (used after the fast path hit a data error), and the
    body keeps the whole original event (its values win when the event is read back)."""
    out: Rows = {table: [] for table in COLUMNS}
    for event in events:
        table = _TABLE_OF_KIND.get(event.get("kind"), "other_events")  # type: ignore[arg-type]
        if sanitize:
            row = _ROW_OF_TABLE[table](_sanitized(event, table))
            out[table].append((*row[:-1], encode_event(event)))
        else:
            out[table].append(_ROW_OF_TABLE[table](event))
    return out


#: Per table: the typed columns an event is rebuilt from (with the body), in SELECT order.
READ_COLUMNS: Final = {
    table: tuple((c, k, kind) for c, k, kind in cols if k is not None and k != "missing")
    for table, cols in COLUMNS.items()
}


def read_sql(table: str, mark: str) -> str:
    """The rows of one trace in ``table``: the typed columns of `READ_COLUMNS`, then body."""
    names = ", ".join(c for c, _, _ in READ_COLUMNS[table])
    return f"SELECT {names}, body FROM {table} WHERE trace_id = {mark}"


def rebuild(table: str, values: Sequence[Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """The event as it was emitted, from its typed columns and its body."""
    event: dict[str, Any] = {}
    for (_, key, kind), value in zip(READ_COLUMNS[table], values, strict=False):
        if value is None:
            continue
        if kind == "bool":
            value = bool(value)  # SQLite hands back 0 / 1
        elif kind == "cost" and not isinstance(value, str):
            value = format(value, "f")  # PostgreSQL hands back a Decimal
        event[key] = value
    event.update(body)
    return event


def _sanitized(event: Mapping[str, Any], table: str) -> dict[str, Any]:
    clean = dict(event)
    for _, key, kind in COLUMNS[table]:
        if key is not None and key in clean:
            clean[key] = _coerce(clean[key], kind)
    if clean.get("event_id") is None:
        # A stable id (the content's hash), so that a replay of the same event still dedupes.
        clean["event_id"] = hashlib.sha256(encode_event(event).encode()).hexdigest()[:32]
    elif not isinstance(clean["event_id"], str):
        clean["event_id"] = str(clean["event_id"])
    ts = _coerce(clean.get("ts"), "real")
    clean["ts"] = ts if ts is not None else 0.0
    return clean


def _coerce(value: Any, kind: Kind) -> Any:
    """A value the column accepts on both databases, or None. Strings lose NUL characters,
    which PostgreSQL text cannot hold."""
    if value is None:
        return None
    if kind == "text":
        text = (
            value
            if isinstance(value, str)
            else (_joined(value) if isinstance(value, (list, tuple)) else str(value))
        )
        return text.replace("\x00", "") if "\x00" in text else text
    if kind in ("int", "nanos"):
        if isinstance(value, bool):
            return int(value)
        try:
            number = int(value) if not isinstance(value, float) or math.isfinite(value) else None
        except (TypeError, ValueError):
            return None
        return number if number is not None and -_INT64 < number < _INT64 else None
    if kind == "real":
        if isinstance(value, bool):
            return float(value)
        try:
            real = float(value)
        except (TypeError, ValueError, OverflowError):
            return None
        return real if math.isfinite(real) else None
    if kind == "bool":
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes")
        return bool(value)
    if kind == "cost":
        return cost_parts(value)[0]
    return value


# ---------------------------------------------------------------------------------------------
# SQL

_SQLITE_TYPES: Final[dict[Kind, str]] = {
    "text": "TEXT",
    "int": "INTEGER",
    "real": "REAL",
    "bool": "INTEGER",
    "cost": "TEXT",
    "nanos": "INTEGER",
    "json": "TEXT",
}

_DIM_SOURCES: Final[dict[str, str]] = {
    "owner_team": "owner_team",
    "workflow_id": "workflow_id",
    "feature": "feature",
    "tenant": "tenant",
    "provider": "provider",
    "model": "coalesce(response_model, request_model)",
    "service_tier": "service_tier",
}
_ROLLUP_COST_COLUMNS: Final = {
    "cost": "cost_nanousd",
    "unattributed_cost": "unattributed_cost_nanousd",
    "cost_avoided": "cost_avoided_nanousd",
}


def _rollup_columns() -> list[str]:
    return [_ROLLUP_COST_COLUMNS.get(m, m) for m in ROLLUP_MEASURES]


def _schema() -> list[str]:
    statements = []
    for table, cols in COLUMNS.items():
        body = ", ".join(f"{name} {_SQLITE_TYPES[kind]}" for name, _, kind in cols)
        statements.append(f"CREATE TABLE IF NOT EXISTS {table} (id INTEGER PRIMARY KEY, {body})")
        statements.append(
            f"CREATE UNIQUE INDEX IF NOT EXISTS {table}_event_id ON {table} (event_id)"
        )
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_trace ON {table} (trace_id)")
        statements.append(f"CREATE INDEX IF NOT EXISTS {table}_ts ON {table} (ts)")
        pairs = ", ".join(
            f"'{key}', " + (_JSON_BOOL.format(c=column) if kind == "bool" else column)
            for column, key, kind in READ_COLUMNS[table]
        )
        statements.append(
            f"CREATE VIEW IF NOT EXISTS {table}_json AS SELECT id, event_id, ts, trace_id,"
            f" json_patch(json_object({pairs}), body) AS event FROM {table}"
        )
    dims = ", ".join(f"{d} TEXT NOT NULL" for d in DIMENSIONS)
    measures = ", ".join(f"{c} INTEGER NOT NULL DEFAULT 0" for c in _rollup_columns())
    keys = ", ".join(("hour", *DIMENSIONS))
    statements.append(
        f"CREATE TABLE IF NOT EXISTS rollup_hourly (hour INTEGER NOT NULL, {dims}, {measures},"
        f" PRIMARY KEY ({keys})) WITHOUT ROWID"
    )
    return statements


_JSON_BOOL: Final = "json(CASE WHEN {c} IS NULL THEN 'null' WHEN {c} THEN 'true' ELSE 'false' END)"


def _insert_sql(table: str) -> str:
    names = [name for name, _, _ in COLUMNS[table]]
    marks = ", ".join("?" * len(names))
    return f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({marks})"


_UNATTRIBUTED: Final = "(attribution IS NOT 'attributed' OR coalesce(owner_team, '') = '')"


def _rollup_sql(table: str) -> str:
    """Roll up the rows this transaction inserted (``id > ?``) into rollup_hourly."""
    dims = [f"coalesce({_DIM_SOURCES[d]}, '')" for d in DIMENSIONS]
    if table == "provider_calls":
        values = {
            "calls": "count(*)",
            "requests": "0",
            "errors": "coalesce(sum(status = 'error'), 0)",
            "retries": "coalesce(sum(attempt > 1), 0)",
            "fallbacks": "coalesce(sum(fallback_of IS NOT NULL), 0)",
            "app_cache_hits": "coalesce(sum(app_cache_hit = 1), 0)",
            "unpriced_calls": "coalesce(sum(cost_nanousd IS NULL), 0)",
            "input_tokens": "coalesce(sum(input_tokens), 0)",
            "output_tokens": "coalesce(sum(output_tokens), 0)",
            "cache_read_tokens": "coalesce(sum(cache_read_tokens), 0)",
            "cache_write_tokens": "coalesce(sum(cache_write_tokens), 0)",
            "reasoning_tokens": "coalesce(sum(reasoning_tokens), 0)",
            "cost": "coalesce(sum(cost_nanousd), 0)",
            "unattributed_cost": (
                f"coalesce(sum(CASE WHEN {_UNATTRIBUTED} THEN cost_nanousd END), 0)"
            ),
            "cost_avoided": "coalesce(sum(cost_avoided_nanousd), 0)",
        }
    else:  # requests: no provider, model or tier
        dims = [*dims[:4], "''", "''", "''"]
        values = {m: "0" for m in ROLLUP_MEASURES}
        values["requests"] = "count(*)"
    columns = ", ".join(("hour", *DIMENSIONS, *_rollup_columns()))
    select = ", ".join(("hour", *dims, *(values[m] for m in ROLLUP_MEASURES)))
    group = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 2))
    update = ", ".join(f"{c} = {c} + excluded.{c}" for c in _rollup_columns())
    return (
        f"INSERT INTO rollup_hourly ({columns}) SELECT {select} FROM {table} WHERE id > ?"
        f" GROUP BY {group} ON CONFLICT ({', '.join(('hour', *DIMENSIONS))})"
        f" DO UPDATE SET {update}"
    )


_INSERTS: Final = {table: _insert_sql(table) for table in COLUMNS}
_ROLLUPS: Final = {table: _rollup_sql(table) for table in ("provider_calls", "requests")}
_DATA_ERRORS: Final = (
    sqlite3.InterfaceError,
    sqlite3.ProgrammingError,
    sqlite3.IntegrityError,
    OverflowError,
    TypeError,
    ValueError,
)


class SQLiteStore(ForkSafeConnections, EventQueries):
    """Backend (``write_batch``) and reader (`EventQueries`) for one SQLite file."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 5.0,
        cache_mb: int = 32,
        synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL",
        readonly: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        # A read-only store (reports) opens the file with mode=ro: it never creates the file,
        # its tables, or a WAL; writing through it raises.
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self.cache_mb = cache_mb
        self.synchronous = synchronous
        self._conn: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._read_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path!r})"

    # -- writing -----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            return self._connect_readonly()
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
            if version < 1:
                conn.execute("BEGIN IMMEDIATE")
                for statement in _schema():
                    conn.execute(statement)
                conn.execute("PRAGMA user_version = 1")
                conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_readonly(self) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"no event store at {self.path!r}")
        uri = f"file:{quote(os.path.abspath(self.path))}?mode=ro"
        conn = sqlite3.connect(
            uri, uri=True, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        except BaseException:
            conn.close()
            raise
        missing = [t for t in (*COLUMNS, "rollup_hourly") if t not in names]
        if missing:
            conn.close()
            raise sqlite3.OperationalError(
                f"{self.path!r} is not an ownership_ctx event store (no table {missing[0]})"
            )
        return conn

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
                    rows = split_rows(events)
                    self._insert(conn, rows)
                except _DATA_ERRORS:
                    # One odd value (a list where a number belongs, an int beyond 64 bits)
                    # must not hold back its batch: coerce everything and try once more.
                    rows = split_rows(events, sanitize=True)
                    self._insert(conn, rows)
            except sqlite3.Error:
                # After an I/O or read-only error SQLite may keep the file read-only: start
                # from a fresh connection on the next try.
                self._drop_connection()
                raise

    def _insert(self, conn: sqlite3.Connection, rows: Rows) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, table_rows in rows.items():
                if not table_rows:
                    continue
                rollup = _ROLLUPS.get(table)
                if rollup is not None:
                    # New rows get ids above the current maximum (no AUTOINCREMENT gaps
                    # matter): the rows this transaction inserted, and only those.
                    (before,) = conn.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()
                conn.executemany(_INSERTS[table], table_rows)
                if rollup is not None:
                    conn.execute(rollup, (before,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    self._drop_connection()
            raise

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

    # -- reading (EventQueries) --------------------------------------------------------------

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._read_lock:
            if self._reader is None:
                self._reader = self._connect()
            try:
                return self._reader.execute(sql, params).fetchall()
            except sqlite3.Error:
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
        query = rollup_query(group_by, where, start, end, "?", _ROLLUP_COST_COLUMNS)
        return query.rows(self._fetch(query.sql, query.params), nanos=True)

    def events_by_trace(self, trace_id: str) -> list[dict[str, Any]]:
        found = [
            rebuild(table, row[:-1], json.loads(row[-1]))
            for table in COLUMNS
            for row in self._fetch(read_sql(table, "?"), [trace_id])
        ]
        return sorted(found, key=by_time)

    def event_ids(self, kind: str | None = None) -> list[str]:
        return [eid for (eid,) in self._fetch(event_ids_sql(kind), [])]


def by_time(event: Mapping[str, Any]) -> tuple[float, str]:
    """Sort key of rebuilt events: time, then id (stable whatever the database's collation)."""
    ts = event.get("ts")
    return (ts if isinstance(ts, (int, float)) else 0.0, str(event.get("event_id")))
