"""One default store for the library and the command, bare paths as SQLite, and no spool
directory left behind by a sink that never needed one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ownership_ctx import cli, events
from ownership_ctx.sinks import Pipeline
from ownership_ctx.sinks.config import DEFAULT_URL, ENV_VAR, install, open_sink, resolve_url
from ownership_ctx.store import SQLiteStore
from tests.store.helpers import request_event

ROOT = Path(__file__).resolve().parents[2]


def test_resolve_url() -> None:
    assert DEFAULT_URL == "sqlite:///ownership.db" == cli.DEFAULT_DB
    assert resolve_url(None, {}) == DEFAULT_URL
    assert resolve_url("", {ENV_VAR: "  "}) == DEFAULT_URL
    assert resolve_url(None, {ENV_VAR: "postgresql://h/db"}) == "postgresql://h/db"
    assert resolve_url("memory://", {ENV_VAR: "postgresql://h/db"}) == "memory://"
    assert resolve_url("events.db", {}) == "sqlite:///events.db"
    assert resolve_url("/var/lib/app/events.db", {}) == "sqlite:////var/lib/app/events.db"
    assert resolve_url("data/x.db", {}) == "sqlite:///data/x.db"
    assert resolve_url("POSTGRES://u@h/db", {}) == "POSTGRES://u@h/db"
    assert resolve_url("mysql://h/db", {}) == "mysql://h/db"  # open_backend names the scheme


def test_install_writes_where_the_command_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    previous = events.get_sink()
    sink = install()
    try:
        assert isinstance(sink, Pipeline)
        events.emit(request_event())
        assert sink.flush(10)
    finally:
        sink.close()
        events.set_sink(previous)
    assert len(SQLiteStore(tmp_path / "ownership.db").event_ids()) == 1
    # The command, run with no --db and no environment, reads that same file.
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    result = subprocess.run(
        [sys.executable, "-m", "ownership_ctx.cli", "chargeback", "--since", "2000-01-01"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 request(s)" in result.stdout


def test_a_bare_path_is_a_sqlite_file(tmp_path: Path) -> None:
    sink = open_sink(str(tmp_path / "bare.db"))
    assert isinstance(sink, Pipeline)
    sink.emit(request_event())
    assert sink.close(10)
    assert len(SQLiteStore(tmp_path / "bare.db").event_ids()) == 1


def test_no_spool_directory_unless_something_is_spooled(tmp_path: Path) -> None:
    sink = open_sink(f"sqlite:///{tmp_path / 'events.db'}")
    sink.emit(request_event())
    assert isinstance(sink, Pipeline) and sink.close(10)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == []


def test_the_spool_directory_appears_when_the_store_fails(tmp_path: Path) -> None:
    class Down:
        def write_batch(self, batch: object) -> None:
            raise OSError("down")

    spool = tmp_path / "nested" / "spool"
    sink = Pipeline(Down(), spool_dir=spool, retry_initial=60, retry_max=60)
    sink.emit(request_event())
    sink.close(1)
    assert [p.suffix for p in spool.iterdir()] == [".jsonl"]
