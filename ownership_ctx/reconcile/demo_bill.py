"""The demo's provider bill: what the fake admin API bills for the demo's traffic, plus
spend from a key the demo never instrumented, fetched live and stored for ``reconcile``.

The bill is made from the traffic the demo recorded, as a provider would see it: every
metered OpenAI and Anthropic call per day and model, at the price the demo recorded, except
that Anthropic grants a 3% discount (price drift: our list price is too high) and someone ran
a batch job with a laptop key in another OpenAI project (``proj_laptop``, key
``key_laptop``): dark spend worth about a twentieth of the demo's OpenAI spend.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import IO, Final

from ..store.bills import open_bill_store
from ..testing.fake_admin import Billed, FakeAdminAPI
from .fetch import fetch_bills

__all__ = ["bill_demo"]

ADMIN_KEY: Final = "sk-admin-demo-not-secret"
DISCOUNT: Final = Decimal("0.97")
DARK_SHARE: Final = Decimal("0.05")


def bill_items(db: str) -> list[Billed]:
    store = open_bill_store(db)
    try:
        traffic = store.daily_traffic()
    finally:
        store.close()
    items = []
    for day, provider, model, scope, inp, out, read, write, calls, cost in traffic:
        if provider not in ("openai", "anthropic"):
            continue
        date = dt.date.fromisoformat(day)
        key = "key_demo" if provider == "openai" else "apikey_demo"
        if provider == "anthropic":
            cost = (cost * DISCOUNT).quantize(Decimal("1e-9"))
        items.append(
            Billed(
                provider,
                date,
                model,
                cost,
                inp,
                out,
                read,
                write,
                calls,
                scope=scope or None,
                api_key_id=key,
            )
        )
        if provider == "openai":

            def part(n: int) -> int:
                return int(Decimal(n) * DARK_SHARE)

            items.append(
                Billed(
                    provider,
                    date,
                    model,
                    (cost * DARK_SHARE).quantize(Decimal("1e-9")),
                    part(inp),
                    part(out),
                    part(read),
                    0,
                    max(1, part(calls)),
                    scope="proj_laptop",
                    api_key_id="key_laptop",
                )
            )
    return items


def bill_demo(db: str, start: dt.datetime, end: dt.datetime, out: IO[str]) -> None:
    """Serve the demo's bill from a fake admin API, fetch it as a user would, store it."""
    with FakeAdminAPI(admin_key=ADMIN_KEY) as admin:
        admin.bill_all(bill_items(db))
        store = open_bill_store(db)
        try:
            for provider in ("openai", "anthropic"):
                for batch in fetch_bills(provider, ADMIN_KEY, start, end, base_url=admin.url):
                    record = store.store(batch)
                    out.write(f"  fetched {record.rows} {batch.source} rows from {admin.url}\n")
        finally:
            store.close()
