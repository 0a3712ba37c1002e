"""The reconciliation as a report `Document` (table / CSV / JSON) and as an HTML section."""

from __future__ import annotations

import html
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..reports.rendering import Column, Document, Table, money_text
from .join import Reconciliation

if TYPE_CHECKING:
    from ..reports.html import Section

__all__ = ["document", "html_section"]

_GROUP_COLUMNS = [
    Column("day", "day"),
    Column("provider", "provider"),
    Column("model", "model", none="(all)"),
    Column("scope", "scope", none="(all)"),
    Column("billed", "billed", "money"),
    Column("billed_tokens", "billed tokens", "int"),
    Column("ours", "ours", "money"),
    Column("attributed", "attributed", "money"),
    Column("unattributed", "unattributed", "money"),
    Column("estimated", "estimated", "money"),
    Column("ours_tokens", "our tokens", "int"),
    Column("dark", "dark spend", "money"),
    Column("drift", "price drift", "money"),
    Column("ours_only", "ours only", "money"),
    Column("status", "status"),
]


def _rows(result: Reconciliation) -> list[dict[str, Any]]:
    return [
        {
            "day": g.day,
            "provider": g.provider,
            "model": g.model,
            "scope": g.scope,
            "billed": g.billed_cost,
            "billed_tokens": g.billed_tokens,
            "billed_requests": g.billed_requests,
            "ours": g.ours_cost,
            "attributed": g.attributed,
            "unattributed": g.unattributed,
            "estimated": g.estimated,
            "ours_tokens": g.ours_tokens,
            "ours_calls": g.ours_calls,
            "dark": g.dark,
            "drift": g.drift,
            "ours_only": g.ours_only,
            "status": g.status,
            "where": g.where,
        }
        for g in result.groups
    ]


def document(result: Reconciliation) -> Document:
    rows = _rows(result)
    dark = [
        {
            "day": r["day"],
            "provider": r["provider"],
            "model": r["model"],
            "dark": r["dark"],
            "where": "; ".join(r["where"]) or "(the bill does not say)",
        }
        for r in rows
        if r["dark"] > 0
    ]
    logs = [r for r in result.requests if not r["matched"]]
    share = result.unexplained_share
    headline = [
        f"{result.start_day} .. {result.end_day}: billed {money_text(result.billed)} USD,"
        f" ours {money_text(result.ours)} USD",
        f"dark spend {money_text(result.dark)} USD ({(share * 100).quantize(Decimal('0.01'))}%"
        " of billed), ours only"
        f" {money_text(result.ours_only)} USD",
    ]
    if result.threshold is not None:
        verdict = "ABOVE" if result.breached else "within"
        headline.append(
            f"unexplained {(share * 100).quantize(Decimal('0.01'))}% is {verdict} the"
            f" {(result.threshold * 100).normalize()}% limit"
        )
    tables = [
        Table("groups", "Billed vs ours, per day x provider x model", _GROUP_COLUMNS, rows),
        Table(
            "dark",
            "Dark spend: billed, never seen by instrumented code",
            [
                Column("day", "day"),
                Column("provider", "provider"),
                Column("model", "model", none="(all)"),
                Column("dark", "dark spend", "money"),
                Column("where", "where the bill says it came from"),
            ],
            dark,
        ),
        Table(
            "drift",
            "Price drift: the bill's price of our tokens vs our list-price estimate",
            [
                Column("provider", "provider"),
                Column("model", "model"),
                Column("ours", "ours", "money"),
                Column("billed_for_our_tokens", "billed for our tokens", "money"),
                Column("drift", "ours / billed - 1", "pct"),
            ],
            result.drift,
        ),
    ]
    if result.requests:
        tables.append(
            Table(
                "bedrock_requests",
                "Bedrock invocation logs matched by request id",
                [
                    Column("day", "day"),
                    Column("model", "model"),
                    Column("account", "account"),
                    Column("identity", "identity"),
                    Column("owner_team", "owner (requestMetadata)", none="-"),
                    Column("matched", "ours?"),
                    Column("requests", "requests", "int"),
                    Column("ours_cost", "ours", "money"),
                    Column("estimated_cost", "estimated (list price)", "money"),
                ],
                result.requests,
            )
        )
    notes = list(result.notes)
    if logs:
        notes.append(
            f"{sum(r['requests'] for r in logs)} Bedrock requests are in the invocation logs"
            " only: see the identity column"
        )
    return Document(
        "reconcile",
        "Reconciliation with provider bills",
        headline=headline,
        tables=tables,
        notes=notes,
        data={
            "start": result.start_day,
            "end": result.end_day,
            "billed": result.billed,
            "ours": result.ours,
            "dark": result.dark,
            "ours_only": result.ours_only,
            "unexplained_share": share,
            "threshold": result.threshold,
            "breached": result.breached,
            "groups": rows,
            "drift": result.drift,
            "bedrock_requests": result.requests,
            "notes": notes,
        },
    )


TITLE = "Reconciliation with provider bills"


def html_section(result: Reconciliation) -> str:
    """A self-contained ``<section>`` for the HTML report (no scripts, escaped text)."""
    return f'<section id="reconciliation"><h2>{TITLE}</h2>{html_body(result)}</section>'


def html_body(result: Reconciliation) -> str:
    """The section's content under its title: headline, groups, dark spend (escaped)."""

    def cell(value: Any) -> str:
        if isinstance(value, Decimal):
            return html.escape(money_text(value))
        if isinstance(value, list):
            return html.escape("; ".join(map(str, value)))
        return html.escape("" if value is None else str(value))

    doc = document(result)
    parts = [f"<p>{html.escape(line)}</p>" for line in doc.headline]
    for table in doc.tables[:2]:
        if not table.rows:
            continue
        parts.append(f"<h3>{html.escape(table.title)}</h3><table><thead><tr>")
        parts += [f"<th>{html.escape(c.title)}</th>" for c in table.columns]
        parts.append("</tr></thead><tbody>")
        for row in table.rows:
            parts.append(
                "<tr>"
                + "".join(f"<td>{cell(row.get(c.key))}</td>" for c in table.columns)
                + "</tr>"
            )
        parts.append("</tbody></table>")
    return "".join(parts)


def _load(db_url: str, start: int, end: int) -> Reconciliation | None:
    from ..store.bills import StoreMissing, open_bill_store
    from .join import reconcile

    try:
        store = open_bill_store(db_url, readonly=True)
    except StoreMissing:
        return None
    try:
        if not store.has_bills():
            return None
        return reconcile(store, start, end)
    finally:
        store.close()


def html_section_for(db_url: str, start: int, end: int) -> str:
    """The HTML report's reconciliation section for ``[start, end)``; "" without bills."""
    result = _load(db_url, start, end)
    return "" if result is None else html_section(result)


def report_section(db_url: str, start: int, end: int) -> Section | None:
    """The section `ownership-ctx report --html` adds for ``[start, end)``; None without bills."""
    from ..reports.html import Section

    result = _load(db_url, start, end)
    return None if result is None else Section(TITLE, html_body(result))


def dark_spend(db_url: str, start: int, end: int) -> Decimal:
    """Billed spend no event of ours saw in ``[start, end)`` (0 without bills): what coverage
    can add to its unattributed share when bills are present."""
    result = _load(db_url, start, end)
    return Decimal(0) if result is None else result.dark
