"""Stores with known content (see `scenario`), on SQLite and on PostgreSQL.

Each backend's stores are built once per session. PostgreSQL gets a database of its own for the
session (one schema per store), dropped at the end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from ownership_ctx.reports import Source, open_source
from tests.reports import odd, scenario

SESSION = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def pg_database(postgres_url: str) -> Iterator[str]:
    """A fresh database for this session (dropped at the end), as a server URL."""
    import psycopg

    name = f"oc_reports_{SESSION}"
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    parts = urlsplit(postgres_url)
    yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))
    with psycopg.connect(postgres_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _url(request: pytest.FixtureRequest, backend: str, name: str) -> str:
    if backend == "sqlite":
        base: Path = request.getfixturevalue("tmp_path_factory").mktemp(f"reports-{name}")
        return f"sqlite:///{base / 'events.db'}"
    server = request.getfixturevalue("pg_database")
    return f"{server}?schema={name}"


@pytest.fixture(scope="session")
def main_url(request: pytest.FixtureRequest, backend: str) -> str:
    url = _url(request, backend, "main")
    scenario.write(url, scenario.baseline_week, scenario.current_week)
    return url


@pytest.fixture(scope="session")
def clean_url(request: pytest.FixtureRequest, backend: str) -> str:
    url = _url(request, backend, "clean")
    scenario.write(url, scenario.baseline_week)
    return url


@pytest.fixture(scope="session")
def odd_url(request: pytest.FixtureRequest, backend: str) -> str:
    url = _url(request, backend, "odd")
    odd.write(url)
    return url


@pytest.fixture
def main(main_url: str) -> Iterator[Source]:
    with open_source(main_url) as source:
        yield source


@pytest.fixture
def clean(clean_url: str) -> Iterator[Source]:
    with open_source(clean_url) as source:
        yield source
