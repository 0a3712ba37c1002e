"""Fixtures for the event store tests: a fresh SQLite path, a fresh PostgreSQL schema."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ownership_ctx import events

SESSION = uuid.uuid4().hex[:8]
_schemas = iter(range(1, 1_000_000))


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'events.db'}"


@pytest.fixture(scope="session")
def pg_server(postgres_url: str) -> Iterator[str]:
    """The server URL; at the end of the session, drops every schema this session made."""
    yield postgres_url
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (f"oc_store_{SESSION}_%",)
        ).fetchall()
        for (name,) in rows:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A sink URL for a schema of its own (created by the store on first connect)."""
    schema = f"oc_store_{SESSION}_{next(_schemas)}"
    separator = "&" if "?" in pg_server else "?"
    yield f"{pg_server}{separator}schema={schema}"
    import psycopg

    try:
        with psycopg.connect(pg_server, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    except psycopg.Error:
        pass  # the session finalizer tries again


@pytest.fixture(autouse=True)
def _restore_sink() -> Iterator[None]:
    previous = events.get_sink()
    yield
    events.set_sink(previous)
