"""Shared fixtures: real services when they answer, a clear skip (or, in CI, a failure) when not.

On a laptop without brokers the broker-backed tests skip and name the variable that turns
the skip into a failure; `.ci/run` sets it, so CI can never go green by skipping them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.sinks import ListSink, collecting_events

REQUIRE_ENV = "OWNERSHIP_CTX_REQUIRE_BROKERS"
REDIS_URL = os.environ.get("OWNERSHIP_CTX_REDIS_URL", "redis://127.0.0.1:6379")
RABBITMQ_URL = os.environ.get("OWNERSHIP_CTX_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_URL = os.environ.get(
    "OWNERSHIP_CTX_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0), 1.0):
            return True
    except OSError:
        return False


def _service(name: str, url: str) -> str:
    if _answers(url):
        return url
    reason = f"{name} is not reachable at {url}; set {REQUIRE_ENV}=1 to make this a failure"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{name} is required ({REQUIRE_ENV}=1) but not reachable at {url}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """Base URL of a real Redis server (no database number: pick your own)."""
    return _service("Redis", REDIS_URL)


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    return _service("RabbitMQ", RABBITMQ_URL)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _service("PostgreSQL", POSTGRES_URL)


@pytest.fixture
def event_sink() -> Iterator[ListSink]:
    """Collect the events ownership_ctx emits during one test."""
    with collecting_events() as sink:
        yield sink


@pytest.fixture(params=[False, True], ids=["no-sink", "sink"])
def maybe_sink(request: pytest.FixtureRequest) -> ListSink | None:
    """Run the test without and with an event sink: the edge middleware takes its recording
    path only when a sink is set, so both paths are tested."""
    return request.getfixturevalue("event_sink") if request.param else None


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hash or signing keys from the environment: `Keys.from_env()` gives empty keys."""
    monkeypatch.delenv("OWNERSHIP_CTX_HASH_KEY", raising=False)
    monkeypatch.delenv("OWNERSHIP_CTX_SIGNING_KEYS", raising=False)
