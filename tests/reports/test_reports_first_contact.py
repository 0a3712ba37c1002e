"""What a newcomer meets first: reports that never write, errors as one line with exit 2,
identifiers never cut when piped, trace prefixes, clear anomaly wording, an empty store."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from ownership_ctx import __version__
from ownership_ctx.store import SQLiteStore
from tests.integrations.support import free_port
from tests.reports import scenario
from tests.reports.cli_process import run_cli
from tests.reports.scenario import epoch, trace_id

ROOT = Path(__file__).resolve().parents[2]
RANGE = ["--since", "2026-01-01", "--until", "2026-02-01"]
W02 = ["--baseline", "2026-W02", "--current", "2026-W03"]


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"COLUMNS": "40", **(env or {})}, cwd=cwd)  # a narrow terminal


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The error of a failed command: exit 2, no traceback, one line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# -- small stores written event by event --------------------------------------------------------


def call(
    ts: float,
    team: str | None,
    *,
    trace: str | None = None,
    tokens: int | None = 1000,
    cost: str | None = "0.002",
    status: str = "ok",
    tenant: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": "provider_call",
        "event_id": uuid.uuid4().hex,
        "ts": ts,
        "trace_id": trace or uuid.uuid4().hex,
        "owner_team": team,
        "workflow_id": "wf" if team else None,
        "feature": "feat" if team else None,
        "tenant": tenant,
        "attribution": "attributed" if team else "unattributed",
        "status": status,
        "attempt": 1,
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o-mini-2024-07-18-very-long-model-name",
        "gen_ai.usage.input_tokens": tokens,
        "gen_ai.usage.output_tokens": 0 if tokens is not None else None,
        "cost": cost,
        "cost_source": "price_table" if cost is not None else "unpriced",
        "unpriced_reason": reason,
    }


def request(ts: float, team: str, trace: str | None = None) -> dict[str, Any]:
    return {
        "kind": "request",
        "event_id": uuid.uuid4().hex,
        "ts": ts,
        "trace_id": trace or uuid.uuid4().hex,
        "owner_team": team,
        "workflow_id": "wf",
        "feature": "feat",
        "attribution": "attributed",
        "route": "/x",
        "method": "POST",
        "status": 200,
        "outcome": "attributed",
    }


def store(path: Path, events: list[dict[str, Any]]) -> str:
    writer = SQLiteStore(path)
    writer.write_batch(events)
    writer.close()
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Two traces sharing an 8-character prefix; a team whose baseline week has calls but no
    request events and no tokens, and whose current week has both; calls without a cost."""
    week2, week3 = epoch("2026-01-06T10:00:00"), epoch("2026-01-13T10:00:00")
    tenant = "h1:" + "ab" * 32
    events = [
        call(week2, "ml", trace="aaaaaaaa" + "1" * 24, tokens=None, cost="0.5"),
        call(week2 + 1, "ml", trace="aaaaaaaa" + "2" * 24, tokens=None, cost="0.5"),
        request(week3, "ml", trace="bbbbbbbb" + "3" * 24),
        call(week3 + 1, "ml", trace="bbbbbbbb" + "3" * 24, tenant=tenant),
        call(week3 + 2, "ml", cost=None, reason="no price library"),
        call(week3 + 3, "ml", cost=None, tokens=None, status="error", reason="failed attempt"),
    ]
    return store(tmp_path_factory.mktemp("small") / "events.db", events)


# -- reading never writes -----------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def report_commands(url: str, tmp: Path) -> list[list[str]]:
    return [
        ["chargeback", "--db", url, *RANGE, "--by", "team,model"],
        ["chargeback", "--db", url, *RANGE, "--export", "focus", "-o", str(tmp / "focus.csv")],
        ["coverage", "--db", url, *RANGE, "--max-unattributed", "2%"],
        ["audit", "--db", url, *RANGE],
        ["trace", "--db", url, trace_id("search-w03-0")],
        ["anomaly", "--db", url, "--team", "search", *W02],
        ["report", "--db", url, *RANGE, "--html", str(tmp / "r.html")],
    ]


def test_reports_leave_a_sqlite_store_byte_for_byte_unchanged(tmp_path: Path) -> None:
    # PostgreSQL's side: test_every_report_runs_as_a_read_only_role.
    source = tmp_path / "written" / "events.db"
    source.parent.mkdir()
    scenario.write(f"sqlite:///{source}", scenario.baseline_week, scenario.current_week)
    copy = tmp_path / "store"
    copy.mkdir()
    (copy / "events.db").write_bytes(source.read_bytes())  # no -wal: a checkpointed store
    before = snapshot(copy)
    out = tmp_path / "out"
    out.mkdir()
    for command in report_commands(f"sqlite:///{copy / 'events.db'}", out):
        result = run(*command)
        assert result.returncode in (0, 1), (command, result.stderr)
    after = snapshot(copy)
    assert after["events.db"] == before["events.db"]  # not a byte changed
    # Not even SQLite's -wal / -shm files for reading a WAL database: they are removed when
    # the report's connection closes. No spool directory, no other file.
    assert set(after) == {"events.db"}
    assert [p.name for p in copy.iterdir() if p.is_dir()] == []


READER_SCHEMA = "readable"


@pytest.fixture
def reader_role(pg_database: str) -> Iterator[str]:
    """A login role that may only SELECT from a report store's schema, as a URL."""
    import psycopg

    scenario.write(
        f"{pg_database}?schema={READER_SCHEMA}", scenario.baseline_week, scenario.current_week
    )
    role = f"oc_reader_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {READER_SCHEMA} TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {READER_SCHEMA} TO {role}")
    parts = urlsplit(pg_database)
    netloc = f"{role}@{parts.hostname}:{parts.port or 5432}"
    yield urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA {READER_SCHEMA} FROM {role}")
        conn.execute(f"REVOKE ALL ON SCHEMA {READER_SCHEMA} FROM {role}")
        conn.execute(f"DROP ROLE {role}")
        conn.execute(f"DROP SCHEMA {READER_SCHEMA} CASCADE")


def test_every_report_runs_as_a_read_only_role(
    reader_role: str, pg_database: str, tmp_path: Path
) -> None:
    import psycopg

    url = f"{reader_role}?schema={READER_SCHEMA}"
    for command in report_commands(url, tmp_path):
        result = run(*command)
        assert result.returncode in (0, 1), (command, result.stderr)
        assert "permission denied" not in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "r.html").read_text().startswith("<!DOCTYPE html>")
    # A mistyped schema is an error, and nothing is created, even by a role that could.
    typo = one_line_error(run("chargeback", "--db", f"{pg_database}?schema=mian", *RANGE))
    assert "no ownership_ctx table" in typo and "mian" in typo
    with psycopg.connect(pg_database, autocommit=True, connect_timeout=5) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'mian'").fetchall()
    assert found == []


# -- errors: one line, exit 2 -------------------------------------------------------------------


def shim(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which importing ``module`` fails as if it were not installed."""
    package = tmp_path / "shims" / module
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f'raise ModuleNotFoundError("No module named {module}", name="{module}")\n'
    )
    return {"PYTHONPATH": f"{tmp_path / 'shims'}{os.pathsep}{ROOT}"}


def test_bad_invocations_are_one_line_with_exit_2(small: str, tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("hello\n" * 100)
    other_sqlite = tmp_path / "other.db"
    with sqlite3.connect(other_sqlite) as conn:
        conn.execute("CREATE TABLE t (x)")
    full = tmp_path / "full"
    full.mkdir()
    (full / "thesis.tex").write_text("years of work")
    corpus: list[tuple[list[str], dict[str, str] | None, str]] = [
        (["report", "--db", small, "--html", "/nonexistent/dir/r.html"], None, "/nonexistent/dir"),
        (["report", "--db", small, "--html", str(tmp_path)], None, "is a directory"),
        (["chargeback", "--db", small, "-o", "/nonexistent/x.csv"], None, "does not exist"),
        (["chargeback", "--db", str(tmp_path / "none.db")], None, "no event store"),
        (["chargeback", "--db", str(not_a_db)], None, "not a database"),
        (["chargeback", "--db", str(other_sqlite)], None, "not an ownership_ctx event store"),
        (["chargeback", "--db", "mysql://x/y"], None, "mysql"),
        (["chargeback", "--db", "memory://"], None, "memory"),
        (["chargeback", "--db", "postgresql://127.0.0.1:1/none"], None, "cannot read the store"),
        (
            ["chargeback", "--db", "postgresql://127.0.0.1/none"],
            shim(tmp_path / "pg", "psycopg"),
            'pip install "ownership-ctx[postgres]"',
        ),
        (["demo", "--dir", str(full)], None, "not empty"),
        (["demo", "--dir", str(tmp_path / "d")], shim(tmp_path / "dq", "dramatiq"), "[dramatiq"),
        (["trace", "--db", small, "f" * 32], None, "no trace ffff"),
        (["trace", "--db", small, "cccccccc"], None, "no trace starting with cccccccc"),
        (["trace", "--db", small, "abc"], None, "prefix of 8 or more"),
        (["trace", "--db", small, "zz" * 16], None, "32 hex"),
        (["anomaly", "--db", small, "--team", "nobody", *W02], None, "teams with events then: ml"),
        (["chargeback", "--db", small, "--since", "someday"], None, "someday"),
        (["audit", "--db", small, "--sample", "0"], None, "--sample"),
        # Commands with periods of their own refuse a range rather than ignore it.
        (["trace", "--db", small, "--since", "7d", "f" * 32], None, "unrecognized arguments"),
        (["--since", "7d", "trace", "--db", small, "f" * 32], None, "shown whole"),
        (["--since", "7d", "anomaly", "--db", small, "--team", "ml"], None, "--baseline"),
        (["budgets", "--db", small, "--until", "7d"], None, "unrecognized arguments: --until"),
    ]
    for args, env, expected in corpus:
        line = one_line_error(run(*args, env=env, cwd=tmp_path))
        assert line.startswith(("ownership-ctx ", "ownership-ctx: error: ")), line
        assert expected in line, (args, line)
    assert (full / "thesis.tex").read_text() == "years of work"
    assert not (tmp_path / "none.db").exists()
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_an_ambiguous_prefix_lists_the_matches(small: str) -> None:
    result = run("trace", "--db", small, "AAAAAAAA")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "ambiguous" in result.stderr
    assert "aaaaaaaa" + "1" * 24 in result.stderr and "aaaaaaaa" + "2" * 24 in result.stderr


def test_a_unique_prefix_finds_the_trace(small: str) -> None:
    result = run("trace", "--db", small, "bbbbbbbb", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["trace_id"] == "bbbbbbbb" + "3" * 24


# -- output -------------------------------------------------------------------------------------


def test_identifiers_are_never_cut_when_piped(small: str) -> None:
    # COLUMNS=40 would cut every name on a terminal; stdout here is a pipe.
    result = run("chargeback", "--db", small, *RANGE, "--by", "tenant,model")
    assert result.returncode == 0, result.stderr
    assert "h1:" + "ab" * 32 in result.stdout
    assert "gpt-4o-mini-2024-07-18-very-long-model-name" in result.stdout
    assert "…" not in result.stdout


def test_unpriced_calls_are_counted_by_reason(small: str, tmp_path: Path) -> None:
    result = run("chargeback", "--db", small, *RANGE, "--format", "json")
    data = json.loads(result.stdout)
    # The failed attempt is free: its own column, not among the calls without a price.
    assert data["unpriced_reasons"] == {"no price library": 1}
    assert data["total"]["failed_attempts"] == 1
    table = run("chargeback", "--db", small, *RANGE).stdout
    assert "1 failed attempt" in table and "1 no price library" in table
    assert 'pip install "ownership-ctx[prices]"' in table
    page = tmp_path / "r.html"
    assert run("report", "--db", small, *RANGE, "--html", str(page)).returncode == 0
    assert "1 no price library" in page.read_text()
    coverage = run("coverage", "--db", small, *RANGE).stdout
    assert "1 failed attempt" in coverage


def test_anomaly_names_what_each_period_lacks(small: str) -> None:
    result = run("anomaly", "--db", small, "--team", "ml", *W02)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "None" not in out
    volume = next(line for line in out.splitlines() if line.startswith("volume"))
    # Baseline: 2 calls and no request events; current: 2 calls (its failed attempt is free,
    # no call), and it has request events.
    assert "2 calls (no request events)" in volume and "2 calls  " in volume + "  "
    assert volume.count("no request events") == 1
    price = next(line for line in out.splitlines() if line.startswith("price"))
    assert "- (no tokens)" in price
    assert "the baseline period has no request events" in out


def test_an_empty_store_says_how_to_get_events_in(tmp_path: Path) -> None:
    url = store(tmp_path / "empty.db", [])
    result = run("chargeback", "--db", url)
    assert result.returncode == 0, result.stderr
    assert "holds no events yet" in result.stderr and "sinks.install()" in result.stderr


def test_a_range_without_events_says_where_they_are(small: str) -> None:
    result = run("chargeback", "--db", small, "--since", "2025-01-01", "--until", "2025-02-01")
    assert result.returncode == 0
    assert "the store holds events from 2026-01-06T10:00:00Z" in result.stderr


def test_version_and_options_on_either_side(small: str) -> None:
    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"ownership-ctx {__version__}"
    after = run("chargeback", "--db", small, "--format", "json", *RANGE)
    before = run("--db", small, "--format", "json", *RANGE, "chargeback")
    assert after.returncode == before.returncode == 0
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_bare_path_and_environment_and_default(small: str, tmp_path: Path) -> None:
    path = small.removeprefix("sqlite:///")
    by_path = run("chargeback", "--db", path, *RANGE, "--format", "json")
    by_env = run("chargeback", *RANGE, "--format", "json", env={"OWNERSHIP_CTX_SINK_URL": path})
    assert json.loads(by_path.stdout) == json.loads(by_env.stdout)
    # The default is ./ownership.db, the file `sinks.install()` writes by default.
    (tmp_path / "ownership.db").write_bytes(Path(path).read_bytes())
    default = run("chargeback", *RANGE, "--format", "json", cwd=tmp_path)
    assert json.loads(default.stdout) == json.loads(by_path.stdout)


def test_progress_only_on_a_terminal(main_url: str, tmp_path: Path) -> None:
    result = run("audit", "--db", main_url, *RANGE)
    assert result.stderr == ""  # piped: results only, no progress lines


def test_fake_provider_command(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ownership_ctx.cli", "fake-provider", "--port", str(port)]
    out = tmp_path / "fake.out"
    with open(out, "w") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        while f"OPENAI_BASE_URL=http://127.0.0.1:{port}/v1" not in out.read_text():
            assert process.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        ).json()
        assert reply["usage"]["prompt_tokens"] > 0
        # The port is taken now: a second one says so in one line.
        line = one_line_error(run("fake-provider", "--port", str(port)))
        assert f"cannot listen on 127.0.0.1:{port}" in line
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # stopped listening
