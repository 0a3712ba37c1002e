"""``ownership-ctx prune --before DATE``: removes the events before a day from the store that is
there (PostgreSQL: drops whole day partitions), keeps the rollups, and never creates or
touches a store it did not find."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ownership_ctx.sinks import open_store
from ownership_ctx.store import PostgresStore, SQLiteStore
from tests.reports.cli_process import run_cli

DAY0 = 1_767_571_200  # 2026-01-05T00:00:00Z


def _events() -> list[dict[str, Any]]:
    """Three days: on each, two provider calls (at 01:00 and 23:00) and a hop."""
    out: list[dict[str, Any]] = []
    for day in range(3):
        for n, hour in enumerate((1, 23)):
            out.append(
                {
                    "kind": "provider_call",
                    "event_id": f"pc-{day}-{n}",
                    "ts": DAY0 + day * 86400 + hour * 3600,
                    "trace_id": f"{day:016x}{n:016x}",
                    "owner_team": "search" if n == 0 else None,
                    "attribution": "attributed" if n == 0 else "quarantined",
                    "gen_ai.usage.input_tokens": 10,
                    "cost": "0.25",
                }
            )
        out.append(
            {
                "kind": "hop",
                "event_id": f"hop-{day}",
                "ts": DAY0 + day * 86400 + 7200,
                "trace_id": f"{day:016x}{1:016x}",
                "hop": "celery",
                "unit": "tasks.t",
            }
        )
    return out


def _totals(url: str) -> tuple[int, Decimal]:
    store = open_store(url)
    (row,) = store.rollups(DAY0, DAY0 + 3 * 86400)
    store.close()
    return row.calls, row.cost


def _loss_steps(store: Any) -> list[str]:
    return [str(e) for (e,) in store.fetch("SELECT event_id FROM loss_steps ORDER BY 1")]


def _check_pruned(url: str) -> None:
    store = open_store(url)
    store.write_batch(_events())  # type: ignore[attr-defined]
    assert _loss_steps(store) == ["hop-0", "hop-1", "hop-2"]  # each of a quarantined trace
    store.close()
    assert _totals(url) == (6, Decimal("1.50"))
    done = run_cli("prune", "--before", "2026-01-07", "--db", url)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.startswith("removed 6 event(s) before 2026-01-07")
    store = open_store(url)
    kept = sorted(store.event_ids())
    assert kept == ["hop-2", "pc-2-0", "pc-2-1"]
    # Rollups stay: totals over the pruned days still answer.
    assert _totals(url) == (6, Decimal("1.50"))
    start, end = DAY0, DAY0 + 3 * 86400
    assert [r.trace_id for r in store.unattributed_calls(start, end, ("owner_team",))] == [
        f"{2:016x}{1:016x}"
    ]
    assert _loss_steps(store) == ["hop-2"]  # what the hop breakdown reads goes with them
    store.close()
    again = run_cli("prune", "--before", "2026-01-07", "--db", url)
    assert (again.returncode, again.stdout.split(" before")[0]) == (0, "removed 0 event(s)")


def test_sqlite_prune_deletes_the_rows_before_the_day(tmp_path: Path) -> None:
    _check_pruned(f"sqlite:///{tmp_path / 'events.db'}")


def test_postgres_prune_drops_whole_day_partitions(pg_url: str) -> None:
    _check_pruned(pg_url)
    store = open_store(pg_url)
    assert isinstance(store, PostgresStore)
    names = {
        str(name)
        for (name,) in store.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass('provider_calls')"
        )
    }
    store.close()
    day = DAY0 // 86400
    assert names == {f"provider_calls_d{day + 2}"}


@pytest.mark.parametrize("before", ["yesterday", "2026-13-01", "2026-01-07T10:00", ""])
def test_a_bad_date_is_one_line_and_exit_2(tmp_path: Path, before: str) -> None:
    path = tmp_path / "events.db"
    SQLiteStore(path).write_batch(_events())
    done = run_cli("prune", "--before", before, "--db", f"sqlite:///{path}")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "YYYY-MM-DD" in done.stderr
    assert len(SQLiteStore(path).event_ids()) == 9


def test_a_missing_store_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    done = run_cli("prune", "--before", "2026-01-07", "--db", f"sqlite:///{path}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no event store" in done.stderr
    assert not path.exists()


def test_a_file_that_is_not_a_store_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (text TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    done = run_cli("prune", "--before", "2026-01-07", "--db", str(path))
    assert done.returncode == 2 and "not an ownership_ctx event store" in done.stderr
    assert done.stderr.count("\n") == 1
    assert path.read_bytes() == before


def test_a_missing_postgres_schema_is_not_created(pg_url: str) -> None:
    done = run_cli("prune", "--before", "2026-01-07", "--db", pg_url)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no ownership_ctx table" in done.stderr
    schema = pg_url.rpartition("schema=")[2]
    import psycopg

    server = pg_url.rpartition("?")[0]
    with psycopg.connect(server, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    assert found == (0,)
