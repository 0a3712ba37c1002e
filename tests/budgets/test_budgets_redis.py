"""Budgets on real Redis: shared by several processes, bounded overshoot, keys that expire,
fail open (or closed) with Redis stopped, counters rebuilt from the store after a restart."""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from ownership_ctx import bind, events, metering
from ownership_ctx.budgets import BudgetExceeded, Budgets, MemoryCounters, period_bounds
from ownership_ctx.budgets.rebuild import StoreSpend
from ownership_ctx.budgets.redis_counters import RedisCounters
from ownership_ctx.sinks import MemorySink, open_store
from tests.budgets.spenders import spend_until_refused
from tests.budgets.support import LIMIT, envelope, team_budget
from tests.support.faults import RedisServer, require_binary


def test_processes_sharing_redis_overshoot_by_at_most_the_largest_reservation(
    redis_url: str, prefix: str
) -> None:
    processes, threads = 4, 3
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        results = pool.starmap(
            spend_until_refused,
            [(redis_url, prefix, seed, threads) for seed in range(processes)],
        )
    largest = max(Decimal(r) for r in results)
    budgets = Budgets([team_budget()], RedisCounters(redis_url, prefix=prefix))
    spent, reserved = budgets.usage(budgets.budgets[0])
    assert reserved == 0  # every reservation settled
    assert LIMIT <= spent <= LIMIT + largest, (spent, largest)
    # ... and every process is refused now.
    with pytest.raises(BudgetExceeded):
        budgets.reserve(envelope(), Decimal("0.001"))


def test_counters_expire_a_day_after_their_period(redis_url: str, prefix: str) -> None:
    counters = RedisCounters(redis_url, prefix=prefix)
    budgets = Budgets([team_budget()], counters)
    held = budgets.reserve(envelope(), Decimal("0.1"))
    assert held is not None
    client = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in client.scan_iter(match=prefix + "support-daily:*")}
    assert keys == {
        prefix + "support-daily:" + time.strftime("%Y-%m-%d", time.gmtime()) + ":",
        prefix + "support-daily:" + time.strftime("%Y-%m-%d", time.gmtime()) + "::leases",
    }
    _, period_end = period_bounds("day", time.time())
    for key in keys:
        assert abs(client.ttl(key) - (period_end + 86400 - time.time())) < 5


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    require_binary("redis-server")
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_with_redis_stopped_the_host_keeps_serving(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    counters = RedisCounters(private_redis.url, prefix="oc-test:", timeout=0.5)
    budgets = Budgets([team_budget()], counters, refresh=0.001)
    owner = envelope()
    held = budgets.reserve(owner, Decimal("0.2"))
    assert held is not None and held.amount > 0
    held.close()
    private_redis.stop()
    before = events.stats["budget_backend_errors"]
    with caplog.at_level(logging.ERROR, "ownership_ctx.budgets"):
        for _ in range(5):
            budgets.refresh_now()
            assert budgets.check(owner, "edge") is None
            held = budgets.reserve(owner, Decimal(5))  # over the limit: not checkable, served
            assert held is not None and held.amount == 0
            held.charge(Decimal(5))
            held.close()
    assert events.stats["budget_backend_errors"] - before >= 10
    logged = [r for r in caplog.records if "budget counters unavailable" in r.getMessage()]
    assert len(logged) == 1 and "failing open" in logged[0].getMessage()
    private_redis.start()
    with caplog.at_level(logging.WARNING, "ownership_ctx.budgets"):
        budgets.refresh_now()
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    assert budgets.reserve(owner, Decimal("0.1")).amount > 0  # type: ignore[union-attr]


def test_failing_closed_with_redis_stopped_refuses_budgeted_work(
    private_redis: RedisServer,
) -> None:
    counters = RedisCounters(private_redis.url, prefix="oc-test:", timeout=0.5)
    budgets = Budgets([team_budget()], counters, fail="closed", refresh=0.001)
    private_redis.stop()
    budgets.refresh_now()
    refusal = budgets.check(envelope(), "edge")
    assert refusal is not None and refusal.reason == "unavailable"
    with pytest.raises(BudgetExceeded):
        budgets.reserve(envelope(), Decimal("0.01"))
    assert budgets.check(envelope(owner_team="search"), "edge") is None


def _store_with_spend(path: Path, amount: Decimal) -> StoreSpend:
    """A SQLite event store holding provider calls of team support worth ``amount``."""
    sink = MemorySink()
    previous = events.set_sink(sink)
    try:
        with bind(envelope()):
            metering.record_call(provider="openai", model="gpt-4o", usage=None, cost=amount)
    finally:
        events.set_sink(previous)
    store = open_store(f"sqlite:///{path}")
    store.write_batch(sink.events)
    return StoreSpend(store)


def test_a_restarted_process_rebuilds_in_process_counters_from_the_store(
    tmp_path: Path,
) -> None:
    source = _store_with_spend(tmp_path / "ownership.db", Decimal("1.50"))
    try:
        restarted = Budgets([team_budget()], MemoryCounters(), source=source, refresh=0.001)
        restarted.refresh_now()
        assert restarted.usage(restarted.budgets[0]) == (Decimal("1.5"), Decimal(0))
        assert restarted.check(envelope(), "edge") is not None
        with pytest.raises(BudgetExceeded):
            restarted.reserve(envelope(), Decimal("0.01"))
    finally:
        source.close()


def test_counters_lost_with_a_restarted_redis_are_rebuilt_from_the_store(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    source = _store_with_spend(tmp_path / "ownership.db", Decimal("0.70"))
    try:
        counters = RedisCounters(private_redis.url, prefix="oc-test:", timeout=2)
        budgets = Budgets([team_budget()], counters, source=source, refresh=0.001)
        budgets.refresh_now()
        assert budgets.usage(budgets.budgets[0]) == (Decimal("0.7"), Decimal(0))
        # Redis comes back empty (no persistence): what it held is gone.
        private_redis.stop()
        shutil.rmtree(private_redis.dir / "appendonlydir", ignore_errors=True)
        private_redis.start()
        assert budgets.usage(budgets.budgets[0]) == (Decimal(0), Decimal(0))
        held = budgets.reserve(envelope(), Decimal("0.1"))  # recreates the counter at 0
        assert held is not None
        held.charge(Decimal("0.05"))
        held.close()
        budgets.refresh_now()  # a new epoch: raised to what the store holds
        assert budgets.usage(budgets.budgets[0]) == (Decimal("0.7"), Decimal(0))
    finally:
        source.close()


def test_redis_releases_the_reservation_of_a_dead_process(redis_url: str, prefix: str) -> None:
    counters = RedisCounters(redis_url, prefix=prefix)
    dead = Budgets([team_budget()], counters, reservation_ttl=0.2)
    crashed = dead.reserve(envelope(), Decimal("1.00"))  # never settled
    assert crashed is not None
    alive = Budgets([team_budget()], RedisCounters(redis_url, prefix=prefix))
    with pytest.raises(BudgetExceeded):
        alive.reserve(envelope(), Decimal("0.10"))
    time.sleep(0.3)
    held = alive.reserve(envelope(), Decimal("0.10"))
    assert held is not None
    assert alive.usage(alive.budgets[0]) == (Decimal(0), Decimal("0.1"))
    crashed.charge(Decimal("0.30"))  # slow, not dead: its spend counts, its hold is gone
    crashed.close()
    held.close()
    assert alive.usage(alive.budgets[0]) == (Decimal("0.3"), Decimal(0))


def test_a_store_that_does_not_exist_yet_is_read_once_it_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "ownership.db"
    source = StoreSpend.open(f"sqlite:///{path}")
    budgets = Budgets([team_budget()], MemoryCounters(), source=source, refresh=0.001)
    with caplog.at_level(logging.WARNING, "ownership_ctx.budgets"):
        budgets.refresh_now()  # no store yet: logged, served, tried again later
        budgets.refresh_now()
    assert len([r for r in caplog.records if "rebuilding" in r.getMessage()]) == 1
    assert budgets.check(envelope(), "edge") is None
    _store_with_spend(path, Decimal("1.50")).close()
    budgets.refresh_now()
    assert budgets.usage(budgets.budgets[0]) == (Decimal("1.5"), Decimal(0))
    source.close()
