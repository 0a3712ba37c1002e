"""Events -> table rows, and rows -> events again (the same on both databases)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from ownership_ctx.schema.encoding import encode_event
from ownership_ctx.schema.money import nano_parts

from .tables import TABLE_OF_KIND, TABLES, ColumnKind

__all__ = ["Row", "Rows", "by_time", "rebuild", "split_rows"]

Row = tuple[Any, ...]
Rows = dict[str, list[Row]]

_INT64: Final = 1 << 63
_RAW_KEYS: Final = {name: table.raw_keys for name, table in TABLES.items()}
_TYPED: Final = {name: table.typed_keys for name, table in TABLES.items()}


def _hour(ts: Any) -> int:
    return int(ts // 3600) * 3600


def _rest(event: Mapping[str, Any], typed: frozenset[str]) -> dict[str, Any]:
    """What the body stores: keys without a typed column, and None values (so that a key
    that was present but null comes back, and an absent key stays absent)."""
    return {k: v for k, v in event.items() if v is None or k not in typed}


def _pc_row(
    event: Mapping[str, Any],
    keys: tuple[str, ...] = _RAW_KEYS["provider_calls"],
    typed: frozenset[str] = _TYPED["provider_calls"],
) -> Row:
    get = event.get
    raw_cost, raw_avoided = get("cost"), get("cost_avoided")
    cost, nanos = nano_parts(raw_cost)
    avoided, avoided_nanos = nano_parts(raw_avoided)
    rest = _rest(event, typed)
    # The typed cost is normalised ("1E-7" -> "0.0000001", garbage -> NULL): keep the
    # original in the body when it differs, so the event reads back as it was emitted.
    if cost is not raw_cost and raw_cost is not None:
        rest["cost"] = raw_cost
    if avoided is not raw_avoided and raw_avoided is not None:
        rest["cost_avoided"] = raw_avoided
    return (
        *map(get, keys),
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


def _envelope_row(table: str) -> Callable[[Mapping[str, Any]], Row]:
    """Request and hop rows: the raw keys, the hour, ``missing`` joined, the body."""
    keys, typed = _RAW_KEYS[table], _TYPED[table]

    def row(event: Mapping[str, Any]) -> Row:
        get = event.get
        return (
            *map(get, keys),
            _hour(get("ts")),
            _joined(get("missing")),
            encode_event(_rest(event, typed)),
        )

    return row


_rq_row = _envelope_row("requests")
_hop_row = _envelope_row("hops")


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
_OTHER: Final = TABLE_OF_KIND["other"]


def split_rows(events: Iterable[Mapping[str, Any]], *, sanitize: bool = False) -> Rows:
    """Rows per table. Fast path trusts the event's types; with ``sanitize`` every value is
    coerced to its column's kind first (used after the fast path hit a data error), and the
    body keeps the whole original event (its values win when the event is read back)."""
    out: Rows = {table: [] for table in TABLES}
    table_of = TABLE_OF_KIND.get
    for event in events:
        table = table_of(event.get("kind"), _OTHER)  # type: ignore[arg-type]
        if sanitize:
            row = _ROW_OF_TABLE[table](_sanitized(event, table))
            out[table].append((*row[:-1], encode_event(event)))
        else:
            out[table].append(_ROW_OF_TABLE[table](event))
    return out


def rebuild(table: str, values: Sequence[Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """The event as it was emitted, from its typed columns (`Table.read_columns` order) and
    its body."""
    event: dict[str, Any] = {}
    for column, value in zip(TABLES[table].read_columns, values, strict=False):
        if value is None:
            continue
        if column.kind == "bool":
            value = bool(value)  # SQLite hands back 0 / 1
        elif column.kind == "cost" and not isinstance(value, str):
            value = format(value, "f")  # PostgreSQL hands back a Decimal
        event[column.key] = value  # type: ignore[index]
    event.update(body)
    return event


def by_time(event: Mapping[str, Any]) -> tuple[float, str]:
    """Sort key of rebuilt events: time, then id (stable whatever the database's collation)."""
    ts = event.get("ts")
    return (ts if isinstance(ts, (int, float)) else 0.0, str(event.get("event_id")))


def _sanitized(event: Mapping[str, Any], table: str) -> dict[str, Any]:
    clean = dict(event)
    for column in TABLES[table].columns:
        if column.key is not None and column.key in clean:
            clean[column.key] = _coerce(clean[column.key], column.kind)
    if clean.get("event_id") is None:
        # A stable id (the content's hash), so that a replay of the same event still dedupes.
        clean["event_id"] = hashlib.sha256(encode_event(event).encode()).hexdigest()[:32]
    elif not isinstance(clean["event_id"], str):
        clean["event_id"] = str(clean["event_id"])
    ts = _coerce(clean.get("ts"), "real")
    clean["ts"] = ts if ts is not None else 0.0
    return clean


def _coerce(value: Any, kind: ColumnKind) -> Any:
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
        return nano_parts(value)[0]
    return value
