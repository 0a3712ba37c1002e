"""Fixtures for the Celery tests: real workers (see `tests.celery.support`), started once per
session."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.celery.support import CONFIGS, RECORDS_KEY, REDIS_DB, SESSION, Farm, Worker, _answers
from tests.support import proof


@pytest.fixture(scope="session")
def farm() -> Iterator[Farm]:
    workdir = Path(tempfile.mkdtemp(prefix=f"oc-celery-{SESSION}-"))
    f = Farm(workdir)
    try:
        yield f
    finally:
        f.close()
        if _answers(REDIS_DB):
            redis.Redis.from_url(REDIS_DB).delete(RECORDS_KEY)


@pytest.fixture
def worker_for(request: pytest.FixtureRequest, farm: Farm) -> Any:
    """``worker_for(name)``: the running worker of that config (skips / fails like the
    shared broker fixtures when its broker is not reachable)."""

    def get(name: str) -> Worker:
        config = CONFIGS[name]
        request.getfixturevalue("redis_url")
        if config.broker == "rabbitmq":
            request.getfixturevalue("rabbitmq_url")
        return farm.get(name)

    return get


def pytest_terminal_summary(terminalreporter: Any) -> None:
    proof.summary(terminalreporter)  # what the property tests checked (printed once)
