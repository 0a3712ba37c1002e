"""Renderers shared by every report: terminal tables, CSV and JSON.

A report hands over `Document`: a title, headline lines, tables and notes (what it could not
count). Money stays `Decimal` until here: CSV and JSON print it exactly (no float ever); the
terminal rounds it for the eye only.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Mapping, Sequence
from decimal import ROUND_CEILING, Decimal
from typing import Any, Final, Literal

__all__ = [
    "Column",
    "Document",
    "Table",
    "human_day",
    "human_range",
    "money_places",
    "money_text",
    "nice_ticks",
    "render",
    "to_jsonable",
]

Kind = Literal["text", "int", "money", "pct", "num"]
Format = Literal["table", "csv", "json"]
_MONEY_DISPLAY: Final = Decimal("0.000001")
_PCT_DISPLAY: Final = Decimal("0.01")


@dataclasses.dataclass(frozen=True)
class Column:
    key: str
    title: str
    kind: Kind = "text"
    none: str = ""  # how a missing text value shows on a terminal ("(none)" for group keys)


@dataclasses.dataclass
class Table:
    name: str
    title: str
    columns: Sequence[Column]
    rows: Sequence[Mapping[str, Any]]
    footer: Mapping[str, Any] | None = None  # a totals row, shown under a rule
    records: bool = False  # long text: one block per row instead of columns, on a terminal


@dataclasses.dataclass
class Document:
    report: str
    title: str
    headline: list[str] = dataclasses.field(default_factory=list)
    tables: list[Table] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    data: dict[str, Any] = dataclasses.field(default_factory=dict)  # the JSON document


def money_text(value: Decimal | None) -> str:
    """Exact, plain (no exponent) and without trailing zeros: ``0.0045``, ``12``, ``0``."""
    if value is None:
        return ""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def money_places(total: Decimal) -> int:
    """One money precision for a whole page, from the size of its total: cents from 100 USD
    up, 4 decimals from 1 USD, else 6 (the terminal's). Smaller amounts show as ``<0.01``."""
    if total >= 100:
        return 2
    return 4 if total >= 1 else 6


def human_day(epoch: float, *, year: bool = False) -> str:
    """``Mon 12 Jan`` (``Mon 12 Jan 2026`` with ``year``), UTC."""
    moment = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    text = f"{moment:%a} {moment.day} {moment:%b}"
    return f"{text} {moment.year}" if year else text


def human_range(start: float, end: float) -> str:
    """``Mon 5 Jan 2026 to Sun 18 Jan 2026 (UTC)``: whole days name the last day included;
    otherwise the times are shown."""
    first = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    stop = dt.datetime.fromtimestamp(end, dt.timezone.utc)
    if first.hour == first.minute == 0 and stop.hour == stop.minute == 0:
        last = human_day(end - 86400, year=True)
        first_day = human_day(start, year=True)
        return f"{first_day} (UTC)" if first_day == last else f"{first_day} to {last} (UTC)"
    since, until = human_day(start, year=True), human_day(end, year=True)
    return f"{since} {first:%H:%M} to {until} {stop:%H:%M} UTC"


def nice_ticks(peak: Decimal, most: int = 6) -> list[Decimal]:
    """Axis ticks from 0 to at least ``peak``: at most ``most`` of them, a step of 1, 2, 2.5 or
    5 x 10^k, so labels read 0, 0.5, 1, 1.5 (never 1.25 or 3.75 by accident)."""
    if peak <= 0:
        return [Decimal(0), Decimal(1)]
    raw = peak / (most - 1)
    exponent = raw.adjusted()
    step = Decimal(10).scaleb(exponent)
    for factor in ("1", "2", "2.5", "5", "10"):
        candidate = Decimal(factor).scaleb(exponent)
        if candidate >= raw:
            step = candidate
            break
    count = int((peak / step).to_integral_value(rounding=ROUND_CEILING))
    return [(step * i).normalize() for i in range(count + 1)]


def tick_text(value: Decimal, ticks: Sequence[Decimal]) -> str:
    """A tick label with as many decimals as the step needs (``0``, ``0.5``, ``1.0``...)."""
    step = ticks[1] - ticks[0] if len(ticks) > 1 else Decimal(1)
    places = max(0, -step.normalize().as_tuple().exponent)  # type: ignore[operator]
    return f"{value:,.{places}f}"


def to_jsonable(value: Any) -> Any:
    """JSON-ready values: decimals as exact strings, tuples as lists, dataclasses as dicts."""
    if isinstance(value, Decimal):
        return money_text(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    return value


def _cell(value: Any, kind: Kind, *, exact: bool, none: str = "") -> str:
    if value is None:
        return "" if exact else ("-" if kind != "text" else none)
    if kind == "money" and isinstance(value, Decimal):
        if exact:
            return money_text(value)
        return format(value.quantize(_MONEY_DISPLAY), ",f")
    if kind == "pct" and isinstance(value, Decimal):
        if exact:
            return money_text(value)
        return f"{(value * 100).quantize(_PCT_DISPLAY)}%"
    if kind == "int" and isinstance(value, int) and not exact:
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def render_table(table: Table, width: int | None = None) -> str:
    """Aligned columns: numbers right, text left. Given a ``width`` (a terminal's), long text
    is cut with '…' to fit it; without one (output piped or saved) nothing is ever cut, so
    identifiers can be copied."""
    header = [c.title for c in table.columns]
    body = [
        [_cell(row.get(c.key), c.kind, exact=False, none=c.none) for c in table.columns]
        for row in table.rows
    ]
    if table.records:
        return _render_records(table)
    footer = (
        [
            _cell(table.footer[c.key], c.kind, exact=False) if c.key in table.footer else ""
            for c in table.columns
        ]
        if table.footer is not None
        else None
    )
    every = [header, *body, *([footer] if footer else [])]
    widths = [max(len(line[i]) for line in every) for i in range(len(header))]
    # Shrink the widest text column until the table fits the terminal (never below 12).
    text_columns = [i for i, c in enumerate(table.columns) if c.kind == "text"]
    while width is not None and sum(widths) + 2 * (len(widths) - 1) > width and text_columns:
        widest = max(text_columns, key=lambda i: widths[i])
        if widths[widest] <= 12:
            break
        widths[widest] -= 1

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            if len(cell) > widths[i]:
                cell = cell[: widths[i] - 1] + "…"
            numeric = table.columns[i].kind != "text"
            out.append(cell.rjust(widths[i]) if numeric else cell.ljust(widths[i]))
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    lines = [table.title, line(header), rule, *(line(r) for r in body)]
    if not body:
        lines.append("(no rows)")
    if footer:
        lines.extend([rule, line(footer)])
    return "\n".join(lines)


def _render_records(table: Table) -> str:
    """``first column  second column`` as a heading per row, the other columns under it."""
    lines = [table.title]
    head, *rest = table.columns
    for row in table.rows:
        lines.append(f"{_cell(row.get(head.key), head.kind, exact=False)}")
        for column in rest:
            value = _cell(row.get(column.key), column.kind, exact=False)
            if value not in ("", "-"):
                lines.append(f"    {column.title}: {value}")
    if not table.rows:
        lines.append("(none)")
    return "\n".join(lines)


def render_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in table.columns])
    for row in table.rows:
        writer.writerow([_cell(row.get(c.key), c.kind, exact=True) for c in table.columns])
    return out.getvalue()


def render(document: Document, fmt: Format, width: int | None = None) -> str:
    """The whole document in one format. CSV carries the first table only (one CSV, one
    table); JSON carries everything, exactly. ``width``: see `render_table`."""
    if fmt == "json":
        payload = {
            "report": document.report,
            "title": document.title,
            **to_jsonable(document.data),
            "notes": list(document.notes),
        }
        return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        return render_csv(document.tables[0]) if document.tables else ""
    parts = [document.title, *document.headline]
    for table in document.tables:
        parts.append("")
        parts.append(render_table(table, width))
    if document.notes:
        parts.append("")
        parts.extend(f"note: {n}" for n in document.notes)
    return "\n".join(parts) + "\n"
