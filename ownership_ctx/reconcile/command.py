"""``ownership-ctx reconcile``: import provider bills, then join them with our events.

    ownership-ctx reconcile import openai-costs costs.json [more files...]
    ownership-ctx reconcile fetch openai --since 2026-11-01 --until 2026-12-01
    ownership-ctx reconcile imports
    ownership-ctx reconcile --since 2026-11-01 --max-unexplained 2% [--format csv]

Importing writes the bill tables of the store (one transaction per file; a malformed file
stores nothing and exits 2); the report only reads. Exit 1 when dark spend is above
``--max-unexplained``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Protocol

from ..reports.rendering import Document
from ..reports.timerange import UsageError, parse_range
from ..sinks.config import redacted_url

__all__ = ["add_arguments", "run"]

# The CLI's exit codes (cli.py registers this command and imports this module lazily: this
# module does not import cli, so there is no import cycle).
EXIT_OK = 0
EXIT_BREACHED = 1


class Context(Protocol):
    """What `ownership_ctx.cli.Context` gives a command."""

    out: IO[str]
    db: str

    def progress(self, message: str) -> None: ...

    def emit(self, document: Document) -> None: ...


KINDS = (
    "openai-costs",
    "openai-usage",
    "anthropic-usage",
    "anthropic-cost",
    "bedrock-logs",
    "aws-cur",
)


def _common(p: argparse.ArgumentParser) -> None:
    # Suppressed defaults: a value given before the action is not overwritten by its default.
    s = argparse.SUPPRESS
    p.add_argument("--db", default=s, metavar="URL", help="store URL or SQLite file path")
    p.add_argument("--since", default=s, help="first day (default 30d)")
    p.add_argument("--until", default=s, help="end day, exclusive (default now)")
    p.add_argument("--format", choices=("table", "csv", "json"), default=s)


def add_arguments(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument(
        "--max-unexplained",
        metavar="PCT",
        help="exit 1 when dark spend is above this share of billed spend, e.g. 2%%",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION")
    imp = sub.add_parser("import", help="store exported bill files")
    _common(imp)
    imp.add_argument("kind", choices=KINDS, help="what the files are")
    imp.add_argument("files", nargs="+", help="exported files (.json, .jsonl, .csv, .gz)")
    fetch = sub.add_parser("fetch", help="fetch bills from a provider's admin API")
    _common(fetch)
    fetch.add_argument("provider", choices=("openai", "anthropic"))
    fetch.add_argument(
        "--key-env",
        metavar="VAR",
        help="environment variable holding the admin key (default OPENAI_ADMIN_KEY /"
        " ANTHROPIC_ADMIN_KEY); the key is never printed or stored",
    )
    fetch.add_argument("--base-url", help="API base URL (default the provider's)")
    fetch.add_argument("--save", metavar="DIR", help="also save the fetched pages as JSON lines")
    _common(sub.add_parser("imports", help="list what was imported, from where, when"))


def _threshold(text: str | None) -> Decimal | None:
    if text is None:
        return None
    from ..reports.coverage import parse_threshold

    return parse_threshold(text)


def run(args: argparse.Namespace, ctx: Context) -> int:
    from ..store.bills import StoreMissing
    from .bills import BillError

    try:
        if args.action == "import":
            return _import(args, ctx)
        if args.action == "fetch":
            return _fetch(args, ctx)
        if args.action == "imports":
            return _imports(args, ctx)
        return _report(args, ctx)
    except (BillError, StoreMissing) as e:
        raise UsageError(str(e)) from None
    except _db_errors() as e:
        detail = " ".join(str(e).split())[:200]  # one line: drivers add hints on new lines
        raise UsageError(f"the store {redacted_url(ctx.db)}: {detail}") from None


def _db_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    errors: list[type[BaseException]] = [sqlite3.Error]
    try:
        import psycopg

        errors.append(psycopg.Error)
    except ImportError:
        pass
    return tuple(errors)


def _import(args: argparse.Namespace, ctx: Context) -> int:
    from ..store.bills import open_bill_store
    from .importers import parse_file

    # Every file is parsed before anything is stored: one bad file stores nothing.
    batches = []
    for name in args.files:
        ctx.progress(f"reading {name}")
        batches.append(parse_file(args.kind, name))
    _ensure_event_store(ctx.db)
    store = open_bill_store(ctx.db)
    try:
        for batch in batches:
            record = store.store(batch)
            ctx.out.write(
                f"imported {record.rows} {batch.source} rows from {batch.origin}"
                f" ({record.period_start} .. {record.period_end}, replaced {record.replaced})\n"
            )
    finally:
        store.close()
    return EXIT_OK


def _fetch(args: argparse.Namespace, ctx: Context) -> int:
    from ..store.bills import open_bill_store
    from .fetch import FetchError, fetch_bills

    span = parse_range(args.since, args.until)
    var = args.key_env or f"{args.provider.upper()}_ADMIN_KEY"
    key = os.environ.get(var, "")
    if not key:
        raise UsageError(f"set {var} to an admin key of {args.provider} (or give --key-env)")
    start = dt.datetime.fromtimestamp(span.start // 86400 * 86400, dt.timezone.utc)
    end = dt.datetime.fromtimestamp(-(-span.end // 86400) * 86400, dt.timezone.utc)
    try:
        batches = fetch_bills(
            args.provider,
            key,
            start,
            end,
            base_url=args.base_url,
            save=Path(args.save) if args.save else None,
            progress=ctx.progress,
        )
    except FetchError as e:
        raise UsageError(str(e)) from None
    _ensure_event_store(ctx.db)
    store = open_bill_store(ctx.db)
    try:
        for batch in batches:
            record = store.store(batch)
            ctx.out.write(
                f"fetched {record.rows} {batch.source} rows"
                f" ({record.period_start} .. {record.period_end}, replaced {record.replaced})\n"
            )
    finally:
        store.close()
    return EXIT_OK


def _ensure_event_store(url: str) -> None:
    """Bills stored in a new store go next to the event tables, created now as a sink would:
    else `reconcile` (and every report) could not read a store that holds only bills."""
    from ..sinks.config import open_backend

    store = open_backend(url)  # SQLiteStore / PostgresStore: a writer of the event tables
    try:
        store.write_batch([])  # an empty batch opens the store: its tables are created
    finally:
        store.close()


def _imports(args: argparse.Namespace, ctx: Context) -> int:
    from ..reports.rendering import Column, Document, Table
    from ..store.bills import open_bill_store

    store = open_bill_store(ctx.db, readonly=True)
    try:
        records = store.imports() if store.has_bills() else []
    finally:
        store.close()
    rows: list[dict[str, Any]] = [
        {
            "id": r.import_id,
            "source": r.source,
            "origin": r.origin,
            "sha256": r.sha256[:16],
            "period": f"{r.period_start}..{r.period_end}",
            "imported": dt.datetime.fromtimestamp(r.imported_at, dt.timezone.utc).strftime(
                "%Y-%m-%d %H:%M"
            ),
            "rows": r.rows,
            "replaced": r.replaced,
        }
        for r in records
    ]
    columns = (
        [Column(k, k, "int" if k in ("id", "rows", "replaced") else "text") for k in rows[0]]
        if rows
        else [Column("id", "id")]
    )
    ctx.emit(
        Document(
            "reconcile-imports",
            "Bill imports",
            tables=[Table("imports", "Imports", columns, rows)],
            data={"imports": rows},
        )
    )
    return EXIT_OK


def _report(args: argparse.Namespace, ctx: Context) -> int:
    from ..store.bills import open_bill_store
    from .join import reconcile
    from .render import document

    threshold = _threshold(args.max_unexplained)
    span = parse_range(args.since, args.until)
    store = open_bill_store(ctx.db, readonly=True)
    try:
        if not store.has_bills():
            raise UsageError(
                f"no bills in {redacted_url(ctx.db)} yet: ownership-ctx reconcile import KIND"
                " FILE (or reconcile fetch PROVIDER) first"
            )
        ctx.progress("joining bills with provider calls")
        result = reconcile(store, span.start, span.end, threshold=threshold, price=list_price)
    finally:
        store.close()
    ctx.emit(document(result))
    return EXIT_BREACHED if result.breached else EXIT_OK


def list_price(
    provider: str, model: str, inp: int, out: int, read: int, write: int, day: str
) -> Decimal | None:
    """The price table's cost of usage (for requests only a provider's logs saw)."""
    from ..metering.recorder import pricer
    from ..metering.usage import Usage

    ts = dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp() + 43200
    usage = Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
    )
    return pricer().price(provider, model, usage, ts).cost
