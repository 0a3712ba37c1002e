"""Fixtures for the budget tests: a unique Redis key prefix per test, budgets uninstalled after.

Other helpers run their tests against the same Redis at the same time: every key a test here
writes starts with its own prefix, and is deleted afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ownership_ctx import budgets


@pytest.fixture(autouse=True)
def no_budgets_installed() -> Iterator[None]:
    """Every test starts and ends with budgets off in this process."""
    budgets.uninstall()
    try:
        yield
    finally:
        budgets.uninstall()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own (keys removed at the end)."""
    import redis

    name = f"oc-test-budgets:{uuid.uuid4().hex[:12]}:"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=name + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()
