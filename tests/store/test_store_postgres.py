"""The PostgreSQL store: same schema, answers and idempotence as SQLite."""

from __future__ import annotations

import contextlib
from decimal import Decimal
from pathlib import Path

import psycopg

from ownership_ctx.sinks.config import open_backend, open_sink
from ownership_ctx.sinks.pipeline import Pipeline
from ownership_ctx.store import SQLiteStore
from tests.store.helpers import TRACE, assert_stored_exactly_once, hop_event, mixed, provider_call

HOUR = 3600 * 500_000


def test_same_answers_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    batch = [
        *mixed(300),
        provider_call(ts=HOUR, cost="0.000000000123"),  # below a nano-dollar: exact here
        # Odd types and a NUL (PostgreSQL text cannot hold one) in the body.
        provider_call(ts=HOUR, attempt="2", problems={"x": "\x00"}),
    ]
    pg = open_backend(pg_url)
    lite = SQLiteStore(tmp_path / "events.db")
    for store in (pg, lite):
        store.write_batch(batch)
        store.write_batch(batch[:50])  # a replay
    assert sorted(pg.event_ids()) == sorted(lite.event_ids())
    for group in [(), ("owner_team",), ("hour", "model", "service_tier"), ("day", "tenant")]:
        a, b = pg.rollups(0, 2**40, group), lite.rollups(0, 2**40, group)
        assert [r.group for r in a] == [r.group for r in b]
        for x, y in zip(a, b, strict=True):
            assert (x.calls, x.requests, x.input_tokens, x.retries) == (
                y.calls,
                y.requests,
                y.input_tokens,
                y.retries,
            )
            assert abs(x.cost - y.cost) < Decimal("0.000000001") * 2
    exact = pg.rollups(HOUR, HOUR + 1)[0].cost
    assert exact == Decimal("0.0042500") + Decimal("0.000000000123")
    assert [e["event_id"] for e in pg.events_by_trace(TRACE)] == [
        e["event_id"] for e in lite.events_by_trace(TRACE)
    ]
    pg.close()
    lite.close()


def test_pipeline_into_postgres(pg_url: str, tmp_path: Path) -> None:
    sink = open_sink(pg_url, spool_dir=tmp_path / "spool")
    assert isinstance(sink, Pipeline)
    sent = mixed(2500)
    for e in sent:
        sink.emit(e)
    assert sink.close(30)
    assert_stored_exactly_once(open_backend(pg_url), sent)


def test_schema_dropped_under_a_running_store_is_recreated(pg_url: str, pg_server: str) -> None:
    store = open_backend(pg_url)
    store.write_batch([hop_event()])
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    # The first try may fail (the pipeline would spool it); the next one recreates the schema.
    with contextlib.suppress(psycopg.Error):
        store.write_batch([hop_event()])
    store.write_batch([hop_event()])
    assert len(store.event_ids("hop")) >= 1
    store.close()


def test_full_event_as_json_in_sql(pg_url: str, pg_server: str) -> None:
    event = provider_call(streaming=True, billing_scope="proj_a", **{"extra.region": "eu"})
    store = open_backend(pg_url)
    store.write_batch([event])
    assert store.events_by_trace(TRACE) == [event]
    schema = pg_url.rsplit("schema=", 1)[1]
    with psycopg.connect(pg_server) as conn:
        (as_sql,) = conn.execute(f"SELECT event FROM {schema}.provider_calls_json").fetchone()
    assert {k: v for k, v in as_sql.items() if v is not None} == {
        k: v for k, v in event.items() if v is not None
    }
    store.close()
