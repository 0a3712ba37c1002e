"""Reports at scale: chargeback, coverage, audit and anomaly on a synthetic store, side by side
with the same aggregate computed by a plain GROUP BY over the raw events table.

A synthetic generator writes events through the store's own write path (`write_batch`: the raw
tables and the rollups, in batches): 12 teams x 3 workflows x 2 features, 4 tenants per
workflow, 3 models per team, four weeks of traffic; each request is an edge hop, a request
event, half of them a Celery hop, 1-3 provider calls (10% with a retried attempt); 2% of the
traces lose their envelope at a Celery task (quarantined, no owner). Scales are cumulative
(the store grows from one scale to the next) and always cover the same four weeks, so the
number of rollup groups saturates while the events keep growing. Ids are what hosts get:
random trace ids, time-ordered event ids (`ownership_ctx.ids.new_event_id`). Each scale's
events arrive in time order, sweeping the four weeks as a store fills in production;
``--backfill`` writes them in random time order instead (every index insert on a random page).

Cases (best of 3, warm):

- ``chargeback``: by team (rollups) vs ``GROUP BY owner_team`` over provider_calls + requests;
- ``chargeback_model``: by team and model, vs the same GROUP BY with the model;
- ``coverage``: totals, reasons and ISO weeks (rollups) vs a GROUP BY day over provider_calls;
- ``coverage_hops``: the same plus the breakdown by hop (the unattributed rollup, then the
  steps of those traces from ``loss_steps``, kept as they are written);
- ``audit``: 10 most recent traces + coverage, vs a GROUP BY trace for the recent traces + the
  raw coverage;
- ``anomaly``: one team, week 2 vs week 3 (rollups) vs GROUP BY provider/model/tier.

    python benchmarks/report_scale.py [--quick | --full] [--backfill] [--json PATH] [--db URL]

Scales: 100k and 1M events (``--quick``: 20k and 100k; ``--full``: also 10M). ``--db`` takes a
PostgreSQL URL to run there instead of a temporary SQLite file (the schema is dropped after;
after each scale's writes the schema is ANALYZEd, as autovacuum would have done).
Goal: chargeback and coverage under 1 s at 10M events, growing with the groups, not events.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ownership_ctx.reports import (
    TimeRange,
    anomaly,
    audit,
    chargeback,
    coverage,
    open_source,
)
from ownership_ctx.sinks import open_store
from ownership_ctx.store import StoreBase as Source

START = 1767571200  # 2026-01-05T00:00:00Z, a Monday
DAYS = 28
RANGE = TimeRange(START, START + DAYS * 86400)
WEEK2 = TimeRange(START + 7 * 86400, START + 14 * 86400)
WEEK3 = TimeRange(START + 14 * 86400, START + 21 * 86400)
MODELS = (
    ("openai", "gpt-4o", "default", Decimal("2.5"), Decimal("10")),
    ("openai", "gpt-4o-mini", "default", Decimal("0.15"), Decimal("0.6")),
    ("anthropic", "claude-haiku-4-5", "standard", Decimal("1"), Decimal("5")),
    ("anthropic", "claude-sonnet-4-5", "standard", Decimal("3"), Decimal("15")),
    ("gcp.gemini", "gemini-2.5-flash", "default", Decimal("0.3"), Decimal("2.5")),
)
BATCH = 20_000


def _units() -> list[dict[str, Any]]:
    units = []
    for t in range(12):
        for w in range(3):
            for f in range(2):
                units.append(
                    {
                        "team": f"team{t:02d}",
                        "workflow": f"wf{t:02d}-{w}",
                        "feature": f"feat{w}-{f}",
                        "tenants": [f"h1:{(t * 97 + w * 13 + k):032x}" for k in range(4)],
                        "models": [MODELS[(t + k) % len(MODELS)] for k in range(3)],
                        "route": f"/t{t}/w{w}",
                        "task": f"tasks.t{t}_w{w}",
                    }
                )
    return units


class Generator:
    """Synthetic events, seeded: `batches` sweeps the four weeks in time order (or, with
    ``backfill``, draws each request's time uniformly over them)."""

    def __init__(self, seed: int = 7, backfill: bool = False) -> None:
        self.rng = random.Random(seed)
        self.units = _units()
        self.backfill = backfill
        self.position = 0.0  # of the sweep, 0..1

    def _id(self, ts: float) -> str:
        # As `new_event_id` mints them at ``ts``: the time in ms, then 80 random bits.
        return f"{int(ts * 1000):012x}{self.rng.getrandbits(80):020x}"

    def request(self) -> list[dict[str, Any]]:
        rng = self.rng
        u = rng.choice(self.units)
        trace = f"{rng.getrandbits(128):032x}"
        ts = START + (rng.random() if self.backfill else self.position) * (DAYS * 86400 - 60)
        owner = {
            "trace_id": trace,
            "owner_team": u["team"],
            "workflow_id": u["workflow"],
            "feature": u["feature"],
            "tenant": rng.choice(u["tenants"]),
            "attribution": "attributed",
        }
        out: list[dict[str, Any]] = [
            {
                "kind": "hop",
                "event_id": self._id(ts),
                "ts": ts,
                "hop": "http",
                "unit": u["route"],
                "outcome": "attributed",
                "missing": [],
                **owner,
            },
            {
                "kind": "request",
                "event_id": self._id(ts),
                "ts": ts,
                "route": u["route"],
                "method": "POST",
                "status": 200,
                "latency_ms": 250.0,
                "outcome": "attributed",
                "missing": [],
                **owner,
            },
        ]
        call_owner = owner
        if rng.random() < 0.5:
            if rng.random() < 0.04:  # ~2% of all traces: the task lost its envelope
                lost = f"{rng.getrandbits(128):032x}"
                call_owner = {"trace_id": lost, "attribution": "quarantined"}
                missing = ["owner_team", "workflow_id", "feature"]
            else:
                missing = []
            out.append(
                {
                    "kind": "hop",
                    "event_id": self._id(ts + 0.05),
                    "ts": ts + 0.05,
                    "hop": "celery",
                    "unit": u["task"],
                    "missing": missing,
                    "outcome": call_owner["attribution"],
                    **call_owner,
                }
            )
        for n in range(rng.choice((1, 1, 2, 3))):
            provider, model, tier, p_in, p_out = rng.choice(u["models"])
            tokens_in, tokens_out = rng.randint(200, 4000), rng.randint(50, 800)
            cost = (tokens_in * p_in + tokens_out * p_out) / 1_000_000
            at = ts + 0.1 + n
            call = {
                "kind": "provider_call",
                "ts": at,
                "call_id": f"{trace[:16]}-{n}",
                "status": "ok",
                "gen_ai.provider.name": provider,
                "gen_ai.request.model": model,
                "gen_ai.response.model": model,
                "service_tier": tier,
                "gen_ai.usage.input_tokens": tokens_in,
                "gen_ai.usage.output_tokens": tokens_out,
                "cost": format(cost, "f"),
                "cost_source": "price_table",
                **call_owner,
            }
            if rng.random() < 0.1:
                out.append(
                    {
                        **call,
                        "event_id": self._id(at),
                        "attempt": 1,
                        "status": "error",
                        "gen_ai.usage.input_tokens": None,
                        "gen_ai.usage.output_tokens": None,
                        "cost": None,
                        "cost_source": "unpriced",
                    }
                )
                out.append({**call, "event_id": self._id(at), "attempt": 2})
            else:
                out.append({**call, "event_id": self._id(at), "attempt": 1})
        return out

    def batches(self, n_events: int) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        made = 0
        while made < n_events:
            self.position = made / n_events
            events = self.request()
            batch.extend(events)
            made += len(events)
            if len(batch) >= BATCH:
                yield batch
                batch = []
        if batch:
            yield batch


def grow(url: str, gen: Generator, n_events: int) -> float:
    """Write ``n_events`` more events; returns events per second."""
    store = open_store(url)
    written = 0
    started = time.perf_counter()
    try:
        for batch in gen.batches(n_events):
            store.write_batch(batch)  # type: ignore[attr-defined]
            written += len(batch)
            rate = written / (time.perf_counter() - started)
            print(f"\r  writing {written:,}/{n_events:,} ({rate:,.0f}/s)", end="", file=sys.stderr)
    finally:
        store.close()
    print(file=sys.stderr)
    return written / (time.perf_counter() - started)


def analyze(server: str, schema: str) -> None:
    """PostgreSQL: what autovacuum does within a minute of the writes (on by default; off on
    some development servers): table statistics, which the planner needs to look traces up
    by their index rather than scan (the hop breakdown). Not timed."""
    import psycopg

    with psycopg.connect(server, autocommit=True, options=f"-c search_path={schema}") as conn:
        conn.execute("ANALYZE")


# -- the raw GROUP BY equivalents ---------------------------------------------------------------


# The competitor: plain SQL over the raw tables, through the store's own connection
# (``fetch`` takes ``?`` placeholders and ``%`` for modulo on both databases).


def _cost(source: Source) -> str:
    return source.dialect.cost


def raw_chargeback(source: Source, model: bool) -> dict[tuple[Any, ...], Decimal]:
    key = "owner_team, coalesce(response_model, request_model)" if model else "owner_team"
    rows = source.fetch(
        f"SELECT {key}, count(*), sum({_cost(source)}), sum(input_tokens), sum(output_tokens)"
        f" FROM provider_calls WHERE ts >= ? AND ts < ? GROUP BY {key}",
        (RANGE.start, RANGE.end),
    )
    source.fetch(
        "SELECT owner_team, count(*) FROM requests WHERE ts >= ? AND ts < ? GROUP BY owner_team",
        (RANGE.start, RANGE.end),
    )
    width = 2 if model else 1
    return {tuple(r[:width]): source.dialect.to_money(r[width + 1]) for r in rows}


_UNATTRIBUTED = (
    "coalesce(attribution, '') <> 'attributed' OR coalesce(owner_team, '') = ''"
    " OR coalesce(workflow_id, '') = '' OR coalesce(feature, '') = ''"
)


def raw_coverage(source: Source) -> Decimal:
    rows = source.fetch(
        f"SELECT hour - hour % 86400 AS day, sum({_cost(source)}),"
        f" sum(CASE WHEN {_UNATTRIBUTED} THEN {_cost(source)} END)"
        " FROM provider_calls WHERE ts >= ? AND ts < ? GROUP BY day",
        (RANGE.start, RANGE.end),
    )
    return sum((source.dialect.to_money(r[2]) for r in rows), Decimal(0))


def raw_audit(source: Source) -> Decimal:
    source.fetch(
        "SELECT trace_id, max(ts) AS last FROM provider_calls WHERE ts >= ? AND ts < ?"
        " GROUP BY trace_id ORDER BY last DESC LIMIT 10",
        (RANGE.start, RANGE.end),
    )
    return raw_coverage(source)


def raw_anomaly(source: Source) -> Decimal:
    total = Decimal(0)
    for period in (WEEK2, WEEK3):
        rows = source.fetch(
            f"SELECT provider, coalesce(response_model, request_model), service_tier, count(*),"
            f" sum(input_tokens + output_tokens), sum({_cost(source)}) FROM provider_calls"
            " WHERE owner_team = ? AND ts >= ? AND ts < ? GROUP BY 1, 2, 3",
            ("team00", period.start, period.end),
        )
        source.fetch(
            "SELECT count(*) FROM requests WHERE owner_team = ? AND ts >= ? AND ts < ?",
            ("team00", period.start, period.end),
        )
        total = sum((source.dialect.to_money(r[5]) for r in rows), Decimal(0)) - total
    return total


# -- timing -------------------------------------------------------------------------------------


def best(fn: Callable[[], Any], rounds: int = 3) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(rounds):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return min(times), value


def cases(source: Source) -> list[tuple[str, Callable[[], Any], Callable[[], Any]]]:
    def cb() -> dict[tuple[Any, ...], Decimal]:
        return {(r.group["team"],): r.spend for r in chargeback(source, RANGE, ("team",)).rows}

    def cbm() -> dict[tuple[Any, ...], Decimal]:
        rows = chargeback(source, RANGE, ("team", "model")).rows
        return {(r.group["team"], r.group["model"]): r.spend for r in rows}

    return [
        ("chargeback", cb, lambda: raw_chargeback(source, False)),
        ("chargeback_model", cbm, lambda: raw_chargeback(source, True)),
        (
            "coverage",
            lambda: coverage(source, RANGE, hops=False).unattributed,
            lambda: raw_coverage(source),
        ),
        (
            "coverage_hops",
            lambda: coverage(source, RANGE).unattributed,
            lambda: raw_coverage(source),
        ),
        (
            "audit",
            lambda: audit(source, RANGE, sample=10).unattributed_share,
            lambda: raw_audit(source),
        ),
        (
            "anomaly",
            lambda: anomaly(source, "team00", WEEK2, WEEK3).decomposition.change,
            lambda: raw_anomaly(source),
        ),
    ]


def run_scale(url: str, label: str, events: int) -> list[dict[str, Any]]:
    out = []
    with open_source(url) as source:
        (rollup_rows,) = source.fetch("SELECT count(*) FROM rollup_hourly")[0]
        (daily_rows,) = source.fetch("SELECT count(*) FROM rollup_daily")[0]
        for name, report, raw in cases(source):
            report_s, got = best(report)
            raw_s, expected = best(raw)
            same = "audit" in name or got == expected  # audit: a share vs an amount
            if name == "coverage_hops" or name == "coverage":
                same = got == expected
            out.append(
                {
                    "scale": label,
                    "events": events,
                    "case": name,
                    "report_s": report_s,
                    "raw_s": raw_s,
                    "rollup_rows": int(rollup_rows),
                    "daily_rows": int(daily_rows),
                    "same": bool(same),
                }
            )
            print(
                f"  {label:>5} {name:<17} report {report_s:8.4f}s  raw {raw_s:8.4f}s"
                f"  {'same' if same else 'DIFFERENT'}",
                file=sys.stderr,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="20k and 100k events (seconds)")
    size.add_argument("--full", action="store_true", help="also 10M events (minutes, GBs)")
    parser.add_argument(
        "--backfill", action="store_true", help="write in random time order (not as it happens)"
    )
    parser.add_argument("--json", type=Path, help="write results here")
    parser.add_argument("--db", help="a postgresql:// URL (default: a temporary SQLite file)")
    args = parser.parse_args()
    scales = (
        [(20_000, "20k"), (100_000, "100k")]
        if args.quick
        else [(100_000, "100k"), (1_000_000, "1M")]
    )
    if args.full:
        scales.append((10_000_000, "10M"))
    tmp = tempfile.mkdtemp(prefix="oc-report-scale-")
    schema = f"oc_bench_{int(time.time())}"
    url = (
        f"{args.db}{'&' if '?' in args.db else '?'}schema={schema}"
        if args.db
        else (f"sqlite:///{tmp}/events.db")
    )
    results: list[dict[str, Any]] = []
    write_rates = []
    gen, have = Generator(backfill=args.backfill), 0
    try:
        for target, label in scales:
            print(f"== {label} events", file=sys.stderr)
            write_rates.append((label, grow(url, gen, target - have)))
            have = target
            if args.db:
                analyze(args.db, schema)
            results.extend(run_scale(url, label, target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if args.db:
            import psycopg

            with psycopg.connect(args.db, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    print()
    print(
        f"{'events':>6}  {'case':<17} {'report':>9} {'GROUP BY':>9} {'raw/report':>10}"
        f" {'hourly rows':>11} {'daily rows':>10}  same"
    )
    for r in results:
        ratio = r["raw_s"] / r["report_s"] if r["report_s"] else float("inf")
        print(
            f"{r['scale']:>6}  {r['case']:<17} {r['report_s']:8.4f}s {r['raw_s']:8.4f}s"
            f" {ratio:9.1f}x {r['rollup_rows']:>11,} {r['daily_rows']:>10,}"
            f"  {'yes' if r['same'] else 'NO'}"
        )
    for label, rate in write_rates:
        print(f"write path: {rate:,.0f} events/s while growing to {label}")
    if args.json:
        rows = []
        for r in results:
            case = f"{r['case']}@{r['scale']}"
            rows.append({"case": case, "metric": "report", "value": r["report_s"], "unit": "s"})
            rows.append({"case": case, "metric": "raw_group_by", "value": r["raw_s"], "unit": "s"})
        for label, rate in write_rates:
            rows.append(
                {"case": f"write@{label}", "metric": "rate", "value": rate, "unit": "events/s"}
            )
        args.json.write_text(json.dumps({"results": rows}, indent=2) + "\n")
    if not all(r["same"] for r in results):
        sys.exit("a report disagreed with its GROUP BY")


if __name__ == "__main__":
    main()
