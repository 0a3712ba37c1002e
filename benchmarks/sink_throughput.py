"""Event store throughput: the pipeline against the physical limit of each database.

    .venv/bin/python benchmarks/sink_throughput.py [--quick] [--json PATH] [--pg URL]

Cases:
- hand-off: what ``emit`` costs the caller (the writer is kept idle, so this is the queue
  append alone), for `Pipeline.emit` and for `ownership_ctx.events.emit` (which also stamps
  an id and a time);
- SQLite / PostgreSQL "raw executemany": the same rows the store would write, built
  beforehand, inserted with ``executemany`` in the same batches into a fresh copy of the same
  schema -- the physical limit of the database from Python;
- SQLite / PostgreSQL "pipeline": the same events, built beforehand (as the raw rows are),
  emitted by the host thread and written by the pipeline (conversion to rows, JSON bodies,
  inserts, rollups), from the first emit until ``flush`` returns; the producer yields when
  the queue is 90% full, so this measures sustained throughput, not the spool;
- "sqlite writer per event": where the pipeline's time goes, from parts measured apart
  (building the rows, the raw insert and commit, rollups and loss steps from ``write_batch``
  run synchronously, and the rest: two threads sharing one interpreter);
- memory: RSS and tracemalloc while 1,000,000 events (``--quick``: 50,000) go through the
  SQLite pipeline.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ownership_ctx import events
from ownership_ctx.ids import new_event_id
from ownership_ctx.sinks.pipeline import Pipeline
from ownership_ctx.store import SQLiteStore, split_rows
from ownership_ctx.store.tables import TABLES

PG_URL = os.environ.get(
    "OWNERSHIP_CTX_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEMPLATE: dict[str, Any] = {
    "kind": "provider_call",
    "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    "owner_team": "search",
    "workflow_id": "answer",
    "feature": "summaries",
    "tenant": "t_1f2e3d4c",
    "user": "u_9a8b7c6d",
    "attribution": "attributed",
    "call_id": "c2d6a7b0e1f24f5c",
    "attempt": 1,
    "status": "ok",
    "http_status": 200,
    "error.type": None,
    "gen_ai.provider.name": "openai",
    "gen_ai.operation.name": "chat",
    "api": "responses",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.response.id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "provider_request_id": "req_7f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "service_tier": "default",
    "streaming": False,
    "latency_ms": 812.451,
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300,
    "gen_ai.usage.cache_read.input_tokens": 1024,
    "gen_ai.usage.cache_creation.input_tokens": 0,
    "cache_write_5m_tokens": None,
    "cache_write_1h_tokens": None,
    "gen_ai.usage.reasoning.output_tokens": 0,
    "input_audio_tokens": None,
    "output_audio_tokens": None,
    "input_image_tokens": None,
    "output_image_tokens": None,
    "usage_status": "reported",
    "cost": "0.0042560",
    "currency": "USD",
    "cost_source": "price_table",
    "price_model_id": "gpt-4o-2024-08-06",
    "cost_avoided": None,
    "app_cache_hit": False,
    "fallback_of": None,
    "fallback_of_call_id": None,
    "recorded_by": "httpx",
    "problems": [],
}
TEAMS = ("search", "billing", "support", "growth")
FEATURES = ("summaries", "chat", "search", "triage", "drafts")

Result = dict[str, Any]
results: list[Result] = []


def record(case: str, metric: str, value: float, unit: str) -> float:
    results.append({"case": case, "metric": metric, "value": round(value, 3), "unit": unit})
    return value


def make_events(n: int, start: int = 0) -> Iterator[dict[str, Any]]:
    """Provider calls as the host builds them: a fresh dict each, distinct groups, and the
    ids the recorder stamps (`new_event_id`: time-ordered)."""
    now = time.time()
    for i in range(start, start + n):
        event = dict(TEMPLATE)
        event["event_id"] = new_event_id()
        event["ts"] = now + i * 0.001
        event["owner_team"] = TEAMS[i % 4]
        event["feature"] = FEATURES[i % 5]
        yield event


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- hand-off ---------------------------------------------------------------------------------


class Discard:
    def write_batch(self, batch: list[Any]) -> None:
        pass


def bench_handoff(n: int) -> None:
    batch = list(make_events(n))
    pipeline = Pipeline(Discard(), queue_size=n + 10, flush_interval=3600, spool_dir=None)
    pipeline.emit(batch[0])  # start the writer outside the timing
    emit = pipeline.emit
    gc.disable()
    start = time.perf_counter_ns()
    for event in batch:
        emit(event)
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    record("hand-off Pipeline.emit", "per_event", elapsed / n / 1000, "us")
    pipeline.close(60)

    fresh = [dict(TEMPLATE) for _ in range(n)]
    pipeline = Pipeline(Discard(), queue_size=n + 10, flush_interval=3600, spool_dir=None)
    previous = events.set_sink(pipeline)
    events.emit(dict(TEMPLATE))
    gc.disable()
    start = time.perf_counter_ns()
    for event in fresh:
        events.emit(event)
    elapsed = time.perf_counter_ns() - start
    gc.enable()
    events.set_sink(previous)
    record("hand-off events.emit (stamps id+ts)", "per_event", elapsed / n / 1000, "us")
    pipeline.close(60)


# -- throughput ---------------------------------------------------------------------------------


def produce(pipeline: Pipeline, batch: list[dict[str, Any]]) -> float:
    """Emit the events, yielding when the queue is nearly full; seconds until all are stored."""
    high = int(pipeline.queue_size * 0.9)
    queue = pipeline._queue  # paced on the queue depth
    emit = pipeline.emit
    start = time.perf_counter()
    for event in batch:
        emit(event)
        if len(queue) >= high:
            while len(queue) >= high:
                time.sleep(0.0005)
    assert pipeline.flush(600), "flush did not complete"
    elapsed = time.perf_counter() - start
    pipeline.close(60)
    return elapsed


def raw_rows(n: int) -> list[tuple[Any, ...]]:
    return split_rows(list(make_events(n)))["provider_calls"]


def bench_sqlite(n: int, directory: Path) -> tuple[float, float]:
    rows = raw_rows(n)
    names = list(TABLES["provider_calls"].names)
    raw_path = directory / "raw.db"
    SQLiteStore(raw_path).write_batch([])  # same schema, pragmas
    import sqlite3

    conn = sqlite3.connect(raw_path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA cache_size=-32768")
    sql = (
        f"INSERT OR IGNORE INTO provider_calls ({', '.join(names)})"
        f" VALUES ({', '.join('?' * len(names))})"
    )
    start = time.perf_counter()
    for i in range(0, n, 2000):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(sql, rows[i : i + 2000])
        conn.execute("COMMIT")
    raw = n / (time.perf_counter() - start)
    conn.close()
    del rows
    record("sqlite raw executemany", "throughput", raw, "events/s")

    # Events built beforehand, as the raw case's rows are: both time the store's side only.
    batch = list(make_events(n))
    pipeline = Pipeline(SQLiteStore(directory / "pipe.db"), spool_dir=directory / "spool")
    piped = n / produce(pipeline, batch)
    del batch
    record("sqlite pipeline", "throughput", piped, "events/s")
    record("sqlite pipeline / raw", "ratio", piped / raw, "x")
    profile_sqlite(n, directory, raw, piped)
    return raw, piped


def profile_sqlite(n: int, directory: Path, raw: float, piped: float) -> None:
    """Where the pipeline's time per event goes, from public parts measured apart: building
    the rows (`split_rows`), the raw insert and commit (the case above), ``write_batch`` run
    synchronously (rows + insert + rollups + loss steps), and the rest: the writer thread and
    the host's thread sharing one interpreter."""
    batches = [list(make_events(2000, start=i)) for i in range(0, n, 2000)]
    gc.collect()
    start = time.perf_counter()
    for batch in batches:
        split_rows(batch)
    rows_us = (time.perf_counter() - start) / n * 1e6
    store = SQLiteStore(directory / "sync.db")
    store.write_batch([])
    start = time.perf_counter()
    for batch in batches:
        store.write_batch(batch)
    sync_us = (time.perf_counter() - start) / n * 1e6
    store.close()
    insert_us, piped_us = 1e6 / raw, 1e6 / piped
    case = "sqlite writer per event"
    record(case, "build_rows", rows_us, "us")
    record(case, "insert_and_commit", insert_us, "us")
    record(case, "rollups_and_loss_steps", max(0.0, sync_us - rows_us - insert_us), "us")
    record(case, "write_batch", sync_us, "us")
    record(case, "threads", max(0.0, piped_us - sync_us), "us")
    record(case, "pipeline", piped_us, "us")


def bench_postgres(n: int, url: str, directory: Path) -> None:
    try:
        import psycopg
    except ImportError:
        print("psycopg not installed: PostgreSQL cases skipped", file=sys.stderr)
        return
    try:
        admin = psycopg.connect(url, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        print(f"PostgreSQL not reachable ({exc}): cases skipped", file=sys.stderr)
        return
    from ownership_ctx.store import PostgresStore
    from ownership_ctx.store.dialect import POSTGRESQL

    schemas = [f"oc_bench_{uuid.uuid4().hex[:8]}_{k}" for k in ("raw", "pipe")]
    try:
        rows = raw_rows(n)
        names = list(TABLES["provider_calls"].names)
        store = PostgresStore(url, schema=schemas[0])
        store.write_batch([])  # creates the schema
        store.close()
        conn = psycopg.connect(url, options=f"-c search_path={schemas[0]}")
        # The same day partitions the store creates before its first row of a day.
        for day in sorted({int(row[1] // 86400) for row in rows}):
            conn.execute(POSTGRESQL.partition_ddl("provider_calls", day))
        conn.commit()
        sql = (
            f"INSERT INTO provider_calls ({', '.join(names)})"
            f" VALUES ({', '.join(['%s'] * len(names))}) ON CONFLICT (event_id, ts) DO NOTHING"
        )
        start = time.perf_counter()
        with conn.cursor() as cur:
            for i in range(0, n, 2000):
                cur.executemany(sql, rows[i : i + 2000])
                conn.commit()
        raw = n / (time.perf_counter() - start)
        conn.close()
        del rows
        record("postgres raw executemany", "throughput", raw, "events/s")

        batch = list(make_events(n))
        pipeline = Pipeline(PostgresStore(url, schema=schemas[1]), spool_dir=directory / "pg-spool")
        piped = n / produce(pipeline, batch)
        del batch
        record("postgres pipeline", "throughput", piped, "events/s")
        record("postgres pipeline / raw", "ratio", piped / raw, "x")
    finally:
        for schema in schemas:
            admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        admin.close()


# -- memory ---------------------------------------------------------------------------------


def bench_memory(n: int, directory: Path) -> None:
    pipeline = Pipeline(SQLiteStore(directory / "mem.db"), spool_dir=directory / "mem-spool")
    high = int(pipeline.queue_size * 0.9)
    queue = pipeline._queue
    samples: list[float] = []
    step = max(1, n // 20)
    gc.collect()
    baseline = rss_mib()
    for i, event in enumerate(make_events(n)):
        pipeline.emit(event)
        while len(queue) >= high:
            time.sleep(0.0005)
        if i % step == step - 1:
            samples.append(rss_mib())
    pipeline.close(600)
    half = len(samples) // 2
    case = f"memory sqlite {n:,} events"
    record(case, "rss_start", baseline, "MiB")
    record(case, "rss_max_first_half", max(samples[:half]), "MiB")
    record(case, "rss_max_second_half", max(samples[half:]), "MiB")
    record(case, "growth_second_half", max(samples[half:]) - max(samples[:half]), "MiB")

    # tracemalloc over a shorter run (it slows Python down several times): the peak of
    # traced memory over the first half of the events against the peak over the second.
    m = max(50_000, n // 10)
    pipeline = Pipeline(SQLiteStore(directory / "trace.db"), spool_dir=directory / "tr-spool")
    queue = pipeline._queue
    quarter = m // 2
    tracemalloc.start()
    peaks = []
    for i, event in enumerate(make_events(m)):
        pipeline.emit(event)
        while len(queue) >= high:
            time.sleep(0.0005)
        if i % quarter == quarter - 1:
            peaks.append(tracemalloc.get_traced_memory()[1] / 2**20)
            tracemalloc.reset_peak()
    pipeline.close(600)
    tracemalloc.stop()
    record(f"tracemalloc sqlite {m:,} events", "peak_first_half", peaks[0], "MiB")
    record(f"tracemalloc sqlite {m:,} events", "peak_second_half", peaks[-1], "MiB")


# -- table --------------------------------------------------------------------------------------


def print_table() -> None:
    width = max(len(r["case"]) for r in results)
    print(f"\n{'case':<{width}}  {'metric':<24} {'value':>14}  unit")
    print("-" * (width + 50))
    for r in results:
        value = r["value"]
        shown = f"{value:,.0f}" if r["unit"] == "events/s" else f"{value:,.3f}"
        print(f"{r['case']:<{width}}  {r['metric']:<24} {shown:>14}  {r['unit']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer events (a few seconds)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON")
    parser.add_argument("--pg", default=PG_URL, help="PostgreSQL URL ('' to skip)")
    parser.add_argument("--events", type=int, help="events per throughput case")
    parser.add_argument("--memory-events", type=int, help="events for the memory case")
    args = parser.parse_args(argv)
    n = args.events or (20_000 if args.quick else 200_000)
    m = args.memory_events or (50_000 if args.quick else 1_000_000)
    directory = Path(tempfile.mkdtemp(prefix="oc-sink-bench-"))
    # Memory first: the throughput cases build their events up front, which leaves RSS high.
    steps: list[tuple[str, Callable[[], object]]] = [
        ("memory", lambda: bench_memory(m, directory)),
        ("hand-off", lambda: bench_handoff(min(n, 100_000))),
        ("sqlite", lambda: bench_sqlite(n, directory)),
    ]
    if args.pg:
        steps.append(("postgres", lambda: bench_postgres(n, args.pg, directory)))
    try:
        for name, step in steps:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            step()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_table()
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
