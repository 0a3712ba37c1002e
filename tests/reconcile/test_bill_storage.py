"""Bills in the event store, SQLite and PostgreSQL: idempotent, overlapping periods replaced,
one transaction per import, an audit record per import."""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal

import pytest

from ownership_ctx.reconcile.importers import parse_bytes, parse_file
from ownership_ctx.store.bills import open_bill_store

from .conftest import FIXTURES


def _billed(url: str, source: str) -> list[tuple[str, Decimal]]:
    store = open_bill_store(url, readonly=True)
    try:
        rows = store.fetch(
            "SELECT day, cost FROM bill_rows WHERE source = ? ORDER BY day, cost", (source,)
        )
    finally:
        store.close()
    return [(day, Decimal(cost)) for day, cost in rows]


def test_same_export_twice_counts_once(db: str) -> None:
    batch = parse_file("openai-costs", FIXTURES / "openai_costs.jsonl")
    store = open_bill_store(db)
    try:
        first = store.store(batch)
        second = store.store(batch)
        records = store.imports()
    finally:
        store.close()
    assert (first.rows, first.replaced) == (3, 0)
    assert (second.rows, second.replaced) == (3, 3)
    assert sum(cost for _, cost in _billed(db, "openai-costs")) == Decimal("1.35")
    # Both imports are kept for audit, with their file and digest.
    assert [r.origin for r in records] == [str(FIXTURES / "openai_costs.jsonl")] * 2
    assert records[0].sha256 == batch.sha256 and records[0].imported_at > 0


def test_overlapping_period_is_replaced_not_added(db: str) -> None:
    store = open_bill_store(db)
    try:
        store.store(parse_file("openai-costs", FIXTURES / "openai_costs.jsonl"))
        # A later export of day 1 only, with a corrected amount.
        page = {
            "object": "page",
            "data": [
                {
                    "start_time": 1793577600,
                    "end_time": 1793664000,
                    "results": [
                        {
                            "object": "organization.costs.result",
                            "amount": {"value": 2.5, "currency": "usd"},
                            "line_item": "gpt-4o-2024-08-06, input",
                            "project_id": "proj_a",
                        }
                    ],
                }
            ],
            "has_more": False,
        }
        record = store.store(parse_bytes("openai-costs", json.dumps(page).encode(), "day1.json"))
    finally:
        store.close()
    assert record.replaced == 3
    assert _billed(db, "openai-costs") == [("2026-11-02", Decimal("2.5"))]


def test_invocation_logs_overlap_by_request_id(db: str) -> None:
    batch = parse_file("bedrock-logs", FIXTURES / "bedrock_logs.jsonl")
    store = open_bill_store(db)
    try:
        store.store(batch)
        again = store.store(dataclasses.replace(batch, rows=batch.rows[1:]))
        count = store.fetch("SELECT count(*) FROM bill_rows")[0][0]
    finally:
        store.close()
    assert again.rows == 0 and count == 3


def test_a_failing_import_stores_nothing(db: str) -> None:
    store = open_bill_store(db)
    good = parse_file("openai-costs", FIXTURES / "openai_costs.jsonl")
    try:
        store.store(good)
        broken = dataclasses.replace(good.rows[0], model=None)  # type: ignore[arg-type]
        with pytest.raises(Exception):  # noqa: B017 - sqlite3 / psycopg integrity errors
            store.store(dataclasses.replace(good, rows=(*good.rows, broken)))
        imports = len(store.imports())
    finally:
        store.close()
    # The replacing DELETE was rolled back with the failed insert: the first import stands.
    assert sum(cost for _, cost in _billed(db, "openai-costs")) == Decimal("1.35")
    assert imports == 1
