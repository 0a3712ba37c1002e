"""Reconciliation at scale: a month of provider calls against 30 daily bills, on SQLite,
next to a plain join of the same tables.

Setup (not timed): a temporary SQLite store with N provider_call events over 30 days (OpenAI
and Anthropic, 3 models each, every OpenAI call in project ``proj_a`` as ``billing_scope``,
10% unattributed, 1% with estimated usage), shaped as metering emits them and written through
the store's own write path (`open_backend(db).write_batch`, batches of 20,000: the raw rows and
every rollup tier, as a sink would write them), then 30 daily bills per provider (OpenAI
costs + usage, Anthropic cost + usage) through the importers and `BillStore.store`, as a
user's imports would arrive.

Cases (best of 3, warm):

- ``reconcile``: `ownership_ctx.reconcile.join.reconcile` for the month: our side from the
  daily rollup (``rollup_daily``) per day x provider x model x project, attributed /
  unattributed / estimated, dark spend, drift, the Bedrock request join (raw rows by request
  id; empty here), the covered days;
- ``plain_join``: one SQL statement: bills per day x provider x model LEFT JOIN the raw
  events' GROUP BY day x provider x model (cost and tokens only): what any reconciliation that
  reads the raw calls pays at least, as SQLite plans it (through the ``ts`` index);
  ``plain_join_scan`` (printed only): the same reading the table in order (``NOT INDEXED``).

    python benchmarks/reconcile_scale.py [--quick] [--json PATH]

Scale: 1M calls (``--quick``: 100k). Goal: reconcile under 5 s at 1M calls.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ownership_ctx.reconcile.importers import parse_bytes
from ownership_ctx.reconcile.join import reconcile
from ownership_ctx.sinks.config import open_backend
from ownership_ctx.store.bills import open_bill_store

START = 1793577600  # 2026-11-02T00:00:00Z
DAYS = 30
MODELS = {
    "openai": ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "o3-mini"],
    "anthropic": ["claude-haiku-4-5-20251001", "claude-sonnet-4-5", "claude-opus-4-1"],
}

PLAIN_JOIN = """
SELECT b.day, b.provider, b.model, b.cost, p.cost, p.tokens
FROM (SELECT day, CASE WHEN source LIKE 'openai%' THEN 'openai' ELSE 'anthropic' END AS provider,
             model, sum(cost_nanousd) AS cost
      FROM bill_rows GROUP BY 1, 2, 3) b
LEFT JOIN (SELECT date(CAST(ts / 86400 AS INTEGER) * 86400, 'unixepoch') AS day, provider,
                  response_model AS model, sum(cost_nanousd) AS cost,
                  sum(input_tokens + output_tokens) AS tokens
           FROM provider_calls WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3) p
ON p.day = b.day AND p.provider = b.provider AND p.model = b.model
"""


BATCH = 20_000


def _event(i: int, rng: random.Random) -> tuple[dict[str, Any], int, str, str, int, int, int]:
    """Call ``i``: a provider_call event as metering emits it, and (day, provider, model,
    input, output, cost in nano-dollars) for the bills."""
    provider = "openai" if i % 2 else "anthropic"
    model = MODELS[provider][rng.randrange(3)]
    day = rng.randrange(DAYS)
    ts = START + day * 86400 + rng.randrange(86400) + rng.random()
    inp, out = rng.randrange(100, 3000), rng.randrange(10, 800)
    nanos = inp * 2500 + out * 10000
    unattributed = rng.random() < 0.1
    owner: dict[str, Any] = (
        {"attribution": "unattributed"}
        if unattributed
        else {
            "owner_team": f"team-{i % 12}",
            "workflow_id": "answer",
            "feature": "summaries",
            "attribution": "attributed",
        }
    )
    event = {
        "trace_id": f"{rng.getrandbits(128):032x}",
        **owner,
        "kind": "provider_call",
        "event_id": str(uuid.UUID(int=rng.getrandbits(128))),
        "ts": ts,
        "call_id": f"{rng.getrandbits(64):016x}",
        "attempt": 1,
        "status": "ok",
        "http_status": 200,
        "error.type": None,
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "chat",
        "api": "chat_completions" if provider == "openai" else "messages",
        "gen_ai.request.model": model,
        "gen_ai.response.model": model,
        "gen_ai.response.id": f"resp_{i}",
        "provider_request_id": f"req_{i}",
        "billing_scope": "proj_a" if provider == "openai" else None,
        "billing_region": None,
        "api_key_fingerprint": "sha256:0123456789abcdef",
        "service_tier": None,
        "streaming": False,
        "latency_ms": 800.0,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.cache_read.input_tokens": 0,
        "gen_ai.usage.cache_creation.input_tokens": 0,
        "gen_ai.usage.reasoning.output_tokens": 0,
        "usage_status": "estimated" if rng.random() < 0.01 else "reported",
        "cost": f"{nanos / 1e9:.9f}",
        "currency": "USD",
        "cost_source": "price_table",
        "unpriced_reason": None,
        "price_model_id": model,
        "cost_avoided": None,
        "app_cache_hit": False,
        "fallback_of": None,
        "fallback_of_call_id": None,
        "recorded_by": "httpx",
        "problems": [],
    }
    return event, day, provider, model, inp, out, nanos


def populate(db: str, calls: int) -> int:
    """Write the calls and the bills; returns the calls' total cost in nano-dollars."""
    rng = random.Random(7)
    sums: dict[tuple[int, str, str], list[int]] = {}
    backend = open_backend(db)
    try:
        batch = []
        for i in range(calls):
            event, day, provider, model, inp, out, nanos = _event(i, rng)
            batch.append(event)
            s = sums.setdefault((day, provider, model), [0, 0, 0, 0])
            s[0] += inp
            s[1] += out
            s[2] += nanos
            s[3] += 1
            if len(batch) == BATCH:
                backend.write_batch(batch)
                batch = []
        backend.write_batch(batch)
    finally:
        backend.close()
    store = open_bill_store(db)
    for provider, kinds in (
        ("openai", ("openai-costs", "openai-usage")),
        ("anthropic", ("anthropic-cost", "anthropic-usage")),
    ):
        for day in range(DAYS):
            items = [(m, s) for (d, p, m), s in sums.items() if d == day and p == provider]
            for kind in kinds:
                data = _bill(kind, day, items, rng)
                store.store(parse_bytes(kind, data, f"{kind}-{day}.json"))
    store.close()
    return sum(s[2] for s in sums.values())


def _bill(kind: str, day: int, items: list[tuple[str, list[int]]], rng: random.Random) -> bytes:
    start = START + day * 86400
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start))
    iso_end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start + 86400))
    results: list[dict[str, Any]] = []
    for model, (inp, out, nanos, n) in items:
        billed = nanos * (1 + rng.random() * 0.02) / 1e9  # a little drift and dark spend
        if kind == "openai-costs":
            results.append(
                {
                    "object": "organization.costs.result",
                    "project_id": "proj_a",
                    "line_item": f"{model}, input",
                    "amount": {"value": round(billed, 6), "currency": "usd"},
                }
            )
        elif kind == "openai-usage":
            results.append(
                {
                    "object": "organization.usage.completions.result",
                    "model": model,
                    "project_id": "proj_a",
                    "input_tokens": inp,
                    "output_tokens": out,
                    "num_model_requests": n,
                }
            )
        elif kind == "anthropic-cost":
            results.append(
                {
                    "model": model,
                    "workspace_id": None,
                    "currency": "USD",
                    "amount": f"{billed * 100:.4f}",
                    "description": model,
                }
            )
        else:
            results.append(
                {
                    "model": model,
                    "workspace_id": None,
                    "uncached_input_tokens": inp,
                    "cache_read_input_tokens": 0,
                    "output_tokens": out,
                }
            )
    if kind.startswith("openai"):
        bucket: dict[str, Any] = {"start_time": start, "end_time": start + 86400}
    else:
        bucket = {"starting_at": iso, "ending_at": iso_end}
    bucket["results"] = results
    return json.dumps({"data": [bucket], "has_more": False}).encode()


def best(fn: Callable[[], Any], runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k calls instead of 1M")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args()
    calls = 100_000 if args.quick else 1_000_000
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        db = f"sqlite:///{Path(tmp) / 'events.db'}"
        t0 = time.perf_counter()
        total = populate(db, calls)
        print(
            f"setup: {calls:,} calls + {DAYS} daily bills x 4 exports in"
            f" {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        store = open_bill_store(db, readonly=True)
        end = START + DAYS * 86400
        result = reconcile(store, START, end)
        groups = len(result.groups)
        # What is timed reads every call: our side is the month's whole spend.
        assert result.ours == Decimal(total) / 10**9, (result.ours, total)
        ours = best(lambda: reconcile(store, START, end))
        plain = best(lambda: store.fetch(PLAIN_JOIN, (START, end)))
        scan_sql = PLAIN_JOIN.replace("FROM provider_calls", "FROM provider_calls NOT INDEXED")
        plain_scan = best(lambda: store.fetch(scan_sql, (START, end)))
        store.close()
    results = [
        {"case": "reconcile", "metric": "seconds", "value": round(ours, 4), "unit": "s"},
        {"case": "plain_join", "metric": "seconds", "value": round(plain, 4), "unit": "s"},
        {
            "case": "reconcile_vs_plain_join",
            "metric": "ratio",
            "value": round(ours / plain, 4),
            "unit": "x",
        },
        {"case": "reconcile", "metric": "groups", "value": groups, "unit": "groups"},
        {"case": "reconcile", "metric": "calls", "value": calls, "unit": "calls"},
    ]
    print(f"reconcile_scale: {calls:,} provider calls vs {DAYS} daily bills (SQLite, best of 3)")
    print(f"{'case':<12} {'seconds':>9} {'vs plain join':>14}")
    print(f"{'reconcile':<12} {ours:>9.3f} {ours / plain:>13.3f}x   ({groups} groups)")
    print(f"{'plain join':<12} {plain:>9.3f} {1:>13.3f}x   (SQLite's plan: the ts index)")
    print(
        f"{'plain scan':<12} {plain_scan:>9.3f} {plain_scan / plain:>13.3f}x   (the same,"
        " NOT INDEXED)"
    )
    print(f"goal: reconcile < 5 s at 1M calls: {'met' if ours < 5 or args.quick else 'MISSED'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
