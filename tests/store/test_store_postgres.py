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


def test_hosts_writing_into_new_days_at_once_never_deadlock(pg_url: str) -> None:
    """Two hosts whose every batch starts a new day, one a day ahead of the other: one
    creates a day's partitions while the other is still writing (and reading hops and
    requests for the loss steps). Attaching a partition does not lock out the parent's
    writers; creating one inside it did, in another order than the inserts: a deadlock,
    aborted after a second."""
    import threading

    days, per_day, day0 = 24, 60, 1_767_571_200
    hosts = [open_backend(pg_url), open_backend(pg_url)]
    hosts[0].write_batch([])
    start, errors = threading.Barrier(2), []

    def batch(host: int, day: int) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for k in range(per_day):
            ts = day0 + day * 86400 + 60 + k
            trace = f"{host:08x}{day:08x}{k:016x}"
            common = {"ts": ts, "trace_id": trace}
            out += [
                {**common, "kind": "hop", "event_id": f"h{host}-{day}-{k}", "hop": "celery"},
                {**common, "kind": "request", "event_id": f"r{host}-{day}-{k}"},
                {
                    **provider_call(**common, owner_team=None, attribution="quarantined"),
                    "event_id": f"c{host}-{day}-{k}",
                },
            ]
        return out

    def host(n: int) -> None:
        start.wait()
        for day in range(n, days + n):  # host 1 a day ahead
            try:
                hosts[n].write_batch(batch(n, day))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}".splitlines()[0])

    threads = [threading.Thread(target=host, args=(n,)) for n in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = len(hosts[0].event_ids())
    (steps,) = hosts[0].fetch("SELECT count(*) FROM loss_steps")[0]
    for store in hosts:
        store.close()
    assert errors == []
    assert stored == 2 * 3 * days * per_day
    assert steps == 2 * 2 * days * per_day  # every hop and request: each trace lost its owner
