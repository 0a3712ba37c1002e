"""Sink URLs, the environment variable, install(), and the OpenTelemetry export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ownership_ctx import events
from ownership_ctx.sinks.config import ENV_VAR, from_env, install, open_backend, open_sink
from ownership_ctx.sinks.memory import MemorySink
from ownership_ctx.sinks.pipeline import Pipeline
from ownership_ctx.store import PostgresStore, SQLiteStore
from tests.store.helpers import provider_call, request_event


def test_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_backend("sqlite:///rel/events.db?busy_timeout=2")
    assert isinstance(relative, SQLiteStore)
    assert relative.path == "rel/events.db" and relative.busy_timeout == 2.0
    absolute = open_backend(f"sqlite:///{tmp_path}/abs.db")  # "sqlite:////tmp/..."
    assert absolute.path == f"{tmp_path}/abs.db"
    sink = open_sink(f"sqlite:///{tmp_path}/abs.db?queue=50&batch=10&interval=0.5")
    assert isinstance(sink, Pipeline)
    assert (sink.queue_size, sink.batch_size, sink.flush_interval) == (50, 10, 0.5)
    assert sink.spool_dir == f"{tmp_path}/abs.db.spool"
    assert open_sink(f"sqlite:///{tmp_path}/x.db?spool=off").spool_dir is None  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        open_backend("sqlite:///x.db?busy_timeout=soon")
    with pytest.raises(ValueError):
        open_backend("mysql://localhost/db")


def test_postgres_url_keeps_libpq_parameters(tmp_path: Path) -> None:
    store = open_backend(
        "postgres://u:secret@db.example:5433/app?schema=costs&sslmode=require&queue=9"
    )
    assert isinstance(store, PostgresStore)
    assert store.schema == "costs"
    assert store.conninfo == "postgresql://u:secret@db.example:5433/app?sslmode=require"
    with pytest.raises(ValueError):
        open_backend("postgresql://h/db?schema=a;drop")
    sink = open_sink("postgresql://u:secret@db.example/app", spool_dir=tmp_path)
    assert isinstance(sink, Pipeline) and sink.spool_dir == str(tmp_path)
    sink.close(0)


def test_memory_and_jsonl(tmp_path: Path) -> None:
    memory = open_sink("memory://?maxlen=5")
    assert isinstance(memory, MemorySink)
    jsonl = open_sink(f"jsonl:///{tmp_path}/events.jsonl")
    assert isinstance(jsonl, Pipeline)
    event = provider_call()
    jsonl.emit(event)
    assert jsonl.close(5)
    assert json.loads((tmp_path / "events.jsonl").read_text()) == event


def test_from_env_and_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env({}) is None
    assert isinstance(from_env({ENV_VAR: "memory://"}), MemorySink)
    monkeypatch.setenv(ENV_VAR, f"sqlite:///{tmp_path}/env.db")
    first = install()
    assert isinstance(first, Pipeline) and events.get_sink() is first
    events.emit(request_event())
    second = install(f"sqlite:///{tmp_path}/code.db")
    assert events.get_sink() is second
    # The replaced pipeline was flushed and closed: its event is stored.
    assert len(SQLiteStore(tmp_path / "env.db").event_ids()) == 1
    assert isinstance(second, Pipeline)
    second.close()


def test_otel_export_writes_provider_calls_as_log_records() -> None:
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    from ownership_ctx.sinks.otel_export import EVENT_NAME, OtelLogExporter

    provider = LoggerProvider()
    exporter = InMemoryLogRecordExporter()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    pipeline = Pipeline(OtelLogExporter(provider))
    call = provider_call(**{"extra.region": "eu"})
    pipeline.emit(call)
    pipeline.emit(request_event())  # not exported: provider calls only
    assert pipeline.close(5)
    (record,) = [r.log_record for r in exporter.get_finished_logs()]
    attributes = dict(record.attributes or {})
    assert record.event_name == EVENT_NAME
    assert record.trace_id == int(call["trace_id"], 16)
    assert attributes["gen_ai.response.model"] == "gpt-4o-2024-08-06"
    assert attributes["gen_ai.usage.input_tokens"] == 1200
    assert attributes["ownership.owner_team"] == "search"
    assert attributes["ownership.extra.region"] == "eu"
    assert attributes["ownership.cost"] == "0.0042500"
    assert attributes["ownership.cost_usd"] == pytest.approx(0.00425)
    assert "ownership.kind" not in attributes and "ownership.error.type" not in attributes
