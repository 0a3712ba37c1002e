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

from ..testing.fake_admin import Billed, FakeAdminAPI
from .fetch import fetch_bills
from .storage import open_bill_store

__all__ = ["bill_demo"]

ADMIN_KEY: Final = "sk-admin-demo-not-secret"
DISCOUNT: Final = Decimal("0.97")
DARK_SHARE: Final = Decimal("0.05")
_NANO: Final = Decimal(1_000_000_000)

_TRAFFIC_SQL: Final = (
    "SELECT CAST(ts / 86400 AS INTEGER), provider, coalesce(response_model, request_model),"
    " json_extract(body, '$.billing_scope'), sum(coalesce(input_tokens, 0)),"
    " sum(coalesce(output_tokens, 0)), sum(coalesce(cache_read_tokens, 0)),"
    " sum(coalesce(cache_write_tokens, 0)), count(*), sum(cost_nanousd)"
    " FROM provider_calls WHERE cost_nanousd IS NOT NULL AND provider IN ('openai', 'anthropic')"
    " GROUP BY 1, 2, 3, 4"
)


def bill_items(db: str) -> list[Billed]:
    store = open_bill_store(db)
    try:
        rows = store.fetch(_TRAFFIC_SQL)
    finally:
        store.close()
    items = []
    epoch = dt.date(1970, 1, 1)
    for day, provider, model, scope, inp, out, read, write, calls, nanos in rows:
        date = epoch + dt.timedelta(days=int(day))
        cost = Decimal(int(nanos)) / _NANO
        key = "key_demo" if provider == "openai" else "apikey_demo"
        if provider == "anthropic":
            cost = (cost * DISCOUNT).quantize(Decimal("1e-9"))
        items.append(
            Billed(
                provider,
                date,
                model,
                cost,
                int(inp),
                int(out),
                int(read),
                int(write),
                int(calls),
                scope=scope,
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
                    part(int(inp)),
                    part(int(out)),
                    part(int(read)),
                    0,
                    max(1, part(int(calls))),
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
