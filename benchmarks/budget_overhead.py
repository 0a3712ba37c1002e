"""What a budget check adds at the edge, next to the same edge without budgets.

The ASGI middleware (enforce, full envelope) wraps ``edge_overhead.py``'s bare app and gets
its requests (app, scopes and timing loop imported from it), called directly, in three
setups: no budgets installed, budgets with in-process counters, and budgets on Redis counters
(skipped when no Redis answers). Each budgeted setup has five budgets, two of which cover the
requests' owner (a team budget and a per-tenant one) and neither is spent, so every request
is checked and served. The check reads a cached view refreshed at most every second (with
Redis: one pipelined read per refresh, amortized over the requests). Rounds are interleaved;
the fastest round is kept. Also: `Budgets.check` alone, per call.

Goal: the budget check adds under 5 µs per request.

    python benchmarks/budget_overhead.py [--quick] [--json PATH] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from edge_overhead import KEY, bare_asgi, make_scopes, time_asgi  # the same app and requests

from ownership_ctx import Envelope, Keys, Policy, budgets, new_trace_id
from ownership_ctx.asgi import OwnershipMiddleware
from ownership_ctx.budgets import Budget, Budgets, Counters
from ownership_ctx.hashing import hash_identifier

TENANT = hash_identifier("acme-corp", KEY)
GOAL_US = 5.0


def make_budgets(counters: Counters | None) -> Budgets:
    limit = Decimal("1000000")
    return Budgets(
        [
            Budget("platform", limit, "month", {"owner_team": "search-platform"}),
            Budget("per-tenant", limit, "day", {"owner_team": "search-platform"}, each=("tenant",)),
            Budget("billing", limit, "month", {"owner_team": "billing"}),
            Budget("exports", limit, "week", {"feature": "export"}),
            Budget("big-tenant", limit, "day", {"tenant": hash_identifier("big", KEY)}),
        ],
        counters,
        refresh=1.0,
    )


def redis_counters(url: str | None) -> Counters | None:
    if not url:
        return None
    parts = urlsplit(url)
    try:
        socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 6379), 1).close()
    except OSError:
        return None
    try:
        from ownership_ctx.budgets.redis_counters import RedisCounters
    except ImportError:  # no redis client: pip install "ownership-ctx[budgets]"
        return None
    return RedisCounters(url, prefix=f"oc-bench:{uuid.uuid4().hex[:8]}:")


def run(rounds: int, n: int, redis_url: str | None) -> tuple[dict[str, float], float]:
    policy = Policy(mode="enforce", required=("owner_team", "workflow_id", "feature", "tenant"))
    edge = OwnershipMiddleware(bare_asgi, policy=policy, keys=Keys())
    setups: dict[str, Budgets | None] = {
        "edge, no budgets": None,
        "edge + budgets (in-process counters)": make_budgets(None),
    }
    shared = redis_counters(redis_url)
    if shared is not None:
        setups["edge + budgets (Redis counters)"] = make_budgets(shared)
    requests = make_scopes(n, unique_baggage=False)
    samples: dict[str, list[float]] = {"bare app": [], **{name: [] for name in setups}}

    async def go() -> None:
        for _ in range(rounds):
            samples["bare app"].append(await time_asgi(bare_asgi, requests))
            for name, setup in setups.items():
                if setup is None:
                    budgets.uninstall()
                else:
                    budgets.install(setup)
                samples[name].append(await time_asgi(edge, requests))
        budgets.uninstall()

    asyncio.run(go())
    # The check alone, on the in-process setup's cached view.
    check = make_budgets(None).check
    owner = Envelope(
        trace_id=new_trace_id(),
        owner_team="search-platform",
        workflow_id="ticket-triage-v2",
        feature="summarize",
        tenant=TENANT,
    )
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(n):
            check(owner, "edge")
        best = min(best, (time.perf_counter() - start) / n * 1e6)
    return {name: min(values) for name, values in samples.items()}, best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds instead of a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    parser.add_argument(
        "--redis",
        default=os.environ.get("OWNERSHIP_CTX_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis for the shared-counter case ('' to skip; skipped when it does not answer)",
    )
    args = parser.parse_args(argv)
    rounds, n = (5, 2_000) if args.quick else (15, 10_000)
    timings, check_us = run(rounds, n, args.redis or None)
    bare = timings["bare app"]
    base = timings["edge, no budgets"]
    results: list[dict[str, Any]] = []
    print(f"ASGI: per request, fastest of {rounds} interleaved rounds of {n} requests")
    print(f"{'case':<42}{'µs/request':>12}{'added µs':>10}{'by budgets µs':>15}")
    for name, value in timings.items():
        by_budgets = value - base if name.startswith("edge +") else None
        shown = f"{by_budgets:>15.2f}" if by_budgets is not None else f"{'':>15}"
        print(f"{name:<42}{value:>12.2f}{value - bare:>10.2f}{shown}")
        results.append(
            {"case": name, "metric": "time_per_request", "value": round(value, 3), "unit": "us"}
        )
        if by_budgets is not None:
            results.append(
                {
                    "case": name,
                    "metric": "added_by_budgets",
                    "value": round(by_budgets, 3),
                    "unit": "us",
                }
            )
    print(f"{'Budgets.check alone (cached view)':<42}{check_us:>12.2f}")
    results.append(
        {
            "case": "Budgets.check",
            "metric": "time_per_call",
            "value": round(check_us, 3),
            "unit": "us",
        }
    )
    if "edge + budgets (Redis counters)" not in timings:
        print("(Redis case skipped: no Redis answered)")
    print(f"goal: added by budgets < {GOAL_US} µs per request")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
